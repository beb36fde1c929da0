//! The one error type of swarm-merge.
//!
//! Every variant names the tensor, model, file or config field it is about.

use std::path::PathBuf;

use swarm_model::ModelError;

/// Errors from factorising, genome operators, materialisation and merging.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// Inputs that do not fit together: a missing tensor, a shape that differs.
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    /// Two models whose configurations differ in a way that forbids merging them.
    #[error("models do not match: {0}")]
    Architecture(String),
    /// The SVD of a task vector did not converge.
    #[error("tensor `{name}`: SVD failed: {message}")]
    Svd { name: String, message: String },
    /// A genome used with factors it was not made for, or malformed.
    #[error("genome: {0}")]
    Genome(String),
    /// A factor file that is not ours or is damaged.
    #[error("factors: {0}")]
    Factors(String),
    /// A merge configuration (mergekit YAML) that we cannot run.
    #[error("merge config: {0}")]
    Config(String),
    /// A bad argument to a library call (a rank of 0, a negative `w_max`).
    #[error("invalid `{name}`: {message}")]
    Invalid { name: &'static str, message: String },
}

/// Result alias for swarm-merge.
pub type Result<T, E = MergeError> = std::result::Result<T, E>;

impl MergeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MergeError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn tensor(name: impl Into<String>, message: impl Into<String>) -> Self {
        MergeError::Tensor {
            name: name.into(),
            message: message.into(),
        }
    }
    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        MergeError::File {
            path: path.into(),
            message: message.into(),
        }
    }
    pub(crate) fn invalid(name: &'static str, message: impl Into<String>) -> Self {
        MergeError::Invalid {
            name,
            message: message.into(),
        }
    }
}
