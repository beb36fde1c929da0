//! AgentBench OS interaction (the `inspect-evals` wheel's `agent_bench_os.json` = dev, 26
//! tasks, and `agent_bench_os_test.json` = test, 119 tasks, with their check scripts).
//!
//! As in inspect-evals, `/root` and `/usr` in tasks become the agent's home `/home/agent`,
//! the only writable directory here. Multi-turn: the agent runs commands (`Act: bash`) and
//! ends with `Act: answer(...)` or `Act: finish`. Tasks that need a background process
//! started before the agent, or init scripts that no package or the shared data folder has,
//! are skipped with the reason.

use serde_json::Value;

use super::{DataDirs, LoadedSuite};
use crate::episode::{Episode, Task};
use crate::error::TaskError;
use crate::prompt::{fenced, os_agent_prompt};
use crate::skills::os::{CheckStep, OsCheck, OsTask, ScriptLang};
use crate::synthetic::Split;

/// Rounds an AgentBench episode may take.
pub const MAX_ROUNDS: u32 = 8;
/// The agent's home and working directory.
pub const HOME: &str = "/home/agent";
/// Words of tasks that need real user accounts or root (useradd, sudo...).
const NEEDS_ACCOUNTS: &[&str] = &[
    "useradd", "groupadd", "usermod", "adduser", "runuser", "sudo", "chpasswd", "passwd", "chgrp",
    "su",
];

/// Whether `word` appears as a command name (not inside a path or another word).
fn has_command(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + word.len()..].chars().next();
        !matches!(before, Some(c) if c.is_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
            && matches!(after, None | Some(' ' | '\t' | '\n' | ';'))
    })
}

/// Placeholder the gold agent replaces with the last observation.
pub const OBSERVATION: &str = "{{observation}}";

fn map_paths(s: &str) -> String {
    // Commands "exposed" on the PATH go to the home directory, which check scripts put
    // on their PATH.
    s.replace("/usr/local/bin/", &format!("{HOME}/"))
        .replace("/root", HOME)
        .replace("/usr", HOME)
}

fn code_of(v: &Value, dirs: &DataDirs) -> Result<Option<String>, String> {
    Ok(match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => {
            if let Some(Value::String(c)) = o.get("code") {
                Some(c.clone())
            } else if let Some(Value::String(f)) = o.get("file") {
                Some(script_file(dirs, f)?)
            } else {
                None
            }
        }
        _ => None,
    })
}

fn script_file(dirs: &DataDirs, rel: &str) -> Result<String, String> {
    if let Some(name) = rel.strip_prefix("init/") {
        // Init scripts are not in the wheel; the shared data folder has the two tasks use.
        let p = dirs
            .shared_file(&format!("agentbench_os/{name}"))
            .map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        // As inspect-evals does: fixed RANDOM seed, paths moved to the agent's home.
        return Ok(format!("RANDOM=3\n{}", map_paths(&text)));
    }
    let p = dirs
        .cache_file(&format!("agentbench/scripts/{rel}"))
        .map_err(|e| e.to_string())?;
    std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
}

fn convert(
    rec: &Value,
    dirs: &DataDirs,
    split: Split,
    idx: usize,
) -> Result<Episode, (String, String)> {
    let id = format!(
        "agentbench-{}/{}",
        split.name(),
        rec.get("id").map_or(idx.to_string(), |v| v
            .to_string()
            .trim_matches('"')
            .to_string())
    );
    let fail = |why: String| (id.clone(), why);
    if rec.get("start").is_some() {
        return Err(fail(
            "needs a background process started before the agent; processes do not persist \
             between commands in this sandbox"
                .into(),
        ));
    }
    let description = rec
        .get("description")
        .and_then(Value::as_str)
        .ok_or_else(|| fail("no description".into()))?;
    let mut setup: Vec<String> = Vec::new();
    if let Some(init) = rec.get("create").and_then(|c| c.get("init")) {
        let items: Vec<&Value> = match init {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        for item in items {
            match code_of(item, dirs).map_err(fail)? {
                Some(c) => setup.push(map_paths(&c)),
                None => return Err(fail(format!("unsupported init {item}"))),
            }
        }
    }
    // inspect-evals' image has a copy of `find` in the agent's home for the SUID tasks.
    if setup.iter().any(|c| c.contains("/home/agent/bin/find")) {
        setup.insert(
            0,
            "mkdir -p /home/agent/bin && cp /usr/bin/find /home/agent/bin/find".into(),
        );
    }
    let mut all_code = setup.join("\n");
    all_code.push_str(
        &rec.get("evaluation")
            .map(Value::to_string)
            .unwrap_or_default(),
    );
    if let Some(word) = NEEDS_ACCOUNTS.iter().find(|w| has_command(&all_code, w)) {
        return Err(fail(format!(
            "needs `{word}` (user accounts or root), which the sandbox does not have"
        )));
    }
    if all_code.contains("/var/") || description.contains("/var/") {
        return Err(fail(
            "reads the container's /var (logs, caches), which the sandbox does not have".into(),
        ));
    }
    let eval = rec
        .get("evaluation")
        .ok_or_else(|| fail("no evaluation".into()))?;
    let example = match eval.get("example") {
        Some(v) => code_of(v, dirs).map_err(fail)?.map(|c| map_paths(&c)),
        None => None,
    };
    let matched = eval.get("match").map(|m| match m {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let run_example = |code: &str| format!("Act: bash\n{}", fenced("bash", code));
    let (check, gold) = match eval.get("check") {
        Some(Value::Array(steps)) if steps.len() >= 2 => {
            let mut out = Vec::new();
            let mut gold = Vec::new();
            for s in steps {
                match s {
                    Value::Null => {
                        if let Some(m) = &matched {
                            out.push(CheckStep::Value { value: m.clone() });
                            gold = vec![format!("Act: answer({m})")];
                        } else if let Some(ex) = &example {
                            out.push(CheckStep::Example { code: ex.clone() });
                            gold = vec![run_example(ex), format!("Act: answer({OBSERVATION})")];
                        } else {
                            return Err(fail("check needs an example or a match".into()));
                        }
                    }
                    Value::Object(o) => {
                        let file = o
                            .get("file")
                            .and_then(Value::as_str)
                            .ok_or_else(|| fail(format!("unsupported check step {s}")))?;
                        let language = match o.get("language").and_then(Value::as_str) {
                            Some("python") => ScriptLang::Python,
                            _ => ScriptLang::Bash,
                        };
                        out.push(CheckStep::Script {
                            language,
                            code: script_file(dirs, file).map_err(fail)?,
                        });
                    }
                    other => return Err(fail(format!("unsupported check step {other}"))),
                }
            }
            (OsCheck::AnswerScripts { steps: out }, gold)
        }
        Some(Value::Array(steps)) if steps.len() == 1 => {
            let Some(code) = steps[0].as_str() else {
                return Err(fail(format!("unsupported check {}", steps[0])));
            };
            state_check(map_paths(code), &example, run_example)
        }
        Some(v @ Value::Object(_)) => {
            let code = code_of(v, dirs)
                .map_err(fail)?
                .ok_or_else(|| fail(format!("unsupported check {v}")))?;
            state_check(map_paths(&code), &example, run_example)
        }
        None | Some(Value::Null) => match &matched {
            Some(m) => {
                let mut gold = Vec::new();
                if let Some(ex) = &example {
                    gold.push(run_example(ex));
                }
                gold.push(format!("Act: answer({m})"));
                (
                    OsCheck::AnswerMatch {
                        expected: m.clone(),
                    },
                    gold,
                )
            }
            None => return Err(fail("no check and no match".into())),
        },
        Some(other) => return Err(fail(format!("unsupported check {other}"))),
    };
    let scripts_text = serde_json::to_string(&check).unwrap_or_default();
    // (Paths in scripts were moved to the home: /usr/include became /home/agent/include.)
    if scripts_text.contains("/usr/include") || scripts_text.contains("/home/agent/include") {
        return Err(fail(
            "its check walks the host's /usr/include in bash, which is far bigger here than in \
             the benchmark's container"
                .into(),
        ));
    }
    // The home directories, plus top-level directories the task's scripts create.
    let mut writable = vec!["/home".to_string()];
    let mut scripts = setup.join("\n");
    scripts.push_str(example.as_deref().unwrap_or(""));
    for root in super::nl2bash::writable_roots(&scripts) {
        if !writable.contains(&root) {
            writable.push(root);
        }
    }
    Ok(Episode {
        id,
        suite: "agentbench".into(),
        prompt: os_agent_prompt(&map_paths(description)),
        max_rounds: MAX_ROUNDS,
        gold,
        task: Task::Os(OsTask {
            writable,
            workdir: HOME.into(),
            files: Vec::new(),
            setup_script: (!setup.is_empty()).then(|| setup.join("\n")),
            check,
        }),
        family: None,
    })
}

fn state_check(
    script: String,
    example: &Option<String>,
    run_example: impl Fn(&str) -> String,
) -> (OsCheck, Vec<String>) {
    let gold = match example {
        Some(ex) => vec![run_example(ex), "Act: finish".into()],
        None => Vec::new(),
    };
    (OsCheck::StateScript { script }, gold)
}

/// Loads AgentBench OS: `Validation` is the dev set, `Test` the test set.
pub fn load(dirs: &DataDirs, split: Split) -> Result<LoadedSuite, TaskError> {
    let file = match split {
        Split::Validation => "agentbench/agent_bench_os.json",
        Split::Test => "agentbench/agent_bench_os_test.json",
        Split::Train => {
            return Err(TaskError::Unknown {
                kind: "split",
                name: "train".into(),
                known: "validation (AgentBench dev), test".into(),
            })
        }
    };
    let path = dirs.cache_file(file)?;
    let data = super::read_json(&path)?;
    let records = data
        .as_array()
        .ok_or_else(|| TaskError::data(&path, "expected a JSON array of tasks"))?;
    let mut out = LoadedSuite::default();
    for (i, rec) in records.iter().enumerate() {
        match convert(rec, dirs, split, i) {
            Ok(ep) => out.episodes.push(ep),
            Err((id, why)) => out.skipped.push((id, why)),
        }
    }
    Ok(out)
}
