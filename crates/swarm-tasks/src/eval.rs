//! The entry point of `swarm eval`: load a suite, play it with an agent, print and save.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::agent::Agent;
use crate::error::TaskError;
use crate::loaders::DataDirs;
use crate::registry::{load_suite, SuiteRequest};
use crate::runner::{run_episodes, RunOptions, SuiteReport};
use crate::sandbox::Limits;
use crate::skills::Checker;

/// Everything `swarm eval` needs besides the agent.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// Which suite.
    pub suite: SuiteRequest,
    /// Where the per-episode JSONL goes.
    pub results_path: Option<PathBuf>,
    /// Conversations per agent call.
    pub batch_size: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Sandbox limits per run.
    pub limits: Limits,
    /// Where the data lives.
    pub dirs: DataDirs,
}

impl EvalRequest {
    /// A request with default settings (progress bar on, batch 16, default limits).
    pub fn new(suite: SuiteRequest) -> Self {
        Self {
            suite,
            results_path: None,
            batch_size: 16,
            progress: true,
            limits: Limits::default(),
            dirs: DataDirs::from_env(),
        }
    }
}

/// What an evaluation found.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    /// `skill/suite (split)`.
    pub suite: String,
    /// Tasks the loader left out.
    pub skipped: usize,
    /// The run.
    pub report: SuiteReport,
}

impl fmt::Display for EvalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        write!(
            f,
            "{}: {}/{} passed ({:.1}%), mean score {:.3}",
            self.suite,
            r.passed,
            r.episodes,
            100.0 * r.pass_rate(),
            r.mean_score
        )?;
        if self.skipped > 0 {
            write!(f, ", {} tasks skipped by the loader", self.skipped)?;
        }
        if r.checker_errors > 0 {
            write!(f, ", {} checker errors", r.checker_errors)?;
        }
        write!(f, " in {:.1}s", r.elapsed.as_secs_f64())?;
        let families = r.by_family();
        if families.len() > 1 {
            let width = families.iter().map(|t| t.family.len()).max().unwrap_or(0);
            write!(f, "\nby family:")?;
            for t in &families {
                write!(
                    f,
                    "\n  {:<width$}  {:>3}/{:<3} passed ({:.0}%)",
                    t.family,
                    t.passed,
                    t.episodes,
                    100.0 * t.passed as f64 / t.episodes as f64
                )?;
            }
        }
        Ok(())
    }
}

/// Loads the suite, plays every episode with `agent`, writes the JSONL and returns the score.
pub fn evaluate(agent: &dyn Agent, req: &EvalRequest) -> Result<EvalSummary, TaskError> {
    let loaded = load_suite(&req.suite, &req.dirs)?;
    for (id, why) in &loaded.skipped {
        tracing::debug!(task = %id, reason = %why, "skipped by the loader");
    }
    let checker = Checker::new(req.limits.clone())?;
    let opts = RunOptions {
        batch_size: req.batch_size,
        threads: 0,
        progress: req.progress,
        results_path: req.results_path.clone(),
    };
    let report = run_episodes(&checker, agent, &loaded.episodes, &opts)?;
    Ok(EvalSummary {
        suite: req.suite.to_string(),
        skipped: loaded.skipped.len(),
        report,
    })
}
