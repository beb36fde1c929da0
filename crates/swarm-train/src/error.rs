//! Errors of swarm-train.

use std::path::PathBuf;

/// Everything that can go wrong while building the toy world.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] swarm_model::ModelError),
    #[error(transparent)]
    Tasks(#[from] swarm_tasks::TaskError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid setting `{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f32 },
    #[error("no training data: {0}")]
    NoData(String),
    #[error("the training of {0} panicked (a bug: please report it)")]
    Panicked(String),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: &'static str, message: impl Into<String>) -> Self {
        Self::Config {
            field,
            message: message.into(),
        }
    }
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
