//! Episodes: a prompt, rounds of agent action and environment observation, and an outcome.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::TaskError;
use crate::skills::{coding::CodingTask, database::DatabaseTask, os::OsTask};

/// The three skills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Skill {
    /// Python programming, checked by running tests.
    Coding,
    /// SQL over SQLite, checked by executing it.
    Database,
    /// Shell in a prepared sandbox, checked by output or a check script.
    Os,
}

impl Skill {
    /// Every skill, in a fixed order.
    pub const ALL: [Skill; 3] = [Skill::Coding, Skill::Database, Skill::Os];

    /// The lowercase name (`coding`, `database`, `os`).
    pub fn name(self) -> &'static str {
        match self {
            Skill::Coding => "coding",
            Skill::Database => "database",
            Skill::Os => "os",
        }
    }
}

impl fmt::Display for Skill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Skill {
    type Err = TaskError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "coding" | "code" => Ok(Skill::Coding),
            "database" | "db" | "sql" => Ok(Skill::Database),
            "os" | "shell" | "bash" => Ok(Skill::Os),
            _ => Err(TaskError::Unknown {
                kind: "skill",
                name: s.to_string(),
                known: "coding, database, os".into(),
            }),
        }
    }
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The task, or an observation from the environment.
    User,
    /// The agent.
    Assistant,
}

/// One chat message (OpenAI-style role + content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// What a task checks, per skill.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "skill", rename_all = "lowercase")]
pub enum Task {
    /// A Python task.
    Coding(CodingTask),
    /// An SQL task.
    Database(DatabaseTask),
    /// A shell task.
    Os(OsTask),
}

impl Task {
    /// The task's skill.
    pub fn skill(&self) -> Skill {
        match self {
            Task::Coding(_) => Skill::Coding,
            Task::Database(_) => Skill::Database,
            Task::Os(_) => Skill::Os,
        }
    }
}

/// One episode: the prompt, the round budget and the task that scores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Episode {
    /// Unique within its suite, e.g. `humaneval/HumanEval-12`.
    pub id: String,
    /// The suite it comes from.
    pub suite: String,
    /// The opening messages (system + user).
    pub prompt: Vec<ChatMessage>,
    /// 1 for single-turn tasks; AgentBench-style tasks allow more.
    pub max_rounds: u32,
    /// The checker's data.
    pub task: Task,
    /// The assistant messages of a known-good solution, in order (one per round).
    pub gold: Vec<String>,
    /// The kind of task within the suite, for per-family pass rates: the synthetic suites'
    /// template (`affine`, `count_gt`...), Spider's database. `None` where a suite has no
    /// such grouping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

impl Episode {
    /// The episode's skill.
    pub fn skill(&self) -> Skill {
        self.task.skill()
    }
}

/// The score of an episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// In [0, 1]; 1 means solved.
    pub score: f64,
    /// Whether the task counts as solved.
    pub passed: bool,
    /// Why, in words (the first failing test, the limit hit, the wrong row...).
    pub reason: String,
}

impl Outcome {
    /// Solved.
    pub fn pass(reason: impl Into<String>) -> Self {
        Self {
            score: 1.0,
            passed: true,
            reason: reason.into(),
        }
    }
    /// Not solved, score 0.
    pub fn fail(reason: impl Into<String>) -> Self {
        Self {
            score: 0.0,
            passed: false,
            reason: reason.into(),
        }
    }
    /// Partial credit (clamped to [0, 1]); passed only at 1.
    pub fn partial(score: f64, reason: impl Into<String>) -> Self {
        let score = if score.is_finite() {
            score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self {
            score,
            passed: score >= 1.0,
            reason: reason.into(),
        }
    }
}

/// What the environment says after an agent action.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The episode goes on; this text is shown to the agent as the next user message.
    Observe(String),
    /// The episode is over.
    Done(Outcome),
}

/// One round as recorded in the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// The agent's message.
    pub action: String,
    /// The environment's answer, if the episode went on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observation: Option<String>,
}

/// The record of one finished episode (one JSONL line of `swarm eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeResult {
    /// Episode id.
    pub id: String,
    /// Skill.
    pub skill: Skill,
    /// Suite.
    pub suite: String,
    /// The episode's family ([`Episode::family`]), if its suite has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Score in [0, 1].
    pub score: f64,
    /// Solved or not.
    pub passed: bool,
    /// Why.
    pub reason: String,
    /// Agent actions and observations.
    pub rounds: Vec<Round>,
    /// Wall time spent checking (not generating), in milliseconds.
    pub check_ms: u64,
}
