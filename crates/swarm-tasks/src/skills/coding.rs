//! Coding: a Python 3 program is run in the sandbox against the task's tests.
//!
//! The harness loads the program, then runs each test (a snippet of Python, typically an
//! `assert`) in the program's namespace and reports how many passed, behind a per-run random
//! marker so that what the program prints cannot pose as the result. The score is the
//! fraction of tests passed; the task is solved when all pass.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Checker, EpisodeEnv};
use crate::episode::{Outcome, Step};
use crate::error::TaskError;
use crate::prompt::extract_code;
use crate::sandbox::SandboxCommand;

/// A Python task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodingTask {
    /// The function the tests call (HumanEval's `entry_point`), if one is named.
    #[serde(default)]
    pub entry_point: Option<String>,
    /// Code placed before the answer when the answer does not define `entry_point` itself
    /// (HumanEval's signature and docstring, for completion-style answers).
    #[serde(default)]
    pub stub: Option<String>,
    /// Code run before the tests (imports, MBPP's `test_setup_code`).
    #[serde(default)]
    pub setup: String,
    /// The tests; each is run on its own and counts once.
    pub tests: Vec<String>,
}

const HARNESS: &str = r#"
import json, os, sys
def _main():
    marker = sys.stdin.readline().strip()
    out = os.dup(1)
    def report(**kw):
        os.write(out, ("\n" + marker + json.dumps(kw) + "\n").encode())
    with open("solution.py") as f:
        src = f.read()
    with open("tests.json") as f:
        spec = json.load(f)
    ns = {"__name__": "__main__"}
    try:
        exec(compile(src, "solution.py", "exec"), ns)
        if spec["setup"]:
            exec(compile(spec["setup"], "setup.py", "exec"), ns)
    except BaseException as e:
        report(load_error="%s: %s" % (type(e).__name__, str(e)[:300]))
        return
    passed, first = 0, None
    for i, t in enumerate(spec["tests"]):
        try:
            exec(compile(t, "test_%d.py" % i, "exec"), ns)
            passed += 1
        except BaseException as e:
            if first is None:
                first = "test %d (%s) failed: %s: %s" % (i, t.strip()[:150], type(e).__name__, str(e)[:200])
    report(passed=passed, total=len(spec["tests"]), first_failure=first)
_main()
"#;

#[derive(Deserialize)]
struct HarnessReport {
    #[serde(default)]
    load_error: Option<String>,
    #[serde(default)]
    passed: usize,
    #[serde(default)]
    total: usize,
    #[serde(default)]
    first_failure: Option<String>,
}

impl CodingTask {
    /// The program that is run for an agent's answer.
    pub fn program_for(&self, answer: &str) -> String {
        let code = extract_code(answer, &["python", "py", "python3"]);
        match (&self.entry_point, &self.stub) {
            (Some(ep), Some(stub)) if !code.contains(&format!("def {ep}")) => {
                format!("{stub}{code}\n")
            }
            _ => format!("{code}\n"),
        }
    }

    /// Runs the program against the tests in the sandbox.
    pub fn check(&self, checker: &Checker, answer: &str) -> Result<Outcome, TaskError> {
        let Some(python) = checker.python() else {
            return Err(TaskError::MissingData {
                what: "python3 interpreter".into(),
                path: "/usr/bin/python3".into(),
                hint: "install python3 (apt-get install -y python3) or set SWARM_PYTHON".into(),
            });
        };
        if self.tests.is_empty() {
            return Err(TaskError::BrokenTask {
                task: self.entry_point.clone().unwrap_or_default(),
                message: "no tests".into(),
            });
        }
        let program = self.program_for(answer);
        if program.trim().is_empty() {
            return Ok(Outcome::fail("empty answer"));
        }
        let sandbox = checker.sandbox();
        let scratch = sandbox.scratch()?;
        scratch.write_file("solution.py", program.as_bytes())?;
        let spec = serde_json::json!({ "setup": self.setup, "tests": self.tests });
        scratch.write_file("tests.json", spec.to_string().as_bytes())?;
        scratch.write_file("harness.py", HARNESS.as_bytes())?;
        let marker = format!("@@swarm-result-{:016x}@@", rand::thread_rng().gen::<u64>());
        let mut cmd = SandboxCommand::in_work_dir(
            &scratch,
            vec![
                python.to_string_lossy().into_owned(),
                "-I".into(),
                "-B".into(),
                "harness.py".into(),
            ],
        )?;
        cmd.stdin = format!("{marker}\n").into_bytes();
        let out = sandbox.run(&scratch, &cmd)?;
        let limits = sandbox.limits();
        if let Some(reason) = out.limit_reason(limits) {
            return Ok(Outcome::fail(reason));
        }
        let stdout = out.stdout_text();
        let report = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(&marker))
            .and_then(|json| serde_json::from_str::<HarnessReport>(json).ok());
        let Some(report) = report else {
            return Ok(Outcome::fail(format!(
                "the program ended before the tests reported ({})",
                out.describe_failure(limits)
            )));
        };
        if let Some(err) = report.load_error {
            return Ok(Outcome::fail(format!("program failed to load: {err}")));
        }
        let total = report.total.max(1);
        let score = report.passed as f64 / total as f64;
        Ok(if report.passed == report.total {
            Outcome::pass(format!("all {} tests passed", report.total))
        } else {
            Outcome::partial(
                score,
                format!(
                    "{}/{} tests passed; {}",
                    report.passed,
                    report.total,
                    report.first_failure.unwrap_or_default()
                ),
            )
        })
    }
}

/// A single-turn coding episode.
pub(crate) struct CodingEnv<'a> {
    checker: &'a Checker,
    task: &'a CodingTask,
}

impl<'a> CodingEnv<'a> {
    pub(crate) fn new(checker: &'a Checker, _id: &str, task: &'a CodingTask) -> Self {
        Self { checker, task }
    }
}

impl EpisodeEnv for CodingEnv<'_> {
    fn step(&mut self, action: &str, _last_round: bool) -> Result<Step, TaskError> {
        Ok(Step::Done(self.task.check(self.checker, action)?))
    }
}
