//! swarm-tasks (work in progress)
mod agent;
mod episode;
mod error;
mod prompt;
mod runner;
mod sandbox;
mod skills;
mod synthetic;

pub use agent::{Agent, ConstantAgent, Conversation, GoldAgent};
pub use episode::{ChatMessage, Episode, EpisodeResult, Outcome, Role, Round, Skill, Step, Task};
pub use error::TaskError;
pub use prompt::*;
pub use runner::{run_episodes, write_jsonl, RunOptions, SuiteReport};
pub use sandbox::{
    processes_of_uid, Limits, Mount, RunOutput, Sandbox, SandboxCommand, SandboxError, Scratch,
    Termination,
};
pub use skills::coding::CodingTask;
pub use skills::database::{DatabaseTask, DbSource, SqlCheck};
pub use skills::os::{CheckStep, OsCheck, OsFile, OsTask, ScriptLang};
pub use skills::{Checker, EpisodeEnv};
pub use synthetic::{generate as generate_synthetic, split_of, Split};
