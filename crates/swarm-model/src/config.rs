//! Model configuration: the raw HF `config.json` and the resolved [`LlamaConfig`].
//!
//! Two stages, as everywhere in swarm: [`HfConfig`] mirrors the file (every field optional,
//! aliases accepted), and [`HfConfig::resolve`] turns it into a [`LlamaConfig`] with no
//! defaults left to apply. Only the resolved type leaves this crate.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Llama-3.1 style frequency-dependent RoPE scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// A resolved Llama-family configuration: every value the forward pass needs, nothing optional
/// that has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// `q/k/v/o_proj` carry biases (Qwen2-style checkpoints of the same shape).
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    /// Every id that ends a generation (HF allows a list).
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint was saved in (`float32`, `bfloat16`, `float16`).
    pub torch_dtype: String,
}

/// `eos_token_id` may be a number or a list in HF configs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// `config.json` as HF writes it. Unknown fields are kept out (serde ignores them) because HF
/// configs carry dozens of training-only keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 writes RoPE settings here (`rope_theta`, `rope_type`, scaling keys)
    /// instead of `rope_theta` / `rope_scaling`.
    pub rope_parameters: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
    pub torch_dtype: Option<String>,
    /// transformers ≥ 5 spells `torch_dtype` as `dtype`.
    pub dtype: Option<String>,
    pub hidden_act: Option<String>,
}

/// Architectures whose checkpoints have exactly the Llama tensor layout.
const LLAMA_LIKE: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM"];

impl HfConfig {
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Resolves the raw file into a [`LlamaConfig`]; `path` is only used in error messages.
    pub fn resolve(&self, path: &Path) -> Result<LlamaConfig> {
        let missing = |field: &str| ModelError::config(path, format!("missing field `{field}`"));
        if let Some(archs) = &self.architectures {
            if !archs.iter().any(|a| LLAMA_LIKE.contains(&a.as_str())) {
                return Err(ModelError::config(
                    path,
                    format!(
                        "unsupported architecture {archs:?}; supported: {}",
                        LLAMA_LIKE.join(", ")
                    ),
                ));
            }
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(ModelError::config(
                    path,
                    format!("unsupported `hidden_act` {act:?}; only \"silu\" is supported"),
                ));
            }
        }
        let hidden_size = self.hidden_size.ok_or_else(|| missing("hidden_size"))?;
        let num_attention_heads = self
            .num_attention_heads
            .ok_or_else(|| missing("num_attention_heads"))?;
        if num_attention_heads == 0 {
            return Err(ModelError::config(path, "`num_attention_heads` is 0"));
        }
        let num_key_value_heads = self.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(ModelError::config(
                path,
                format!(
                    "`num_attention_heads` ({num_attention_heads}) must be a multiple of \
                     `num_key_value_heads` ({num_key_value_heads})"
                ),
            ));
        }
        let head_dim = self.head_dim.unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(ModelError::config(
                path,
                format!("head dimension {head_dim} must be even and non-zero"),
            ));
        }
        // Old-style keys win when both are present: files written for both generations of
        // transformers carry the same values in each.
        let rope_parameters = self.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_scaling = match (&self.rope_scaling, rope_parameters) {
            (Some(value), _) if !value.is_null() => Some(parse_rope_scaling(value, path)?),
            (_, Some(params)) => match rope_type(params) {
                "" | "default" => None,
                _ => Some(parse_rope_scaling(params, path)?),
            },
            _ => None,
        };
        let rope_theta = self
            .rope_theta
            .or_else(|| rope_parameters.and_then(|p| p.get("rope_theta")?.as_f64()));
        let eos_token_ids = match &self.eos_token_id {
            None => Vec::new(),
            Some(OneOrMany::One(id)) => vec![*id],
            Some(OneOrMany::Many(ids)) => ids.clone(),
        };
        let config = LlamaConfig {
            vocab_size: self.vocab_size.ok_or_else(|| missing("vocab_size"))?,
            hidden_size,
            intermediate_size: self
                .intermediate_size
                .ok_or_else(|| missing("intermediate_size"))?,
            num_hidden_layers: self
                .num_hidden_layers
                .ok_or_else(|| missing("num_hidden_layers"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids,
            torch_dtype: self
                .torch_dtype
                .clone()
                .or_else(|| self.dtype.clone())
                .unwrap_or_else(|| "float32".to_string()),
        };
        Ok(config)
    }
}

fn rope_type(value: &serde_json::Value) -> &str {
    value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

fn parse_rope_scaling(value: &serde_json::Value, path: &Path) -> Result<Llama3RopeScaling> {
    let kind = rope_type(value);
    if kind != "llama3" {
        return Err(ModelError::config(
            path,
            format!("unsupported `rope_scaling` type {kind:?}; only \"llama3\" is supported"),
        ));
    }
    let number = |field: &str| {
        value.get(field).and_then(|v| v.as_f64()).ok_or_else(|| {
            ModelError::config(
                path,
                format!("`rope_scaling.{field}` is missing or not a number"),
            )
        })
    };
    Ok(Llama3RopeScaling {
        factor: number("factor")?,
        low_freq_factor: number("low_freq_factor")?,
        high_freq_factor: number("high_freq_factor")?,
        original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
    })
}

impl LlamaConfig {
    /// SmolLM2-135M-Instruct's architecture (the default model's), in f32: what benchmarks
    /// run on random weights when the real file does not matter (dense products take the
    /// same time whatever the values).
    pub fn smollm2_135m() -> Self {
        Self {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            torch_dtype: "float32".to_string(),
        }
    }

    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        HfConfig::from_file(path)?.resolve(path)
    }

    /// The `config.json` that HF transformers loads as `LlamaForCausalLM`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "torch_dtype": self.torch_dtype,
            "rope_scaling": serde_json::Value::Null,
        });
        if let Some(s) = &self.rope_scaling {
            json["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        if let Some(bos) = self.bos_token_id {
            json["bos_token_id"] = bos.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => json["eos_token_id"] = (*one).into(),
            many => json["eos_token_id"] = many.to_vec().into(),
        }
        json
    }

    /// Number of parameters, counting a tied head once.
    pub fn num_parameters(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = h * q + 2 * h * kv + q * h;
        let mlp = 3 * h * i;
        let layer = attn + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }

    /// The HF tensor names of this architecture with their shapes, in network order.
    ///
    /// This is the contract between the loaders (safetensors, GGUF), the forward pass and the
    /// merge engine: every loader produces exactly these names in this layout.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            if self.attention_bias {
                out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            if self.mlp_bias {
                out.push((format!("{p}.mlp.gate_proj.bias"), vec![i]));
                out.push((format!("{p}.mlp.up_proj.bias"), vec![i]));
                out.push((format!("{p}.mlp.down_proj.bias"), vec![h]));
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smol_json() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
            "eos_token_id": 2, "bos_token_id": 1, "hidden_act": "silu"
        })
    }

    #[test]
    fn resolves_smollm2_shape() {
        let raw: HfConfig = serde_json::from_value(smol_json()).unwrap();
        let c = raw.resolve(Path::new("config.json")).unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.eos_token_ids, vec![2]);
        // SmolLM2-135M has 134.5M parameters with a tied head.
        assert_eq!(c.num_parameters(), 134_515_008);
    }

    #[test]
    fn smollm2_135m_is_the_resolved_hf_config() {
        let mut json = smol_json();
        json["max_position_embeddings"] = 8192.into();
        json["torch_dtype"] = "float32".into();
        let raw: HfConfig = serde_json::from_value(json).unwrap();
        let c = raw.resolve(Path::new("config.json")).unwrap();
        assert_eq!(c, LlamaConfig::smollm2_135m());
    }

    #[test]
    fn round_trips_through_hf_json() {
        let raw: HfConfig = serde_json::from_value(smol_json()).unwrap();
        let c = raw.resolve(Path::new("config.json")).unwrap();
        let again: HfConfig = serde_json::from_value(c.to_hf_json()).unwrap();
        assert_eq!(again.resolve(Path::new("x")).unwrap(), c);
    }

    #[test]
    fn missing_field_is_named() {
        let mut json = smol_json();
        json.as_object_mut().unwrap().remove("hidden_size");
        let raw: HfConfig = serde_json::from_value(json).unwrap();
        let err = raw.resolve(Path::new("dir/config.json")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("dir/config.json") && msg.contains("hidden_size"),
            "{msg}"
        );
    }

    #[test]
    fn bad_gqa_ratio_is_refused() {
        let mut json = smol_json();
        json["num_key_value_heads"] = 4.into();
        let raw: HfConfig = serde_json::from_value(json).unwrap();
        assert!(raw.resolve(Path::new("c")).is_err());
    }

    #[test]
    fn transformers5_rope_parameters_are_read() {
        let mut json = smol_json();
        let obj = json.as_object_mut().unwrap();
        obj.remove("rope_theta");
        obj.insert("dtype".into(), "bfloat16".into());
        obj.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}),
        );
        let raw: HfConfig = serde_json::from_value(json).unwrap();
        let c = raw.resolve(Path::new("c")).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(
            c.rope_scaling.unwrap().original_max_position_embeddings,
            8192
        );
        assert_eq!(c.torch_dtype, "bfloat16");
    }

    #[test]
    fn llama31_rope_scaling_parses() {
        let mut json = smol_json();
        json["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let raw: HfConfig = serde_json::from_value(json).unwrap();
        let c = raw.resolve(Path::new("c")).unwrap();
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
    }
}
