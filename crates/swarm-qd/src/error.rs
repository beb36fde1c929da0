//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong in `swarm-qd`. Messages name the field, the limit and the
/// bad value, so that a user can fix a config or a file without reading the code.
#[derive(Debug, thiserror::Error)]
pub enum QdError {
    /// A behaviour dimension with an empty, reversed or non-finite range.
    #[error("behaviour dimension {dim}: range [{min}, {max}] must be finite with min < max")]
    InvalidRange {
        /// Index of the dimension.
        dim: usize,
        /// Lower end given.
        min: f64,
        /// Upper end given.
        max: f64,
    },
    /// A behaviour dimension with no bins.
    #[error("behaviour dimension {dim}: bin count must be at least 1, got 0")]
    ZeroBins {
        /// Index of the dimension.
        dim: usize,
    },
    /// A grid too large to index.
    #[error("grid of {dims:?} bins has more cells than this machine can index")]
    GridTooLarge {
        /// Bins per dimension.
        dims: Vec<usize>,
    },
    /// Wrong number of values (behaviour values, scores, measures, objectives).
    #[error("{what}: expected {expected} values, got {got}")]
    WrongLength {
        /// What was being passed.
        what: &'static str,
        /// Length expected.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A quality, score or behaviour value that is NaN or infinite.
    #[error("{what} must be finite, got {value}")]
    NotFinite {
        /// What was being passed.
        what: &'static str,
        /// The bad value.
        value: f64,
    },
    /// A configuration value out of its allowed range.
    #[error("invalid config: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field, as named in the config struct.
        field: &'static str,
        /// The value given, formatted.
        value: String,
        /// What the field must satisfy.
        reason: &'static str,
    },
    /// Parents were asked of an archive that holds no elite.
    #[error("archive {archive} is empty: insert at least one elite (e.g. the experts) before asking for children")]
    EmptyArchive {
        /// Index of the archive (the quality skill).
        archive: usize,
    },
    /// `tell` with a ticket that is not outstanding.
    #[error("ticket {id} is not outstanding (already told, or handed out by another run)")]
    UnknownTicket {
        /// The ticket id given.
        id: u64,
    },
    /// `tell` on the MAP-Elites driver without a preceding `ask`.
    #[error("tell without a batch outstanding: call ask first")]
    NothingAsked,
    /// Reading or writing a state file failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not a swarm-qd state file, or a state of another kind.
    #[error("{path} is not a swarm-qd {expected} state file (found {found:?})")]
    ForeignFile {
        /// The file.
        path: PathBuf,
        /// The kind of state this call reads.
        expected: &'static str,
        /// What the file's header says (or its first bytes).
        found: String,
    },
    /// A state file written by a newer (or older, incompatible) format version.
    #[error("{path}: state format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// A state file whose contents fail the checksum or do not parse.
    #[error("{path}: state file is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A state that parsed but breaks an invariant (e.g. an elite in the wrong cell).
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = QdError> = std::result::Result<T, E>;

/// Checks that `value` is finite.
pub(crate) fn finite(what: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(QdError::NotFinite { what, value })
    }
}

/// Checks a length.
pub(crate) fn same_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(QdError::WrongLength {
            what,
            expected,
            got,
        })
    }
}
