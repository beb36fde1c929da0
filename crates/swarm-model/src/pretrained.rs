//! A pretrained model on disk: config, weights, tokenizer and chat template together.
//!
//! [`Pretrained::open`] takes anything `--model` accepts (see [`ModelRef`]); weights stay
//! memory-mapped (safetensors) or are dequantised on demand (GGUF) until a caller loads them.
//! [`Pretrained::save_hf_dir`] writes the HF layout that transformers and other tools load
//! unchanged.

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::json;

use crate::chat_template::{ChatTemplate, CHATML_TEMPLATE};
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::fsutil::write_atomic;
use crate::gguf::GgufFile;
use crate::hub::{ModelFiles, ModelRef};
use crate::tokenizer::Tokenizer;
use crate::weights::{SafetensorsFiles, TensorSource, Weights};

/// A model's files, opened.
pub struct Pretrained {
    /// Where it came from (a path or hub id), for messages and manifests.
    pub name: String,
    pub config: LlamaConfig,
    pub weights: Box<dyn TensorSource>,
    pub tokenizer: Tokenizer,
    /// The Jinja chat template the model ships, if any.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for Pretrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pretrained")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("weights", &self.weights.describe())
            .finish()
    }
}

impl Pretrained {
    /// Opens anything `--model` accepts: a local HF dir, a GGUF file, a cached hub id, or the
    /// embedded default (fetched on first use).
    pub fn open(reference: &str) -> Result<Self> {
        let model_ref = ModelRef::parse(reference)?;
        let mut model = match model_ref.resolve()? {
            ModelFiles::HfDir(dir) => Self::from_hf_dir(&dir)?,
            ModelFiles::Gguf(path) => Self::from_gguf(&path)?,
        };
        if let ModelRef::Hub { repo, revision } = &model_ref {
            model.name = format!("{repo}@{revision}");
        }
        Ok(model)
    }

    /// Opens an HF model dir: `config.json`, safetensors weights, `tokenizer.json` and
    /// (optionally) `tokenizer_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let weights = SafetensorsFiles::open_dir(dir)?;
        check_weights(&config, &weights)?;
        let (tokenizer, chat_template) = load_tokenizer_files(dir)?;
        Ok(Self {
            name: dir.display().to_string(),
            config,
            weights: Box::new(weights),
            tokenizer,
            chat_template,
        })
    }

    /// Opens a GGUF file (llama architecture).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let gguf = GgufFile::open(path)?;
        let config = gguf.config()?;
        let tokenizer = gguf.tokenizer()?;
        let chat_template = gguf.chat_template();
        check_weights(&config, &gguf)?;
        Ok(Self {
            name: path.display().to_string(),
            config,
            weights: Box::new(gguf),
            tokenizer,
            chat_template,
        })
    }

    /// The chat template, falling back to ChatML for models that ship none.
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        ChatTemplate::new(
            self.chat_template.as_deref().unwrap_or(CHATML_TEMPLATE),
            &self.tokenizer,
        )
    }

    /// Loads every weight into memory on `device` as `dtype`.
    pub fn load_weights(&self, device: &Device, dtype: DType) -> Result<Weights> {
        Weights::from_source(self.weights.as_ref(), device, dtype)
    }

    /// Writes this model as an HF dir (`config.json`, `model.safetensors`, `tokenizer.json`,
    /// `tokenizer_config.json`, `generation_config.json`) in `dtype`. The dir is built beside
    /// `dir` and renamed into place, so a failure never leaves half a model behind.
    pub fn save_hf_dir(&self, dir: &Path, dtype: DType) -> Result<()> {
        let weights = self.load_weights(&Device::Cpu, dtype)?;
        save_hf_dir(
            dir,
            &self.config,
            &weights,
            &self.tokenizer,
            self.chat_template.as_deref(),
        )
    }
}

/// Writes an HF dir from parts, atomically (see [`Pretrained::save_hf_dir`]).
pub fn save_hf_dir(
    dir: &Path,
    config: &LlamaConfig,
    weights: &Weights,
    tokenizer: &Tokenizer,
    chat_template: Option<&str>,
) -> Result<()> {
    let dtype = weights
        .iter()
        .next()
        .map(|(_, t)| t.dtype())
        .unwrap_or(DType::F32);
    let mut config = config.clone();
    config.torch_dtype = torch_dtype_name(dtype)?.to_string();
    replace_dir_atomically(dir, |staging| {
        weights.save_safetensors(&staging.join("model.safetensors"))?;
        write_model_metadata(staging, &config, tokenizer, chat_template)
    })
}

/// Builds a directory in a sibling staging dir with `fill`, then swaps it in for `dir`.
pub fn replace_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ModelError::io(dir, std::io::Error::other("not a directory name")))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| ModelError::io(&staging, e))?;
    if let Err(e) = fill(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(|e| ModelError::io(dir, e))?;
    }
    if let Err(e) = std::fs::rename(&staging, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        return Err(ModelError::io(dir, e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

fn torch_dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("float32"),
        DType::BF16 => Ok("bfloat16"),
        DType::F16 => Ok("float16"),
        other => Err(ModelError::Generation(format!(
            "cannot save weights as {other:?}; use f32, bf16 or f16"
        ))),
    }
}

/// Writes the non-weight files of an HF dir: `config.json`, `generation_config.json`,
/// `tokenizer.json`, `tokenizer_config.json` (with the chat template) and
/// `special_tokens_map.json`.
pub fn write_model_metadata(
    dir: &Path,
    config: &LlamaConfig,
    tokenizer: &Tokenizer,
    chat_template: Option<&str>,
) -> Result<()> {
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    write_atomic(&dir.join("config.json"), &pretty(&config.to_hf_json()))?;
    let mut generation = json!({ "_from_model_config": true });
    if let Some(bos) = config.bos_token_id {
        generation["bos_token_id"] = bos.into();
    }
    match config.eos_token_ids.as_slice() {
        [] => {}
        [one] => generation["eos_token_id"] = (*one).into(),
        many => generation["eos_token_id"] = many.to_vec().into(),
    }
    write_atomic(&dir.join("generation_config.json"), &pretty(&generation))?;
    tokenizer.save(&dir.join("tokenizer.json"))?;
    let mut tok_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
        "model_max_length": config.max_position_embeddings,
    });
    let mut special = json!({});
    if let Some(bos) = tokenizer.bos_token() {
        tok_config["bos_token"] = bos.into();
        special["bos_token"] = bos.into();
    }
    if let Some(eos) = tokenizer.eos_token() {
        tok_config["eos_token"] = eos.into();
        special["eos_token"] = eos.into();
    }
    if let Some(template) = chat_template {
        tok_config["chat_template"] = template.into();
    }
    write_atomic(&dir.join("tokenizer_config.json"), &pretty(&tok_config))?;
    write_atomic(&dir.join("special_tokens_map.json"), &pretty(&special))
}

/// Reads `tokenizer.json` and the special tokens and chat template from
/// `tokenizer_config.json`.
fn load_tokenizer_files(dir: &Path) -> Result<(Tokenizer, Option<String>)> {
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let config_path = dir.join("tokenizer_config.json");
    if !config_path.exists() {
        return Ok((tokenizer, None));
    }
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: config_path.clone(),
            source,
        })?;
    // Special tokens are either strings or `{"content": "..."}` objects.
    let token = |key: &str| -> Option<String> {
        match json.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    // The template is a string, or a list of named templates of which "default" is used.
    let chat_template = match json.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    };
    let chat_template = match chat_template {
        Some(t) => Some(t),
        None => {
            // Newer HF dirs keep the template in its own file.
            let jinja = dir.join("chat_template.jinja");
            if jinja.exists() {
                Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?)
            } else {
                None
            }
        }
    };
    Ok((
        tokenizer.with_special_tokens(token("bos_token"), token("eos_token")),
        chat_template,
    ))
}

/// Checks that `source` has every tensor the config calls for, with the right shape.
pub fn check_weights(config: &LlamaConfig, source: &dyn TensorSource) -> Result<()> {
    for (name, shape) in config.tensor_shapes() {
        let found = source.shape(&name)?;
        if found != shape {
            return Err(ModelError::tensor(
                &name,
                format!(
                    "has shape {found:?} in {}, but the config implies {shape:?}",
                    source.describe()
                ),
            ));
        }
    }
    Ok(())
}
