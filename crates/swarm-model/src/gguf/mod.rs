//! GGUF files (llama.cpp's format) as a [`TensorSource`] in HF names and layout.
//!
//! [`GgufFile::open`] memory-maps the file and reads its header, metadata and tensor
//! directory; tensors are dequantised to f32 one at a time on [`TensorSource::load`], renamed
//! to their HF names, and Q/K rows are put back in HF order, so a tensor from a GGUF file and
//! the same tensor from an HF dir are interchangeable (merging depends on it).
//! [`GgufFile::config`] and [`GgufFile::tokenizer`] rebuild the config and the tokenizer from
//! the metadata.

mod dtype;
mod names;
mod reader;
mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};

pub use dtype::GgmlType;
use names::{Mapped, Rows};
use reader::{Container, TensorInfo};

use crate::config::{Llama3RopeScaling, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::TensorSource;

/// A GGUF model file, memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    container: Container,
    /// HF name -> how to produce it.
    hf: BTreeMap<String, HfTensor>,
}

#[derive(Debug, Clone)]
struct HfTensor {
    gguf_name: String,
    rows: Rows,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.container.version)
            .field("architecture", &self.architecture())
            .field("tensors", &self.container.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file: header, metadata and tensor directory (every
    /// tensor's type is known and its data lies inside the file). For the `llama`
    /// architecture every tensor name must have an HF equivalent.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the file is opened read-only; as with every mmap, another process
        // truncating it while we read is outside what we can defend against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let container = reader::parse(&mmap).map_err(|message| ModelError::Gguf {
            path: path.to_path_buf(),
            message,
        })?;
        let mut this = Self {
            path: path.to_path_buf(),
            mmap,
            container,
            hf: BTreeMap::new(),
        };
        if this.architecture().as_deref() == Some("llama") {
            this.hf = this.map_names()?;
        }
        Ok(this)
    }

    fn map_names(&self) -> Result<BTreeMap<String, HfTensor>> {
        let mut hf = BTreeMap::new();
        for gguf_name in self.container.tensors.keys() {
            match names::map_llama(gguf_name) {
                Some(Mapped::Hf { name, rows }) => {
                    let t = HfTensor {
                        gguf_name: gguf_name.clone(),
                        rows,
                    };
                    hf.insert(name, t);
                }
                Some(Mapped::Derived(why)) => {
                    tracing::debug!("{}: skipping `{gguf_name}` ({why})", self.path.display());
                }
                None => {
                    return Err(self.error(format!(
                        "tensor `{gguf_name}` has no HF equivalent in the llama architecture"
                    )))
                }
            }
        }
        Ok(hf)
    }

    /// An error about this file.
    pub(crate) fn error(&self, message: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (1-3).
    pub fn version(&self) -> u32 {
        self.container.version
    }

    /// `general.architecture` (`"llama"` for the models we run).
    pub fn architecture(&self) -> Option<String> {
        self.metadata_str("general.architecture")
    }

    /// Every metadata entry, by key.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.container.metadata
    }

    /// A string metadata value.
    pub fn metadata_str(&self, key: &str) -> Option<String> {
        match self.container.metadata.get(key)? {
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// A non-negative integer metadata value, whatever its integer width.
    pub fn metadata_u64(&self, key: &str) -> Option<u64> {
        value_as_u64(self.container.metadata.get(key)?)
    }

    /// A floating-point (or integer) metadata value.
    pub fn metadata_f64(&self, key: &str) -> Option<f64> {
        match self.container.metadata.get(key)? {
            // GGUF stores most floats as f32: take the shortest decimal that rounds to the
            // same f32 (1e-5, not 9.999999747378752e-6), which is what the HF config said.
            Value::F32(v) => v.to_string().parse().ok(),
            Value::F64(v) => Some(*v),
            v => value_as_i64(v).map(|i| i as f64),
        }
    }

    /// A boolean metadata value.
    pub fn metadata_bool(&self, key: &str) -> Option<bool> {
        match self.container.metadata.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The chat template (`tokenizer.chat_template`, Jinja), if the file has one.
    pub fn chat_template(&self) -> Option<String> {
        self.metadata_str("tokenizer.chat_template")
    }

    /// The tokenizer, rebuilt from `tokenizer.ggml.*` so that it gives llama.cpp's ids.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        tokenizer::build(self)
    }

    /// The ggml storage type of an HF-named tensor (`Q4_1`, `F32`, ...).
    pub fn tensor_type(&self, hf_name: &str) -> Option<GgmlType> {
        let t = self.hf.get(hf_name)?;
        Some(self.container.tensors.get(&t.gguf_name)?.dtype)
    }

    /// The GGUF tensor names with their types and row-major shapes, as stored.
    pub fn gguf_tensors(&self) -> Vec<(String, GgmlType, Vec<usize>)> {
        self.container
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dtype, t.shape.clone()))
            .collect()
    }

    fn required_u64(&self, key: &str) -> Result<usize> {
        let v = self
            .metadata_u64(key)
            .ok_or_else(|| self.error(format!("missing or non-integer metadata `{key}`")))?;
        usize::try_from(v).map_err(|_| self.error(format!("metadata `{key}` = {v} is too large")))
    }

    /// The resolved model config from the `llama.*` metadata; fails unless the architecture
    /// is `llama` and the tensors have exactly the shapes [`LlamaConfig::tensor_shapes`] lists.
    pub fn config(&self) -> Result<LlamaConfig> {
        match self.architecture() {
            Some(a) if a == "llama" => {}
            other => {
                return Err(self.error(format!(
                    "architecture {other:?} is not supported; only \"llama\" is"
                )))
            }
        }
        if self.metadata_u64("llama.expert_count").unwrap_or(0) > 0 {
            return Err(self.error("mixture-of-experts llama models are not supported"));
        }
        let hidden_size = self.required_u64("llama.embedding_length")?;
        let num_attention_heads = self.required_u64("llama.attention.head_count")?;
        let num_key_value_heads = match self.container.metadata.get("llama.attention.head_count_kv")
        {
            None => num_attention_heads,
            Some(_) => self.required_u64("llama.attention.head_count_kv")?,
        };
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || !num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            return Err(self.error(format!(
                "head counts {num_attention_heads} (query) and {num_key_value_heads} (key/value) \
                 do not form grouped-query attention"
            )));
        }
        let head_dim = match self.metadata_u64("llama.attention.key_length") {
            Some(d) => d as usize,
            None => hidden_size / num_attention_heads,
        };
        if let Some(rope_dim) = self.metadata_u64("llama.rope.dimension_count") {
            if rope_dim as usize != head_dim {
                return Err(self.error(format!(
                    "partial RoPE (`llama.rope.dimension_count` = {rope_dim}, head dim \
                     {head_dim}) is not supported"
                )));
            }
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(self.error(format!("head dimension {head_dim} must be even")));
        }
        let rope_theta = self
            .metadata_f64("llama.rope.freq_base")
            .unwrap_or(10_000.0);
        match self.metadata_str("llama.rope.scaling.type").as_deref() {
            None | Some("none") => {}
            Some(other) => {
                return Err(self.error(format!(
                    "RoPE scaling type {other:?} is not supported (only Llama 3 frequency \
                     factors are)"
                )))
            }
        }
        let rope_scaling = if self.container.tensors.contains_key("rope_freqs.weight") {
            Some(self.llama3_rope_scaling(head_dim, rope_theta)?)
        } else {
            None
        };
        let embed = self
            .shape("model.embed_tokens.weight")
            .map_err(|_| self.error("missing tensor `token_embd.weight`"))?;
        let vocab_size = embed.first().copied().unwrap_or(0);
        let token_id = |key: &str| self.metadata_u64(key).and_then(|v| u32::try_from(v).ok());
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = token_id(key) {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        let config = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: self.required_u64("llama.feed_forward_length")?,
            num_hidden_layers: self.required_u64("llama.block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self
                .metadata_f64("llama.attention.layer_norm_rms_epsilon")
                .ok_or_else(|| {
                    self.error("missing metadata `llama.attention.layer_norm_rms_epsilon`")
                })?,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.required_u64("llama.context_length")?,
            tie_word_embeddings: !self.hf.contains_key("lm_head.weight"),
            attention_bias: self.hf.contains_key("model.layers.0.self_attn.q_proj.bias"),
            mlp_bias: self.hf.contains_key("model.layers.0.mlp.gate_proj.bias"),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids,
            // Every tensor is dequantised to f32 on load.
            torch_dtype: "float32".to_string(),
        };
        self.check_shapes(&config)?;
        Ok(config)
    }

    /// The tensors must be exactly those the config implies, with the same shapes.
    fn check_shapes(&self, config: &LlamaConfig) -> Result<()> {
        let expected = config.tensor_shapes();
        for (name, shape) in &expected {
            let gguf = self.hf.get(name).map(|t| t.gguf_name.as_str());
            let actual = self.shape(name).map_err(|_| {
                self.error(format!("missing tensor `{name}` for the configured model"))
            })?;
            if &actual != shape {
                return Err(self.error(format!(
                    "tensor `{}` has shape {actual:?}, the config implies {shape:?}",
                    gguf.unwrap_or(name)
                )));
            }
        }
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        let extra: Vec<&str> = self
            .hf
            .iter()
            .filter(|(hf, _)| !known.contains(hf.as_str()))
            .map(|(_, t)| t.gguf_name.as_str())
            .collect();
        if !extra.is_empty() {
            return Err(self.error(format!(
                "tensors the config does not account for: {extra:?} (layers beyond \
                 `llama.block_count`, or biases on some layers only?)"
            )));
        }
        Ok(())
    }

    /// Llama 3.1 style RoPE scaling from the `rope_freqs.weight` factors llama.cpp stores
    /// instead of the config's `rope_scaling` block: we recompute the factors for the
    /// published Llama 3.x settings and accept the one that matches.
    fn llama3_rope_scaling(&self, head_dim: usize, theta: f64) -> Result<Llama3RopeScaling> {
        let stored = self
            .load_gguf("rope_freqs.weight")?
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.error(format!("`rope_freqs.weight`: {e}")))?;
        let original = self
            .metadata_u64("llama.rope.scaling.original_context_length")
            .unwrap_or(8192) as usize;
        let mut factors = vec![8.0, 32.0, 16.0, 4.0, 2.0];
        if let Some(f) = self.metadata_f64("llama.rope.scaling.factor") {
            factors.insert(0, f);
        }
        for factor in factors {
            let s = Llama3RopeScaling {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: original,
            };
            let expect = llama3_rope_factors(&s, head_dim, theta);
            if expect.len() == stored.len()
                && expect
                    .iter()
                    .zip(&stored)
                    .all(|(e, &g)| (e - g as f64).abs() <= 1e-3 * e.abs())
            {
                return Ok(s);
            }
        }
        Err(self.error(
            "`rope_freqs.weight` matches no Llama 3 RoPE scaling (factor 2-32, low 1, high 4); \
             this kind of RoPE scaling is not supported",
        ))
    }

    /// Reads and dequantises a tensor by its GGUF name, in GGUF row order.
    fn dequantize(&self, gguf_name: &str) -> Result<(Vec<f32>, &TensorInfo)> {
        let info =
            self.container
                .tensors
                .get(gguf_name)
                .ok_or_else(|| ModelError::MissingTensor {
                    name: gguf_name.to_string(),
                    source_desc: self.describe(),
                })?;
        // The reader checked that the range lies inside the file.
        let bytes = self
            .mmap
            .get(info.start..info.start + info.len)
            .ok_or_else(|| self.error(format!("tensor `{gguf_name}` lies outside the file")))?;
        let elems = info.shape.iter().product();
        let data = dtype::dequantize(info.dtype, bytes, elems)
            .map_err(|m| self.error(format!("tensor `{gguf_name}`: {m}")))?;
        Ok((data, info))
    }

    fn load_gguf(&self, gguf_name: &str) -> Result<Tensor> {
        let (data, info) = self.dequantize(gguf_name)?;
        Ok(Tensor::from_vec(data, info.shape.as_slice(), &Device::Cpu)?)
    }

    fn heads_for(&self, rows: Rows) -> Result<usize> {
        let key = match rows {
            Rows::AsIs => return Ok(1),
            Rows::QueryHeads => "llama.attention.head_count",
            Rows::KeyHeads => "llama.attention.head_count_kv",
        };
        let heads = match (rows, self.metadata_u64(key)) {
            (_, Some(h)) => h,
            // Without `head_count_kv` there is no grouping: as many KV heads as query heads.
            (Rows::KeyHeads, None) => self.required_u64("llama.attention.head_count")? as u64,
            _ => self.required_u64(key)? as u64,
        };
        usize::try_from(heads).map_err(|_| self.error(format!("`{key}` = {heads} is too large")))
    }
}

/// The frequency divisors llama.cpp stores in `rope_freqs.weight` for Llama 3 scaling
/// (`LlamaModel.generate_extra_tensors` in `convert_hf_to_gguf.py`).
fn llama3_rope_factors(s: &Llama3RopeScaling, head_dim: usize, theta: f64) -> Vec<f64> {
    let original = s.original_max_position_embeddings as f64;
    let low_wavelen = original / s.low_freq_factor;
    let high_wavelen = original / s.high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                s.factor
            } else {
                let smooth = (original / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                1.0 / ((1.0 - smooth) / s.factor + smooth)
            }
        })
        .collect()
}

impl TensorSource for GgufFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn names(&self) -> Vec<String> {
        self.hf.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.hf
            .get(name)
            .and_then(|t| self.container.tensors.get(&t.gguf_name))
            .map(|info| info.shape.clone())
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: self.describe(),
            })
    }

    /// Dequantises to f32, with Q/K rows back in HF order.
    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let t = self.hf.get(name).ok_or_else(|| ModelError::MissingTensor {
            name: name.to_string(),
            source_desc: self.describe(),
        })?;
        let (mut data, info) = self.dequantize(&t.gguf_name)?;
        if t.rows != Rows::AsIs {
            let heads = self.heads_for(t.rows)?;
            let rows = info.shape.first().copied().unwrap_or(0);
            let cols = info.shape.iter().skip(1).product::<usize>();
            if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
                return Err(self.error(format!(
                    "tensor `{}` has {rows} rows, not {heads} heads of an even size",
                    t.gguf_name
                )));
            }
            data = names::unpermute_heads(&data, rows, cols, heads);
        }
        let tensor = Tensor::from_vec(data, info.shape.as_slice(), &Device::Cpu)?;
        Ok(tensor.to_device(device)?)
    }
}

/// Any non-negative integer value as u64.
pub(crate) fn value_as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x as u64),
        Value::U16(x) => Some(x as u64),
        Value::U32(x) => Some(x as u64),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// Any integer value as i64.
pub(crate) fn value_as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(x) => Some(x as i64),
        Value::U16(x) => Some(x as i64),
        Value::U32(x) => Some(x as i64),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I8(x) => Some(x as i64),
        Value::I16(x) => Some(x as i64),
        Value::I32(x) => Some(x as i64),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
