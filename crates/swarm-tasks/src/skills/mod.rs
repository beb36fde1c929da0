//! The checkers: one per skill, each turning an agent's actions into an [`Outcome`].

pub mod coding;
pub mod database;
pub mod os;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::episode::{Episode, Outcome, Step, Task};
use crate::error::TaskError;
use crate::sandbox::{Limits, Sandbox};

/// The live state of one episode being played: it takes the agent's message each round and
/// answers with an observation or the final outcome.
pub trait EpisodeEnv: Send {
    /// One round. `last_round` is true when the agent has no round left after this one.
    /// Errors are failures of the checker itself (a broken sandbox), not of the agent.
    fn step(&mut self, action: &str, last_round: bool) -> Result<Step, TaskError>;
}

/// Runs checks: owns the sandbox and finds the Python interpreter.
#[derive(Debug, Clone)]
pub struct Checker {
    sandbox: Sandbox,
    python: Option<PathBuf>,
    cache: Arc<Cache>,
}

/// What checks can reuse: prepared file systems (keyed by their setup) and the results of
/// gold commands (keyed by the task).
#[derive(Debug, Default)]
pub(crate) struct Cache {
    pub(crate) templates: Mutex<HashMap<String, Arc<tempfile::TempDir>>>,
    pub(crate) gold: Mutex<HashMap<String, Arc<os::GoldRun>>>,
}

impl Checker {
    /// A checker whose sandboxed runs get these limits. Fails if the sandbox cannot be set up.
    pub fn new(limits: Limits) -> Result<Self, TaskError> {
        Ok(Self {
            sandbox: Sandbox::new(limits)?,
            python: find_python(),
            cache: Arc::default(),
        })
    }

    /// The sandbox runs go through.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The Python 3 interpreter visible inside the sandbox (under `/usr`), if any.
    pub fn python(&self) -> Option<&std::path::Path> {
        self.python.as_deref()
    }

    /// Starts an episode: prepares its environment (scratch files, databases).
    pub fn start<'a>(
        &'a self,
        episode: &'a Episode,
    ) -> Result<Box<dyn EpisodeEnv + 'a>, TaskError> {
        Ok(match &episode.task {
            Task::Coding(t) => Box::new(coding::CodingEnv::new(self, &episode.id, t)),
            Task::Database(t) => Box::new(database::DatabaseEnv::new(
                &episode.id,
                t,
                episode.max_rounds,
            )),
            Task::Os(t) => Box::new(os::OsEnv::new(self, &episode.id, t, episode.max_rounds)?),
        })
    }

    /// Plays a whole episode with a fixed list of agent messages (one per round; the last is
    /// repeated if the episode asks for more). Used by tests and the gold agent.
    pub fn play_scripted(
        &self,
        episode: &Episode,
        messages: &[String],
    ) -> Result<Outcome, TaskError> {
        let mut env = self.start(episode)?;
        let rounds = episode.max_rounds.max(1);
        for round in 0..rounds {
            let idx = (round as usize).min(messages.len().saturating_sub(1));
            let msg = messages.get(idx).map(String::as_str).unwrap_or("");
            match env.step(msg, round + 1 == rounds)? {
                Step::Done(o) => return Ok(o),
                Step::Observe(_) => {}
            }
        }
        Ok(Outcome::fail("round limit reached without an answer"))
    }
}

fn find_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWARM_PYTHON") {
        let p = PathBuf::from(p);
        return (p.starts_with("/usr") && p.exists()).then_some(p);
    }
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}
