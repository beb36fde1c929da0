//! Small file-system helpers: atomic writes.

use std::io::Write;
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::weights::temp_path_beside;

/// Writes `bytes` to `path` through a sibling temp file and a rename, so readers never see a
/// half-written file and a crash leaves the old file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path_beside(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::io(path, e)
    })
}
