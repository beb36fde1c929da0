//! swarm-tasks (work in progress)
mod episode;
mod error;
mod prompt;
mod sandbox;
mod skills;

pub use episode::{ChatMessage, Episode, EpisodeResult, Outcome, Role, Round, Skill, Step, Task};
pub use error::TaskError;
pub use prompt::*;
pub use sandbox::{
    processes_of_uid, Limits, Mount, RunOutput, Sandbox, SandboxCommand, SandboxError, Scratch,
    Termination,
};
pub use skills::coding::CodingTask;
pub use skills::database::{DatabaseTask, DbSource, SqlCheck};
pub use skills::os::{CheckStep, OsCheck, OsFile, OsTask, ScriptLang};
pub use skills::{Checker, EpisodeEnv};
