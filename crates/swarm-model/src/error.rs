//! The one error type of swarm-model.
//!
//! Every variant names the file, tensor or field it is about, so the binary can print it as
//! it is and a user knows what to fix.

use std::path::PathBuf;

/// Errors from loading, saving and running models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: invalid GGUF file: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("tensor `{name}` not found in {source_desc}")]
    MissingTensor { name: String, source_desc: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("model reference `{reference}`: {message}")]
    Resolve { reference: String, message: String },
    #[error("generation: {0}")]
    Generation(String),
    #[error("device `{0}`: {1}")]
    Device(String, String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for swarm-model.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Config {
            path: path.into(),
            message: message.into(),
        }
    }
    pub(crate) fn tensor(name: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError::Tensor {
            name: name.into(),
            message: message.into(),
        }
    }
}
