//! Errors of swarm-evolve.

use std::path::PathBuf;

/// Everything that can go wrong in a run.
#[derive(Debug, thiserror::Error)]
pub enum EvolveError {
    /// The run config file is not valid TOML or has unknown keys.
    #[error("{path}: {message}")]
    ConfigParse { path: PathBuf, message: String },
    /// A key of the run config has a bad value.
    #[error("{path}: `{key}` = {value}: {reason}")]
    Config {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A run directory or swarm that cannot be used.
    #[error("{path}: {reason}")]
    RunDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] swarm_model::ModelError),
    #[error(transparent)]
    Merge(#[from] swarm_merge::MergeError),
    #[error(transparent)]
    Qd(#[from] swarm_qd::QdError),
    #[error(transparent)]
    Task(#[from] swarm_tasks::TaskError),
    /// Building the toy world.
    #[error("building the toy world: {0}")]
    Train(#[from] swarm_train::TrainError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Evaluation of a model failed.
    #[error("evaluation failed: {0}")]
    Eval(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl EvolveError {
    /// An I/O error mapper for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Result with [`EvolveError`].
pub type Result<T, E = EvolveError> = std::result::Result<T, E>;
