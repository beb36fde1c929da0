//! End to end through the `swarm` binary, as a user runs it: train a micro world, evolve a
//! swarm on it, serve the swarm and talk to it over HTTP, export an elite and chat with the
//! export; and bad input at each command, which must end in a message that names the
//! problem, never a panic.
//!
//! The micro world (`swarm bootstrap --preset micro`) trains in about a second, so its
//! scores mean nothing: what is checked is that each command does its part and that the
//! parts fit together (the files one writes are what the next reads).
//!
//! Wired into the `swarm` crate as its `end_to_end` test (`crates/swarm/Cargo.toml`), so that
//! Cargo builds the binary first and names it in `CARGO_BIN_EXE_swarm`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Variables that say where things are (caches, data, tools): the binary under test keeps
/// them. Every other `SWARM_*` variable is a setting that could change what a test sees.
const LOCATIONS: [&str; 5] = [
    "SWARM_CACHE_DIR",
    "SWARM_DATA_DIR",
    "SWARM_SMOLLM2_GGUF",
    "SWARM_PYTHON",
    "SWARM_BWRAP",
];

/// The binary under test, with a plain log (no colours) and no inherited settings.
fn swarm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_swarm"));
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("SWARM_") && !LOCATIONS.contains(&name.as_ref()) {
            command.env_remove(&key);
        }
    }
    command.env("SWARM_LOG", "info").stdin(Stdio::null());
    command
}

/// Runs `swarm args...` to the end.
fn run(args: &[&str]) -> Result<Output, Box<dyn std::error::Error>> {
    Ok(swarm().args(args).output()?)
}

/// Runs a command that must succeed, and returns its standard output.
fn run_ok(args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let output = run(args)?;
    if !output.status.success() {
        return Err(format!(
            "swarm {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn path_str(path: &Path) -> Result<&str, Box<dyn std::error::Error>> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()).into())
}

/// `swarm bootstrap --preset micro` into `dir/world` (about a second); returns that dir.
fn micro_world(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let world = dir.join("world");
    run_ok(&[
        "bootstrap",
        "--preset",
        "micro",
        "--out",
        path_str(&world)?,
        "--no-eval",
        "--quiet",
    ])?;
    Ok(world)
}

/// [`micro_world`], and a run config of three CycleQD generations on it (`dir/micro.toml`)
/// whose swarm goes to `dir/agent`. Returns the config.
fn micro_world_and_config(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let world = micro_world(dir)?;
    let config = dir.join("micro.toml");
    let experts: String = ["coding", "database", "os"]
        .iter()
        .map(|skill| {
            format!(
                "[[experts]]\nmodel = {:?}\nskill = \"{skill}\"\n",
                world.join(skill)
            )
        })
        .collect();
    let skills: String = ["coding", "database", "os"]
        .iter()
        .map(|skill| {
            format!(
                "[[skills]]\nname = \"{skill}\"\nsuite = \"synthetic\"\nepisodes = 2\n\
                 test_episodes = 2\nbins = 4\n"
            )
        })
        .collect();
    std::fs::write(
        &config,
        format!(
            "name = \"micro\"\nseed = 0\nrun_dir = {:?}\noutput = {:?}\n\n[base]\nmodel = {:?}\n\n\
             {experts}\n{skills}\n[qd]\ngenerations = 3\n\n[model]\nrank = 4\n\
             max_new_tokens = 8\n\n[baselines]\nenabled = false\n",
            dir.join("run"),
            dir.join("agent"),
            world.join("base"),
        ),
    )?;
    Ok(config)
}

/// Checks what `swarm evolve` leaves behind in `dir` (see [`micro_world_and_config`]) and
/// returns the swarm directory.
fn assert_evolved(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let agent = dir.join("agent");
    for file in ["swarm.json", "genomes.safetensors", "factors.safetensors"] {
        assert!(agent.join(file).is_file(), "evolve wrote no {file}");
    }
    assert!(
        dir.join("run/report/report.md").is_file(),
        "evolve wrote no report"
    );
    Ok(agent)
}

/// The elite ids of a swarm directory, as its `swarm.json` lists them.
fn elite_ids(agent: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(agent.join("swarm.json"))?)?;
    let ids: Vec<String> = manifest["elites"]
        .as_array()
        .ok_or("swarm.json has no elites")?
        .iter()
        .filter_map(|elite| elite["id"].as_str().map(str::to_string))
        .collect();
    assert!(!ids.is_empty(), "the swarm has no elites: {manifest}");
    Ok(ids)
}

/// A running `swarm serve`, stopped with SIGTERM when dropped if the test has not.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `swarm <command>` (`serve` or `up`) on a free port and waits until `/ready`
    /// answers 200.
    fn start(command: &str, args: &[&str]) -> Result<Server, Box<dyn std::error::Error>> {
        let mut child = swarm()
            .arg(command)
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            let line = log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| "the server printed no address in 120 s")?;
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("addr="))
            {
                break addr.parse::<SocketAddr>()?;
            }
        };
        let server = Server { child, addr, log };
        while server.get("/ready")?.status != 200 {
            if Instant::now() > deadline {
                return Err("the server was not ready in 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    fn get(&self, path: &str) -> Result<Response, Box<dyn std::error::Error>> {
        http(self.addr, "GET", path, None)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Response, Box<dyn std::error::Error>> {
        http(self.addr, "POST", path, Some(body))
    }

    /// SIGTERM, then the exit status: a drained server exits on its own.
    fn terminate(mut self) -> Result<std::process::ExitStatus, Box<dyn std::error::Error>> {
        self.signal_term()?;
        self.wait_for_exit()
    }

    fn signal_term(&self) -> TestResult {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        Ok(())
    }

    /// Waits (60 s at most) for the server to exit, and returns how.
    fn wait_for_exit(&mut self) -> Result<std::process::ExitStatus, Box<dyn std::error::Error>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err("the server did not exit within 60 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log lines printed so far and not read yet.
    fn log_so_far(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// The log lines not read yet, to the end: call once the server has exited (the reader
    /// sees the end of the pipe then).
    fn log_to_end(&self) -> Vec<String> {
        self.log.iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Result<Value, Box<dyn std::error::Error>> {
        Ok(serde_json::from_str(&self.body)?)
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), read to the end. The
/// answers here are small JSON bodies, never chunked, so no HTTP library is needed.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Response, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.map(serde_json::to_string).transpose()?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = &body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.as_deref().unwrap_or(""));
    stream.write_all(request.as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {raw:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .ok_or_else(|| format!("no status line in {head:?}"))?
        .parse()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

#[test]
fn a_micro_world_is_evolved_served_and_exported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = micro_world_and_config(dir.path())?;
    let printed = run_ok(&["evolve", "--config", path_str(&config)?, "--quiet"])?;
    assert!(
        printed.contains("3 generations done"),
        "evolve's summary: {printed}"
    );
    let agent = assert_evolved(dir.path())?;
    let elites = elite_ids(&agent)?;

    let server = Server::start(
        "serve",
        &["--swarm", path_str(&agent)?, "--max-tokens-limit", "64"],
    )?;

    // The router, one entry per skill and every elite of swarm.json.
    let models = server.get("/v1/models")?;
    assert_eq!(models.status, 200, "{}", models.body);
    let listed: Vec<String> = models.json()?["data"]
        .as_array()
        .ok_or("/v1/models has no data")?
        .iter()
        .filter_map(|model| model["id"].as_str().map(str::to_string))
        .collect();
    for id in ["swarm", "swarm/coding", "swarm/database", "swarm/os"]
        .into_iter()
        .chain(elites.iter().map(String::as_str))
    {
        assert!(listed.iter().any(|l| l == id), "{id} not in {listed:?}");
    }

    // A routed chat: the answer names its elite, in the body and in x-swarm-elite.
    let chat = server.post(
        "/v1/chat/completions",
        &serde_json::json!({
            "model": "swarm/coding",
            "messages": [{"role": "user", "content": "def add(a, b):"}],
            "max_tokens": 6,
            "temperature": 0,
        }),
    )?;
    assert_eq!(chat.status, 200, "{}", chat.body);
    let answer = chat.json()?;
    let served = answer["model"].as_str().ok_or("no model in the answer")?;
    assert!(
        elites.iter().any(|e| e == served),
        "{served} is not an elite of the swarm"
    );
    assert_eq!(chat.header("x-swarm-elite"), Some(served));
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    let completion_tokens = answer["usage"]["completion_tokens"]
        .as_u64()
        .ok_or("no usage")?;
    assert!((1..=6).contains(&completion_tokens), "{answer}");

    // Beyond the configured limit: OpenAI's error envelope naming the field.
    let refused = server.post(
        "/v1/completions",
        &serde_json::json!({"model": "swarm", "prompt": "x", "max_tokens": 65}),
    )?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()?["error"]["param"], "max_tokens");

    // SIGTERM drains and exits cleanly.
    let log_before_stop = server.log_so_far();
    let status = server.terminate()?;
    assert!(
        status.success(),
        "swarm serve exited with {status} after SIGTERM; log: {log_before_stop:#?}"
    );

    // The best coder as a standalone HF dir, and `swarm generate` answering from it.
    let export = dir.path().join("export");
    run_ok(&[
        "export",
        "--swarm",
        path_str(&agent)?,
        "--elite",
        "swarm/coding",
        "--out",
        path_str(&export)?,
    ])?;
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(export.join(file).is_file(), "the export has no {file}");
    }
    let generated = run(&[
        "generate",
        "--model",
        path_str(&export)?,
        "--prompt",
        "SELECT",
        "--max-tokens",
        "4",
    ])?;
    assert!(
        generated.status.success(),
        "generate from the export: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    // A second export to the same place is refused, and the first is left as it was.
    let before = std::fs::read(export.join("model.safetensors"))?;
    let again = run(&[
        "export",
        "--swarm",
        path_str(&agent)?,
        "--out",
        path_str(&export)?,
    ])?;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read(export.join("model.safetensors"))?, before);
    Ok(())
}

#[test]
fn up_evolves_the_config_then_serves_its_swarm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = micro_world_and_config(dir.path())?;
    let server = Server::start("up", &["--config", path_str(&config)?, "--quiet"])?;
    let agent = assert_evolved(dir.path())?;
    let chat = server.post(
        "/v1/chat/completions",
        &serde_json::json!({
            "messages": [{"role": "user", "content": "ls -la"}],
            "max_tokens": 4,
        }),
    )?;
    assert_eq!(chat.status, 200, "{}", chat.body);
    let served = chat.header("x-swarm-elite").ok_or("no x-swarm-elite")?;
    assert!(
        elite_ids(&agent)?.iter().any(|e| e == served),
        "{served} is not an elite of {}",
        agent.display()
    );
    let status = server.terminate()?;
    assert!(
        status.success(),
        "swarm up exited with {status} after SIGTERM"
    );

    // Once the swarm is there, `up` serves it as it is: nothing is evolved again.
    let genomes = std::fs::read(agent.join("genomes.safetensors"))?;
    let again = run(&[
        "up",
        "--config",
        path_str(&config)?,
        "--no-serve",
        "--quiet",
    ])?;
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{said}");
    assert!(said.contains("[2/3] swarm: found"), "{said}");
    assert!(said.contains("not the toy world's"), "{said}");
    assert_eq!(std::fs::read(agent.join("genomes.safetensors"))?, genomes);
    Ok(())
}

#[test]
fn a_merge_is_scored_by_eval() -> TestResult {
    let dir = tempfile::tempdir()?;
    let world = micro_world(dir.path())?;
    let merge = dir.path().join("ties.yaml");
    std::fs::write(
        &merge,
        format!(
            "merge_method: ties\nbase_model: {base:?}\nmodels:\n\
             \x20 - model: {coding:?}\n    parameters: {{weight: 1.0, density: 0.5}}\n\
             \x20 - model: {os:?}\n    parameters: {{weight: 1.0, density: 0.5}}\n\
             parameters: {{normalize: true}}\ndtype: float32\n",
            base = world.join("base"),
            coding = world.join("coding"),
            os = world.join("os"),
        ),
    )?;
    let merged = dir.path().join("merged");
    let printed = run_ok(&["merge", path_str(&merge)?, "--out", path_str(&merged)?])?;
    assert!(printed.contains("(ties)"), "merge's summary: {printed}");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(merged.join(file).is_file(), "the merge has no {file}");
    }

    // The suites it can be scored on.
    let suites = run_ok(&["eval", "--list"])?;
    for skill in ["coding", "database", "os"] {
        assert!(
            suites
                .lines()
                .any(|l| l.starts_with(skill) && l.contains("synthetic")),
            "{suites}"
        );
    }
    // The merged model, scored by running what it writes in the sandbox.
    let episodes = dir.path().join("episodes.jsonl");
    run_ok(&[
        "eval",
        "--model",
        path_str(&merged)?,
        "--skill",
        "os",
        "--limit",
        "3",
        "--max-tokens",
        "16",
        "--out",
        path_str(&episodes)?,
    ])?;
    let rows: Vec<Value> = std::fs::read_to_string(&episodes)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        assert_eq!(row["skill"], "os");
        assert!(
            row["passed"].is_boolean() && row["score"].is_number(),
            "{row}"
        );
        assert!(row["reason"].is_string(), "{row}");
    }
    Ok(())
}

/// Reads one chunk of an HTTP/1.1 chunked body; `None` at its end.
fn read_chunk(reader: &mut impl BufRead) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let mut size_line = String::new();
    reader.read_line(&mut size_line)?;
    let size = usize::from_str_radix(size_line.trim(), 16)
        .map_err(|e| format!("chunk size {size_line:?}: {e}"))?;
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok((size > 0).then(|| String::from_utf8_lossy(&chunk).into_owned()))
}

#[test]
fn sigterm_lets_a_running_stream_finish_and_refuses_new_work() -> TestResult {
    // SmolLM2 (what CI's setup caches) is slow enough on the CPU that an answer of 48 tokens
    // is still being written when the signal comes.
    let server = Server::start("serve", &["--model", "smollm2"])?;
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "Count from 1 to 100."}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
        // Never end early: SmolLM2's <|endoftext|> (0) and <|im_end|> (2) are banned.
        "logit_bias": {"0": -100, "2": -100},
    })
    .to_string();
    let mut stream = TcpStream::connect(server.addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        if reader.read_line(&mut head)? == 0 {
            return Err(format!("the connection closed in the headers: {head:?}").into());
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );

    // The first token has come: now the signal.
    let mut events = String::new();
    while !events.contains("\"content\"") {
        events.push_str(&read_chunk(&mut reader)?.ok_or("the stream ended before a token")?);
    }
    server.signal_term()?;

    // New work is refused while the stream runs on: the listener is closed (connection
    // refused), or a connection that got in is answered 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match server.get("/ready") {
            Err(_) => break,
            Ok(response) if response.status == 503 => break,
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(response) => {
                return Err(format!("/ready still {} after SIGTERM", response.status).into())
            }
        }
    }

    // The running stream is not cut: every token, the usage chunk and [DONE].
    while let Some(chunk) = read_chunk(&mut reader)? {
        events.push_str(&chunk);
    }
    let data: Vec<&str> = events
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{events}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d))
        .collect::<Result<_, _>>()?;
    let usage = chunks
        .iter()
        .find_map(|c| c.get("usage").filter(|u| !u.is_null()))
        .ok_or("no usage chunk")?;
    assert_eq!(usage["completion_tokens"], 48, "{events}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "length"),
        "{events}"
    );

    let mut server = server;
    let status = server.wait_for_exit()?;
    assert!(status.success(), "swarm serve exited with {status}");
    // The signal came while the answer was being written, and the drain waited for it.
    let log = server.log_to_end();
    let at = |text: &str| log.iter().position(|line| line.contains(text));
    let (draining, finished, bye) = (
        at("draining running requests"),
        at("stream finished"),
        at("drained; bye"),
    );
    assert!(
        draining.is_some() && draining < finished && finished < bye,
        "{log:#?}"
    );
    Ok(())
}

#[test]
fn bench_prints_a_row_per_batch_size() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = micro_world(dir.path())?.join("base");
    let printed = run_ok(&[
        "bench",
        "--model",
        path_str(&base)?,
        "--batch",
        "1,2",
        "--prompt-tokens",
        "16",
        "--decode-tokens",
        "8",
    ])?;
    for batch in ["1", "2"] {
        let row = printed
            .lines()
            .find(|l| l.starts_with(&format!("| {batch} |")))
            .ok_or_else(|| format!("no row for batch {batch} in {printed}"))?;
        // prefill tok/s, decode tok/s: positive numbers.
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for cell in &cells[2..4] {
            let rate: f64 = cell.parse()?;
            assert!(rate > 0.0, "{row}");
        }
    }
    Ok(())
}

#[test]
fn chat_forgets_the_oldest_turns_when_the_context_is_full() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = micro_world(dir.path())?.join("base");
    // The micro model has 256 positions: three messages of 60 words overflow it, and one
    // of 300 words cannot fit at all.
    let message = "select ".repeat(60);
    let input = format!(
        "{message}\n{message}\n{message}\n{}\nbye\n",
        "ls ".repeat(300)
    );
    let mut child = swarm()
        .args(["chat", "--model", path_str(&base)?, "--max-tokens", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin pipe")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("the conversation outgrew the model's 256 positions: forgot its"),
        "{said}"
    );
    assert!(said.contains("that message alone does not fit"), "{said}");
    // Four answers (one line each, perhaps empty): three messages and "bye".
    let answers = String::from_utf8_lossy(&output.stdout).lines().count();
    assert!(answers >= 4, "{answers} answers");
    Ok(())
}

/// Asserts that `swarm args...` failed with `code` and a message containing each of `needles`,
/// without a panic.
fn assert_refused(args: &[&str], code: i32, needles: &[&str]) -> TestResult {
    let output = run(args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "swarm {} panicked: {stderr}",
        args.join(" ")
    );
    assert_eq!(
        output.status.code(),
        Some(code),
        "swarm {}: {stderr}",
        args.join(" ")
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "swarm {}: {needle:?} not in {stderr:?}",
            args.join(" ")
        );
    }
    Ok(())
}

#[test]
fn bad_input_is_refused_with_a_message_that_names_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let world = micro_world(dir.path())?;
    let base = world.join("base");

    // A model dir that is not there.
    let missing = dir.path().join("no-such-model");
    assert_refused(
        &["generate", "--model", path_str(&missing)?, "--prompt", "hi"],
        1,
        &["no-such-model"],
    )?;

    // A truncated safetensors file, in a copy of a good model dir.
    let truncated = dir.path().join("truncated");
    std::fs::create_dir(&truncated)?;
    for entry in std::fs::read_dir(&base)? {
        let entry = entry?;
        std::fs::copy(entry.path(), truncated.join(entry.file_name()))?;
    }
    let weights = std::fs::read(base.join("model.safetensors"))?;
    std::fs::write(
        truncated.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )?;
    assert_refused(
        &[
            "generate",
            "--model",
            path_str(&truncated)?,
            "--prompt",
            "hi",
        ],
        1,
        &["model.safetensors"],
    )?;

    // A prompt file that is not UTF-8.
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(&prompt, b"caf\xe9\n")?;
    assert_refused(
        &[
            "generate",
            "--model",
            path_str(&base)?,
            "--prompt-file",
            path_str(&prompt)?,
        ],
        1,
        &["prompt.txt", "UTF-8"],
    )?;

    // A run config with a field the schema does not have.
    let config = dir.path().join("typo.toml");
    std::fs::write(
        &config,
        "name = \"typo\"\n[base]\nmodel = \"toy:base\"\n[qd]\ngenerationz = 3\n",
    )?;
    assert_refused(
        &["evolve", "--config", path_str(&config)?, "--dry-run"],
        1,
        &["typo.toml", "generationz"],
    )?;

    // A mergekit config with a field we do not support.
    let merge = dir.path().join("merge.yaml");
    std::fs::write(
        &merge,
        format!(
            "merge_method: linear\nmodels:\n  - model: {}\n    parameters:\n      weight: 1.0\n\
             tokenizer_source: union\n",
            path_str(&base)?
        ),
    )?;
    let out = dir.path().join("merged");
    assert_refused(
        &["merge", path_str(&merge)?, "--out", path_str(&out)?],
        1,
        &["tokenizer_source"],
    )?;
    assert!(!out.exists(), "a refused merge left {}", out.display());

    // A directory without a swarm in it.
    assert_refused(
        &["serve", "--swarm", path_str(&world)?, "--port", "0"],
        1,
        &["swarm.json"],
    )?;

    // A port another program holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port().to_string();
    assert_refused(
        &["serve", "--model", path_str(&base)?, "--port", &port],
        1,
        &["cannot listen on", &format!("127.0.0.1:{port}")],
    )?;
    drop(taken);

    // A policy that is not one, before anything is loaded.
    assert_refused(
        &["serve", "--elite-serving", "sometimes"],
        1,
        &["--elite-serving", "sometimes"],
    )?;
    // Flags clap judges: its usage error, exit 2.
    assert_refused(
        &["generate", "--prompt", "hi", "--max-tokens", "0"],
        2,
        &["--max-tokens"],
    )?;
    // A log filter that is not one: a usage error (exit 2), as clap's own.
    assert_refused(
        &["generate", "--log", "swarm=[", "--prompt", "hi"],
        2,
        &["--log"],
    )?;
    Ok(())
}
