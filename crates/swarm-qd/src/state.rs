//! State files: a run's complete state, written atomically, read back exactly.
//!
//! Layout: one header line of JSON,
//! `{"format":"swarm-qd-state","kind":"cycle-qd","version":1,"sha256":"<hex of the payload>"}`,
//! then the payload, the state as JSON (floats printed so that they parse back bit for bit).
//! Loading checks, in order, that the file is a swarm-qd state at all, of the expected kind and
//! version, that the payload's checksum matches, that it parses, and that its invariants hold;
//! each failure is its own [`QdError`] variant.

use std::io::Write as _;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cycle::CycleQd;
use crate::error::{QdError, Result};
use crate::map_elites::MapElites;

/// The format tag in every state file's header.
pub const STATE_FORMAT: &str = "swarm-qd-state";
/// The payload version this build writes and reads.
pub const STATE_VERSION: u32 = 1;

/// A state that can be written to and read from a state file.
pub trait QdState: Serialize + DeserializeOwned {
    /// The kind named in the header (`"cycle-qd"`, `"map-elites"`), so that one kind of state
    /// is never loaded as another.
    const KIND: &'static str;

    /// Checks invariants after parsing.
    fn check(&self) -> Result<()>;

    /// Writes the state to `path` atomically: a temporary file in the same directory, flushed
    /// to disk, then renamed over `path`. A crash leaves either the old file or the new one.
    fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save(path.as_ref(), Self::KIND, self)
    }

    /// Reads a state written by [`QdState::save`].
    fn load(path: impl AsRef<Path>) -> Result<Self> {
        let state: Self = load(path.as_ref(), Self::KIND)?;
        state.check().map_err(|e| QdError::Corrupt {
            path: path.as_ref().to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(state)
    }
}

impl<G: Clone + Serialize + DeserializeOwned> QdState for CycleQd<G> {
    const KIND: &'static str = "cycle-qd";

    fn check(&self) -> Result<()> {
        CycleQd::check(self)
    }
}

impl QdState for MapElites {
    const KIND: &'static str = "map-elites";

    fn check(&self) -> Result<()> {
        MapElites::check(self)
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    kind: String,
    version: u32,
    sha256: String,
}

fn save<T: Serialize>(path: &Path, kind: &str, state: &T) -> Result<()> {
    let io = |source| QdError::Io {
        path: path.to_path_buf(),
        source,
    };
    let payload = serde_json::to_vec(state).map_err(|e| io(e.into()))?;
    let header = Header {
        format: STATE_FORMAT.into(),
        kind: kind.into(),
        version: STATE_VERSION,
        sha256: hex::encode(Sha256::digest(&payload)),
    };
    let mut header = serde_json::to_vec(&header).map_err(|e| io(e.into()))?;
    header.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(&header).map_err(io)?;
    tmp.write_all(&payload).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn load<T: DeserializeOwned>(path: &Path, kind: &'static str) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| QdError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let foreign = |found: String| QdError::ForeignFile {
        path: path.to_path_buf(),
        expected: kind,
        found,
    };
    let corrupt = |reason: String| QdError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let snippet = || {
        let head = &bytes[..bytes.len().min(60)];
        String::from_utf8_lossy(head).into_owned()
    };
    let newline = bytes.iter().position(|&b| b == b'\n');
    let header: Option<Header> = newline.and_then(|n| serde_json::from_slice(&bytes[..n]).ok());
    let (Some(n), Some(header)) = (newline, header) else {
        return Err(foreign(format!(
            "no swarm-qd header; file starts with {:?}",
            snippet()
        )));
    };
    if header.format != STATE_FORMAT {
        return Err(foreign(format!("format {:?}", header.format)));
    }
    if header.kind != kind {
        return Err(foreign(format!("a {:?} state", header.kind)));
    }
    if header.version != STATE_VERSION {
        return Err(QdError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: header.version,
            supported: STATE_VERSION,
        });
    }
    let payload = &bytes[n + 1..];
    let digest = hex::encode(Sha256::digest(payload));
    if digest != header.sha256 {
        return Err(corrupt(format!(
            "checksum mismatch (header says {}, contents hash to {digest}): the file was changed or truncated after it was written",
            header.sha256
        )));
    }
    serde_json::from_slice(payload).map_err(|e| corrupt(format!("payload does not parse: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::BehaviourDim;
    use crate::cycle::{Child, CycleQdConfig};

    fn small() -> CycleQd<u64> {
        let skills = vec![
            BehaviourDim::new("a", 0.0, 1.0, 5),
            BehaviourDim::new("b", 0.0, 1.0, 5),
        ];
        let mut qd = CycleQd::new(CycleQdConfig::new(skills)).unwrap();
        qd.insert_initial(1, vec![0.9, 0.1]).unwrap();
        qd.insert_initial(2, vec![0.1, 0.9]).unwrap();
        let t = qd.ask(2).unwrap();
        qd.tell(t[1].id, Child::new(3, vec![0.5, 0.5])).unwrap();
        qd
    }

    #[test]
    fn save_then_load_gives_the_same_state() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.json");
        let qd = small();
        qd.save(&path)?;
        let back = CycleQd::<u64>::load(&path)?;
        assert_eq!(serde_json::to_string(&back)?, serde_json::to_string(&qd)?);
        // Overwriting works and leaves no temporary files behind.
        back.save(&path)?;
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn foreign_corrupt_and_future_files_are_errors_that_say_so() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.json");
        small().save(&path)?;
        let good = std::fs::read(&path)?;

        // Some other JSON file.
        std::fs::write(&path, br#"{"model": "llama", "layers": 30}"#)?;
        let e = CycleQd::<u64>::load(&path).unwrap_err();
        assert!(matches!(e, QdError::ForeignFile { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("is not a swarm-qd cycle-qd state file"));

        // A MAP-Elites state is not a CycleQD state.
        let other = String::from_utf8(good.clone())?.replacen("cycle-qd", "map-elites", 1);
        std::fs::write(&path, other)?;
        let e = CycleQd::<u64>::load(&path).unwrap_err();
        assert!(matches!(e, QdError::ForeignFile { .. }), "{e}");

        // A newer version.
        let newer = String::from_utf8(good.clone())?.replacen("\"version\":1", "\"version\":9", 1);
        std::fs::write(&path, newer)?;
        let e = CycleQd::<u64>::load(&path).unwrap_err();
        assert!(
            matches!(e, QdError::UnsupportedVersion { found: 9, .. }),
            "{e}"
        );

        // One byte flipped in the payload, and a truncated file.
        let mut flipped = good.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        std::fs::write(&path, &flipped)?;
        let e = CycleQd::<u64>::load(&path).unwrap_err();
        assert!(matches!(e, QdError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("checksum mismatch"));
        std::fs::write(&path, &good[..good.len() / 2])?;
        assert!(matches!(
            CycleQd::<u64>::load(&path),
            Err(QdError::Corrupt { .. })
        ));

        // Binary garbage and a missing file.
        std::fs::write(&path, [0u8, 159, 146, 150, 10, 1, 2])?;
        assert!(matches!(
            CycleQd::<u64>::load(&path),
            Err(QdError::ForeignFile { .. })
        ));
        assert!(matches!(
            CycleQd::<u64>::load(dir.path().join("missing")),
            Err(QdError::Io { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_consistent_checksum_over_an_inconsistent_state_is_still_rejected() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.json");
        let qd = small();
        let mut value = serde_json::to_value(&qd)?;
        value["told"] = serde_json::json!(7);
        let payload = serde_json::to_vec(&value)?;
        let header = format!(
            "{{\"format\":\"swarm-qd-state\",\"kind\":\"cycle-qd\",\"version\":1,\"sha256\":\"{}\"}}\n",
            hex::encode(Sha256::digest(&payload))
        );
        let mut bytes = header.into_bytes();
        bytes.extend_from_slice(&payload);
        std::fs::write(&path, bytes)?;
        let e = CycleQd::<u64>::load(&path).unwrap_err();
        assert!(matches!(e, QdError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("outstanding"), "{e}");
        Ok(())
    }
}
