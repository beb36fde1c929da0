//! The crate's error type.

use std::path::PathBuf;

use crate::sandbox::SandboxError;

/// Errors of swarm-tasks. Failures of the *agent's* code, SQL or shell are never errors:
/// they are scored outcomes with a reason.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The sandbox could not run something.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A file could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A data file does not have the expected format.
    #[error("bad data in {path}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field or line.
        message: String,
    },
    /// Data that setup scripts fetch is missing.
    #[error("{what} not found at {path}: {hint}")]
    MissingData {
        /// What is missing.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it (the env var or script to run).
        hint: String,
    },
    /// A gold query or setup step failed: the task itself is broken.
    #[error("task {task} is broken: {message}")]
    BrokenTask {
        /// The task id.
        task: String,
        /// What failed.
        message: String,
    },
    /// An SQLite error outside the agent's SQL (opening or building a database).
    #[error("SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// No such skill / suite / split.
    #[error("unknown {kind} {name:?}; known: {known}")]
    Unknown {
        /// "skill", "suite" or "split".
        kind: &'static str,
        /// What was asked for.
        name: String,
        /// The accepted values.
        known: String,
    },
    /// The agent failed to produce an answer.
    #[error("agent error: {0}")]
    Agent(String),
    /// Writing results failed.
    #[error("cannot write results: {0}")]
    Output(String),
}

impl TaskError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TaskError {
        let path = path.into();
        move |source| TaskError::Io { path, source }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> TaskError {
        TaskError::Data {
            path: path.into(),
            message: message.into(),
        }
    }
}
