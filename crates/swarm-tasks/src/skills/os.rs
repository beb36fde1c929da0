//! OS: shell commands run in a sandbox prepared per task (files, directories, a setup
//! script), checked by exact output, by comparison with a gold command run on a fresh copy of
//! the same environment (output and files), or by check scripts (AgentBench).
//!
//! The writable directories a task names (`/work`, `/testbed`, `/home/agent`, ...) are
//! directories of the episode's scratch bound at those paths; everything else is read-only.
//! Files persist across the rounds of a multi-turn episode; processes do not (each command
//! runs in its own PID namespace).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Checker, EpisodeEnv};
use crate::episode::{Outcome, Step};
use crate::error::TaskError;
use crate::prompt::{extract_code, parse_agent_action, AgentAction};
use crate::sandbox::{tail_chars, Mount, RunOutput, SandboxCommand, Scratch};

/// A file placed in the sandbox before the episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsFile {
    /// Absolute path inside the sandbox; must lie in one of the task's writable directories.
    pub path: String,
    /// Contents.
    pub contents: String,
    /// Mode 0755 instead of 0644.
    #[serde(default)]
    pub executable: bool,
}

/// Language of a check script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptLang {
    /// Run with bash.
    Bash,
    /// Run with python3.
    Python,
}

/// One step of an AgentBench check chain. Each step gets the agent's answer and the outputs
/// of the earlier steps as arguments; a non-zero exit fails the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStep {
    /// The task's example solution; its output becomes an argument of later steps.
    Example {
        /// Bash code.
        code: String,
    },
    /// A literal expected value (AgentBench `match` used inside a check chain).
    Value {
        /// The value.
        value: String,
    },
    /// A check script.
    Script {
        /// Its language.
        language: ScriptLang,
        /// Its source.
        code: String,
    },
}

/// How a shell task is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OsCheck {
    /// The answer (single-turn: the command's stdout) equals this, up to trailing whitespace.
    ExactOutput {
        /// Expected text.
        expected: String,
    },
    /// stdout and the files left behind equal those of one of these gold commands, each run
    /// in a fresh copy of the environment.
    GoldOutput {
        /// Gold commands.
        gold: Vec<String>,
    },
    /// The answer equals this string exactly (after trimming).
    AnswerMatch {
        /// Expected answer.
        expected: String,
    },
    /// AgentBench's check chain.
    AnswerScripts {
        /// The steps.
        steps: Vec<CheckStep>,
    },
    /// A bash script run after the agent finished; exit 0 passes.
    StateScript {
        /// The script.
        script: String,
    },
}

/// A shell task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsTask {
    /// Absolute directories inside the sandbox that are writable (backed by the scratch).
    pub writable: Vec<String>,
    /// Working directory of every command (and `HOME`).
    pub workdir: String,
    /// Files to create.
    #[serde(default)]
    pub files: Vec<OsFile>,
    /// Bash run before the episode, in the same sandbox.
    #[serde(default)]
    pub setup_script: Option<String>,
    /// How answers are judged.
    pub check: OsCheck,
}

/// Characters of command output shown to the agent per round.
const OBSERVATION_CHARS: usize = 800;
/// Where check scripts are mounted (read-only, invisible to the agent's own commands).
const CHECK_DIR: &str = "/.swarm-check";

fn host_dir_for(scratch: &Scratch, dest: &str) -> Result<PathBuf, TaskError> {
    let name: String = dest
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(scratch.subdir(&format!("rw/_{name}"))?)
}

/// A prepared environment: a scratch with the task's directories, files and setup applied.
struct Prepared {
    scratch: Scratch,
    mounts: Vec<Mount>,
    dirs: Vec<(String, PathBuf)>,
    /// The files right after setup (only for tasks judged by their files).
    baseline: Snapshot,
}

impl OsTask {
    fn prepare(&self, checker: &Checker, id: &str) -> Result<Prepared, TaskError> {
        let sandbox = checker.sandbox();
        let scratch = sandbox.scratch()?;
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        let mut wanted: Vec<String> = self.writable.clone();
        if !wanted.iter().any(|w| w == "/tmp") {
            wanted.push("/tmp".into());
        }
        for d in &wanted {
            if !d.starts_with('/') || d.contains("..") || d == "/" {
                return Err(TaskError::BrokenTask {
                    task: id.into(),
                    message: format!("writable directory {d:?} must be absolute, not `/`"),
                });
            }
            dirs.push((d.clone(), host_dir_for(&scratch, d)?));
        }
        // The working directory exists when it lies in a writable directory.
        if let Some((dest, host)) = dirs
            .iter()
            .filter(|(d, _)| Path::new(&self.workdir).starts_with(d))
            .max_by_key(|(d, _)| d.len())
        {
            if let Ok(rel) = Path::new(&self.workdir).strip_prefix(dest) {
                let p = host.join(rel);
                std::fs::create_dir_all(&p).map_err(TaskError::io(&p))?;
            }
        }
        let mounts = dirs
            .iter()
            .map(|(d, h)| Mount {
                host: h.clone(),
                dest: PathBuf::from(d),
                writable: true,
            })
            .collect();
        let mut prepared = Prepared {
            scratch,
            mounts,
            dirs,
            baseline: Snapshot::new(),
        };
        // The same setup gives the same files: run it once per checker, then copy.
        let key = self.setup_key();
        let template = checker
            .cache()
            .templates
            .lock()
            .ok()
            .and_then(|t| t.get(&key).cloned());
        match template {
            Some(t) => copy_tree(&t.path().join("rw"), &prepared.scratch.path().join("rw"))
                .map_err(TaskError::io(t.path()))?,
            None => {
                self.setup_from_scratch(checker, id, &prepared)?;
                let t = tempfile::Builder::new()
                    .prefix("swarm-template-")
                    .tempdir()
                    .map_err(TaskError::io("template directory"))?;
                if copy_tree(&prepared.scratch.path().join("rw"), &t.path().join("rw")).is_ok() {
                    if let Ok(mut map) = checker.cache().templates.lock() {
                        map.entry(key).or_insert_with(|| Arc::new(t));
                    }
                }
            }
        }
        if matches!(self.check, OsCheck::GoldOutput { .. }) {
            prepared.baseline = OsTask::snapshot(&prepared);
        }
        Ok(prepared)
    }

    fn setup_key(&self) -> String {
        let mut h = Sha256::new();
        for w in &self.writable {
            h.update(w.as_bytes());
            h.update([0]);
        }
        for f in &self.files {
            h.update(f.path.as_bytes());
            h.update([0]);
            h.update(f.contents.as_bytes());
            h.update([u8::from(f.executable)]);
        }
        h.update(self.setup_script.as_deref().unwrap_or("").as_bytes());
        hex::encode(h.finalize())
    }

    fn setup_from_scratch(
        &self,
        checker: &Checker,
        id: &str,
        env: &Prepared,
    ) -> Result<(), TaskError> {
        let scratch = &env.scratch;
        for f in &self.files {
            let Some((dest, host)) = env
                .dirs
                .iter()
                .filter(|(d, _)| Path::new(&f.path).starts_with(d))
                .max_by_key(|(d, _)| d.len())
            else {
                return Err(TaskError::BrokenTask {
                    task: id.into(),
                    message: format!("file {} is outside the writable directories", f.path),
                });
            };
            let rel = Path::new(&f.path)
                .strip_prefix(dest)
                .map_err(|_| TaskError::BrokenTask {
                    task: id.into(),
                    message: format!("bad file path {}", f.path),
                })?;
            let host_rel = host
                .strip_prefix(scratch.path())
                .map_err(|_| TaskError::BrokenTask {
                    task: id.into(),
                    message: "scratch layout".into(),
                })?
                .join(rel);
            let p = scratch.write_file(&host_rel.to_string_lossy(), f.contents.as_bytes())?;
            if f.executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .map_err(TaskError::io(&p))?;
            }
        }
        if let Some(script) = &self.setup_script {
            let out = self.run_in(checker, env, script, &[])?;
            if let Some(reason) = out.limit_reason(checker.sandbox().limits()) {
                return Err(TaskError::BrokenTask {
                    task: id.into(),
                    message: format!("setup script: {reason}"),
                });
            }
        }
        Ok(())
    }

    /// Output and file changes of gold command `i`, run once per checker (on demand: later
    /// alternatives only run when the earlier ones do not match).
    fn gold_run(
        &self,
        checker: &Checker,
        id: &str,
        gold: &str,
        i: usize,
    ) -> Result<Arc<GoldRun>, TaskError> {
        let key = format!("{i}:{}", serde_json::to_string(self).unwrap_or_default());
        if let Some(g) = checker
            .cache()
            .gold
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(g);
        }
        let fresh = self.prepare(checker, id)?;
        let out = self.run_in(checker, &fresh, gold, &[])?;
        let run = Arc::new(match out.limit_reason(checker.sandbox().limits()) {
            Some(reason) => Err(format!("gold command hit a limit: {reason}")),
            None => Ok((
                normalize_output(&out.stdout_text()),
                changes(&fresh.baseline, &OsTask::snapshot(&fresh)),
            )),
        });
        if let Ok(mut m) = checker.cache().gold.lock() {
            m.insert(key, run.clone());
        }
        Ok(run)
    }

    fn run_in(
        &self,
        checker: &Checker,
        env: &Prepared,
        script: &str,
        extra: &[Mount],
    ) -> Result<RunOutput, TaskError> {
        self.run_in_sandbox(checker.sandbox(), env, script, extra)
    }

    fn run_in_sandbox(
        &self,
        sandbox: &crate::sandbox::Sandbox,
        env: &Prepared,
        script: &str,
        extra: &[Mount],
    ) -> Result<RunOutput, TaskError> {
        let cmd = SandboxCommand {
            argv: vec!["/bin/bash".into(), "-c".into(), script.to_string()],
            stdin: Vec::new(),
            cwd: PathBuf::from(&self.workdir),
            env: vec![("HOME".into(), self.workdir.clone())],
            mounts: env.mounts.iter().chain(extra).cloned().collect(),
        };
        Ok(sandbox.run(&env.scratch, &cmd)?)
    }

    /// What the files under the writable directories (except `/tmp`) look like.
    fn snapshot(env: &Prepared) -> Snapshot {
        let mut snap = Snapshot::new();
        for (dest, host) in &env.dirs {
            if dest != "/tmp" {
                walk(&mut snap, host, Path::new(dest), Path::new(""));
            }
        }
        snap
    }

    fn run_check_steps(
        &self,
        checker: &Checker,
        env: &Prepared,
        answer: &str,
        steps: &[CheckStep],
    ) -> Result<Outcome, TaskError> {
        let check_dir = tempfile::tempdir().map_err(TaskError::io("check tempdir"))?;
        // Check scripts may walk big trees (AgentBench's count checks walk /usr/include in
        // bash): they get three times the agent's time.
        let base = checker.sandbox().limits();
        let check_sandbox = checker.sandbox().with_limits(crate::sandbox::Limits {
            wall: base.wall * 3,
            cpu_seconds: base.cpu_seconds * 3,
            ..base.clone()
        });
        let mut params: Vec<String> = vec![answer.to_string()];
        for (i, step) in steps.iter().enumerate() {
            let output = match step {
                CheckStep::Value { value } => value.clone(),
                CheckStep::Example { code } => {
                    let out = self.run_in(checker, env, code, &[])?;
                    if !out.success() {
                        return Err(TaskError::BrokenTask {
                            task: String::new(),
                            message: format!(
                                "example solution failed: {}",
                                out.describe_failure(checker.sandbox().limits())
                            ),
                        });
                    }
                    out.stdout_text()
                }
                CheckStep::Script { language, code } => {
                    let (file, interp) = match language {
                        ScriptLang::Bash => (format!("{i}.sh"), "bash"),
                        ScriptLang::Python => (format!("{i}.py"), "python3"),
                    };
                    let path = check_dir.path().join(&file);
                    std::fs::write(&path, code).map_err(TaskError::io(&path))?;
                    let quoted: Vec<String> = params.iter().map(|p| shell_quote(p)).collect();
                    // Commands the task asked to "expose" live in the home directory.
                    let script = format!(
                        "PATH=\"$HOME:$PATH\" {interp} {CHECK_DIR}/{file} {}",
                        quoted.join(" ")
                    );
                    let mount = Mount {
                        host: check_dir.path().to_path_buf(),
                        dest: PathBuf::from(CHECK_DIR),
                        writable: false,
                    };
                    let out = self.run_in_sandbox(&check_sandbox, env, &script, &[mount])?;
                    if !out.success() {
                        return Ok(Outcome::fail(format!(
                            "check step {} failed ({})",
                            i + 1,
                            out.describe_failure(checker.sandbox().limits())
                        )));
                    }
                    out.stdout_text()
                }
            };
            params.push(output);
        }
        Ok(Outcome::pass("all checks passed"))
    }
}

/// One file's signature: kind, executable bit, size, and a content digest (except for
/// compressed archives, whose bytes embed timestamps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileSig {
    kind: char,
    exec: bool,
    size: u64,
    digest: Option<String>,
}

type Snapshot = BTreeMap<String, FileSig>;

/// A gold command's normalised output and the file changes it made, or why it failed.
pub(crate) type GoldRun = Result<(String, Vec<(String, Option<FileSig>)>), String>;

/// Copies a directory tree, keeping modes, symlinks and modification times.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            continue;
        }
        if meta.is_dir() {
            copy_tree(&from, &to)?;
            std::fs::set_permissions(&to, meta.permissions())?;
        } else if meta.is_file() {
            std::fs::copy(&from, &to)?;
        } else {
            continue; // sockets and fifos are not part of a task's files
        }
        if let Ok(mtime) = meta.modified() {
            if let Ok(f) = std::fs::File::open(&to) {
                let _ = f.set_modified(mtime);
            }
        }
    }
    Ok(())
}

fn walk(snap: &mut Snapshot, root: &Path, dest: &Path, rel: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let r = rel.join(entry.file_name());
        let p = root.join(&r);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let key = dest.join(&r).to_string_lossy().into_owned();
        let sig = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p).map(|t| t.to_string_lossy().into_owned());
            FileSig {
                kind: 'L',
                exec: false,
                size: 0,
                digest: target.ok(),
            }
        } else if meta.is_dir() {
            walk(snap, root, dest, &r);
            FileSig {
                kind: 'D',
                exec: false,
                size: 0,
                digest: None,
            }
        } else {
            use std::os::unix::fs::PermissionsExt;
            let bytes = std::fs::read(&p).unwrap_or_default();
            let archive = bytes.starts_with(&[0x1f, 0x8b])
                || bytes.starts_with(b"PK\x03\x04")
                || bytes.starts_with(b"BZh")
                || bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z'])
                || bytes.get(257..262) == Some(b"ustar");
            FileSig {
                kind: 'F',
                exec: meta.permissions().mode() & 0o111 != 0,
                size: meta.len(),
                digest: (!archive).then(|| hex::encode(Sha256::digest(&bytes))),
            }
        };
        snap.insert(key, sig);
    }
}

/// What changed from `before` to `after`: (path, new signature or `None` if removed).
fn changes(before: &Snapshot, after: &Snapshot) -> Vec<(String, Option<FileSig>)> {
    let mut out: Vec<(String, Option<FileSig>)> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    out.extend(
        before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .map(|k| (k.clone(), None)),
    );
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Quotes a string for bash.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Normalises output for comparison: trailing whitespace of each line and surrounding blank
/// lines removed.
pub fn normalize_output(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim_end).collect();
    lines.join("\n").trim_matches('\n').to_string()
}

fn observation(out: &RunOutput, checker: &Checker) -> String {
    let mut text = out.stdout_text();
    text.push_str(&out.stderr_text());
    let mut obs = tail_chars(&text, OBSERVATION_CHARS);
    if text.chars().count() > OBSERVATION_CHARS {
        obs = format!("[truncated]\n{obs}");
    }
    if let Some(reason) = out.limit_reason(checker.sandbox().limits()) {
        obs.push_str(&format!("\n[{reason}]"));
    } else if let crate::sandbox::Termination::Exited(code) = out.termination {
        if code != 0 {
            obs.push_str(&format!("\n[exit code {code}]"));
        }
    }
    if obs.trim().is_empty() {
        "[no output]".into()
    } else {
        obs
    }
}

/// A shell episode (single- or multi-turn).
pub(crate) struct OsEnv<'a> {
    checker: &'a Checker,
    id: String,
    task: &'a OsTask,
    env: Prepared,
    single_turn: bool,
}

impl<'a> OsEnv<'a> {
    pub(crate) fn new(
        checker: &'a Checker,
        id: &str,
        task: &'a OsTask,
        max_rounds: u32,
    ) -> Result<Self, TaskError> {
        let env = task.prepare(checker, id)?;
        Ok(Self {
            checker,
            id: id.to_string(),
            task,
            env,
            single_turn: max_rounds <= 1,
        })
    }

    fn judge(&self, answer: &str) -> Result<Outcome, TaskError> {
        Ok(match &self.task.check {
            OsCheck::ExactOutput { expected } => {
                if normalize_output(answer) == normalize_output(expected) {
                    Outcome::pass("output matches")
                } else {
                    Outcome::fail(format!(
                        "expected output {:?}, got {:?}",
                        tail_chars(&normalize_output(expected), 120),
                        tail_chars(&normalize_output(answer), 120)
                    ))
                }
            }
            OsCheck::AnswerMatch { expected } => {
                if answer.trim() == expected.trim() {
                    Outcome::pass("answer matches")
                } else {
                    Outcome::fail(format!(
                        "expected answer {:?}, got {:?}",
                        expected.trim(),
                        tail_chars(answer.trim(), 120)
                    ))
                }
            }
            OsCheck::GoldOutput { gold } => {
                let got_state = changes(&self.env.baseline, &OsTask::snapshot(&self.env));
                let got = normalize_output(answer);
                let mut last_why = String::from("no gold command");
                for (i, g) in gold.iter().enumerate() {
                    let run = self.task.gold_run(self.checker, &self.id, g, i)?;
                    let (want, want_state) = match run.as_ref() {
                        Ok(r) => r,
                        Err(why) => {
                            last_why = why.clone();
                            continue;
                        }
                    };
                    if *want == got && *want_state == got_state {
                        return Ok(Outcome::pass("output and files match the gold command"));
                    }
                    last_why = if *want != got {
                        format!(
                            "output differs from the gold command's: expected {:?}, got {:?}",
                            tail_chars(want, 120),
                            tail_chars(&got, 120)
                        )
                    } else {
                        "files left behind differ from the gold command's".into()
                    };
                }
                Outcome::fail(last_why)
            }
            OsCheck::AnswerScripts { steps } => self
                .task
                .run_check_steps(self.checker, &self.env, answer, steps)
                .map_err(|e| match e {
                    TaskError::BrokenTask { message, .. } => TaskError::BrokenTask {
                        task: self.id.clone(),
                        message,
                    },
                    other => other,
                })?,
            OsCheck::StateScript { script } => {
                let steps = [CheckStep::Script {
                    language: ScriptLang::Bash,
                    code: script.clone(),
                }];
                self.task
                    .run_check_steps(self.checker, &self.env, answer, &steps)?
            }
        })
    }
}

impl EpisodeEnv for OsEnv<'_> {
    fn step(&mut self, action: &str, last_round: bool) -> Result<Step, TaskError> {
        let limits = self.checker.sandbox().limits().clone();
        if self.single_turn {
            let cmd = extract_code(action, &["bash", "sh", "shell", "console"]);
            if cmd.trim().is_empty() {
                return Ok(Step::Done(Outcome::fail("empty command")));
            }
            let out = self.task.run_in(self.checker, &self.env, &cmd, &[])?;
            if let Some(reason) = out.limit_reason(&limits) {
                return Ok(Step::Done(Outcome::fail(reason)));
            }
            return Ok(Step::Done(self.judge(&out.stdout_text())?));
        }
        match parse_agent_action(action) {
            AgentAction::Run(cmd) => {
                let out = self.task.run_in(self.checker, &self.env, &cmd, &[])?;
                if last_round {
                    return Ok(Step::Done(Outcome::fail(
                        "round limit reached without an answer",
                    )));
                }
                Ok(Step::Observe(observation(&out, self.checker)))
            }
            AgentAction::Answer(a) => Ok(Step::Done(self.judge(&a)?)),
            AgentAction::Finish => Ok(Step::Done(self.judge("")?)),
            AgentAction::Invalid(why) => {
                if last_round {
                    Ok(Step::Done(Outcome::fail(format!("invalid action: {why}"))))
                } else {
                    Ok(Step::Observe(format!(
                        "Invalid action ({why}). Use \"Act: bash\" with a ```bash block, \
                         \"Act: answer(...)\" or \"Act: finish\"."
                    )))
                }
            }
        }
    }
}
