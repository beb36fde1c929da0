//! swarm-tasks: skills, episodes, datasets, sandboxed execution and scoring.
//!
//! It knows nothing of models. A **skill** ([`Skill`]: coding, database, os) hands out
//! [`Episode`]s: a prompt (chat messages), then rounds of agent action and environment
//! observation, ending in an [`Outcome`] (a score in [0, 1] and a reason). Checkers execute
//! for real: Python against tests and shell commands in a bubblewrap [`Sandbox`] (no
//! network, private scratch, PID namespace, rlimits, wall and output caps), SQL on SQLite.
//!
//! Main types:
//! - [`Episode`], [`Task`], [`Outcome`]: what is asked and how it scored;
//! - [`Checker`]: starts an episode's environment ([`EpisodeEnv`]) and scores actions;
//! - [`Agent`]: answers conversations (batched); [`GoldAgent`] answers with gold solutions;
//! - [`run_episodes`] / [`evaluate`]: play a suite in parallel, write JSONL results;
//! - [`load_suite`]: (skill, suite, split) -> episodes, from synthetic generators
//!   ([`generate_synthetic`]) or public benchmarks (HumanEval, MBPP, Spider, AgentBench OS,
//!   NL2Bash; see [`DataDirs`] for where their files are found).
//!
//! ```no_run
//! use swarm_tasks::{generate_synthetic, run_episodes, Checker, GoldAgent, Limits, RunOptions,
//!                   Skill, Split};
//! # fn main() -> Result<(), swarm_tasks::TaskError> {
//! let episodes = generate_synthetic(Skill::Database, Split::Test, 20, 0);
//! let checker = Checker::new(Limits::default())?;
//! let report = run_episodes(&checker, &GoldAgent::new(&episodes), &episodes, &RunOptions::default())?;
//! assert_eq!(report.passed, 20);
//! # Ok(()) }
//! ```

mod agent;
mod episode;
mod error;
mod eval;
mod loaders;
mod prompt;
mod registry;
mod runner;
mod sandbox;
mod skills;
mod synthetic;

pub use agent::{Agent, ConstantAgent, Conversation, GoldAgent};
pub use episode::{ChatMessage, Episode, EpisodeResult, Outcome, Role, Round, Skill, Step, Task};
pub use error::TaskError;
pub use eval::{evaluate, EvalRequest, EvalSummary};
pub use loaders::{
    agentbench, humaneval, mbpp, mysql_dump, nl2bash, spider, DataDirs, LoadedSuite,
};
pub use prompt::{
    answer_code, coding_prompt, database_agent_prompt, database_prompt, extract_code, fenced,
    os_agent_prompt, os_prompt, parse_agent_action, system_prompt, without_format_labels,
    AgentAction, CODING_SYSTEM, DATABASE_AGENT_SYSTEM, DATABASE_SYSTEM, OS_AGENT_SYSTEM, OS_SYSTEM,
};
pub use registry::{episodes, load_suite, synthetic_default_size, SuiteInfo, SuiteRequest, SUITES};
pub use runner::{run_episodes, write_jsonl, FamilyTally, RunOptions, SuiteReport};
pub use sandbox::{
    processes_of_uid, Limits, Mount, RunOutput, Sandbox, SandboxCommand, SandboxError, Scratch,
    Termination,
};
pub use skills::coding::CodingTask;
pub use skills::database::{is_ordered, DatabaseTask, DbSource, SqlCheck};
pub use skills::os::{CheckStep, OsCheck, OsFile, OsTask, ScriptLang};
pub use skills::{Checker, EpisodeEnv};
pub use synthetic::{
    families as synthetic_families, generate as generate_synthetic, split_of, Split,
};
