//! The trainable Llama: the same network as [`swarm_model::Llama`], written with candle ops
//! that have a backward pass, on [`Var`]s named with the HF tensor names.
//!
//! measured-facts: candle-nn's fused kernels (`ops::rms_norm`, `softmax_last_dim`,
//! `rotary_emb::rope`) have no backward and stop gradients silently. Here RMSNorm, RoPE
//! (half-split, as HF), the causal softmax and the loss are the fused kernels of
//! [`crate::fused`], which carry their own backward passes. The unit tests
//! prove that every variable gets a gradient and that the inference forward of swarm-model,
//! loading [`TrainableLlama::to_weights`], gives the same logits.

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use swarm_model::{rope_tables, LlamaConfig, TensorSource, Weights};

use crate::error::{Result, TrainError};
use crate::fused::{causal_softmax, rms_norm, rope, weighted_cross_entropy};

/// One named trainable tensor.
#[derive(Debug, Clone)]
struct Param {
    name: String,
    var: Var,
}

/// A Llama whose every weight is a candle [`Var`] named as in HF checkpoints.
#[derive(Debug, Clone)]
pub struct TrainableLlama {
    config: LlamaConfig,
    device: Device,
    params: Vec<Param>,
    /// (max_positions, head_dim / 2), as swarm-model computes them.
    cos: Tensor,
    sin: Tensor,
}

impl TrainableLlama {
    /// A freshly initialised model: matrices ~ N(0, 0.02), the residual outputs (`o_proj`,
    /// `down_proj`) scaled by 1/sqrt(2 * layers) (GPT-2), norms at 1. Same seed, same weights.
    pub fn init(config: &LlamaConfig, device: &Device, seed: u64) -> Result<Self> {
        check_config(config)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let residual_scale = 1.0 / (2.0 * config.num_hidden_layers as f64).sqrt();
        let mut weights = Weights::new();
        for (name, shape) in config.tensor_shapes() {
            let n: usize = shape.iter().product();
            let tensor = if shape.len() == 1 {
                if name.ends_with(".bias") {
                    Tensor::zeros(n, DType::F32, device)?
                } else {
                    Tensor::ones(n, DType::F32, device)?
                }
            } else {
                let std = if name.contains("o_proj") || name.contains("down_proj") {
                    0.02 * residual_scale
                } else {
                    0.02
                };
                let normal = Normal::new(0.0f32, std as f32)
                    .map_err(|e| TrainError::config("init", e.to_string()))?;
                let values: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
                Tensor::from_vec(values, shape.as_slice(), device)?
            };
            weights.insert(name, tensor);
        }
        Self::from_source(&weights, config, device)
    }

    /// A model initialised from existing weights (e.g. the base, to fine-tune an expert).
    pub fn from_source(
        source: &dyn TensorSource,
        config: &LlamaConfig,
        device: &Device,
    ) -> Result<Self> {
        check_config(config)?;
        let mut params = Vec::new();
        for (name, shape) in config.tensor_shapes() {
            let found = source.shape(&name)?;
            if found != shape {
                return Err(TrainError::config(
                    "weights",
                    format!("`{name}` has shape {found:?}, the config implies {shape:?}"),
                ));
            }
            let t = source.load(&name, device)?.to_dtype(DType::F32)?;
            // A fresh copy: the Var must not share storage with the source.
            let var = Var::from_tensor(&t.copy()?)?;
            params.push(Param { name, var });
        }
        let (cos, sin) = rope_tables(config, device)?;
        Ok(Self {
            config: config.clone(),
            device: device.clone(),
            params,
            cos,
            sin,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every trainable variable, in network order.
    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// `(name, var)` pairs, in network order.
    pub fn named_vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// A snapshot of the current weights (copies), ready for `save_hf_dir` or `Llama::load`.
    pub fn to_weights(&self) -> Result<Weights> {
        let mut w = Weights::new();
        for p in &self.params {
            w.insert(p.name.clone(), p.var.as_tensor().copy()?);
        }
        Ok(w)
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.var.as_tensor())
            .ok_or_else(|| TrainError::config("weights", format!("no tensor `{name}`")))
    }

    /// Logits of every position, (b, t, vocab), for right-padded `input_ids` (b, t) u32.
    /// Causal attention only: padding at the end never influences real tokens.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let c = &self.config;
        if t > c.max_position_embeddings {
            return Err(TrainError::config(
                "sequence length",
                format!(
                    "{t} tokens exceed max_position_embeddings = {}",
                    c.max_position_embeddings
                ),
            ));
        }
        let h = c.hidden_size;
        let eps = c.rms_norm_eps;
        let embed = self.get("model.embed_tokens.weight")?;
        let mut x = embed
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let normed = rms_norm(&x, self.get(&format!("{p}.input_layernorm.weight"))?, eps)?;
            let attn = self.attention(&normed, &p, &cos, &sin)?;
            x = (x + attn)?;
            let normed = rms_norm(
                &x,
                self.get(&format!("{p}.post_attention_layernorm.weight"))?,
                eps,
            )?;
            let mlp = self.mlp(&normed, &p)?;
            x = (x + mlp)?;
        }
        let x = rms_norm(&x, self.get("model.norm.weight")?, eps)?;
        let head = if c.tie_word_embeddings {
            embed
        } else {
            self.get("lm_head.weight")?
        };
        Ok(linear(&x, head, None)?)
    }

    fn proj(&self, x: &Tensor, prefix: &str, bias: bool) -> Result<Tensor> {
        let w = self.get(&format!("{prefix}.weight"))?;
        let b = if bias {
            Some(self.get(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok(linear(x, w, b)?)
    }

    fn attention(&self, x: &Tensor, prefix: &str, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let c = &self.config;
        let (nh, nkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let bias = c.attention_bias;
        let heads = |y: Tensor, n: usize| -> candle_core::Result<Tensor> {
            y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(
            self.proj(x, &format!("{prefix}.self_attn.q_proj"), bias)?,
            nh,
        )?;
        let k = heads(
            self.proj(x, &format!("{prefix}.self_attn.k_proj"), bias)?,
            nkv,
        )?;
        let v = heads(
            self.proj(x, &format!("{prefix}.self_attn.v_proj"), bias)?,
            nkv,
        )?;
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        let (k, v) = (repeat_kv(k, nh / nkv)?, repeat_kv(v, nh / nkv)?);
        let probs = causal_softmax(&q.matmul(&k.t()?)?, 1.0 / (d as f64).sqrt())?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * d))?;
        self.proj(&y, &format!("{prefix}.self_attn.o_proj"), false)
    }

    fn mlp(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let bias = self.config.mlp_bias;
        let gate = self
            .proj(x, &format!("{prefix}.mlp.gate_proj"), bias)?
            .silu()?;
        let up = self.proj(x, &format!("{prefix}.mlp.up_proj"), bias)?;
        self.proj(&(gate * up)?, &format!("{prefix}.mlp.down_proj"), bias)
    }

    /// Mean cross-entropy of predicting `targets` (b, t) u32 at the positions where `weights`
    /// (b, t) f32 is non-zero, weighted by it.
    pub fn loss(&self, input_ids: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
        let logits = self.forward(input_ids)?;
        masked_cross_entropy(&logits, targets, weights)
    }
}

/// Weighted mean of `-log p(target)` over the positions with non-zero weight.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let w = weights.reshape(b * t)?;
    let total = w.sum_all()?.to_scalar::<f32>()?;
    if total <= 0.0 {
        return Err(TrainError::NoData("a batch with no target tokens".into()));
    }
    Ok(weighted_cross_entropy(
        &logits.reshape((b * t, v))?,
        &targets.reshape(b * t)?,
        &w,
    )?)
}

fn check_config(config: &LlamaConfig) -> Result<()> {
    // `checked_rem` also refuses zero KV heads.
    if config
        .num_attention_heads
        .checked_rem(config.num_key_value_heads)
        != Some(0)
    {
        return Err(TrainError::config(
            "num_key_value_heads",
            format!(
                "{} must divide num_attention_heads = {}",
                config.num_key_value_heads, config.num_attention_heads
            ),
        ));
    }
    Ok(())
}

/// `x (..., in) W^T + b`.
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = y.dim(1)?;
    y.reshape(out)
}

/// RMSNorm written with differentiable ops: `x / sqrt(mean(x²) + eps) * w`.
fn repeat_kv(x: Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    Tensor::cat(&vec![&x; n], 2)?.reshape((b, kv * n, t, d))
}

/// Additive causal mask (t, t): 0 on and below the diagonal, -inf above.
#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};
    use swarm_model::{Llama, Precision};

    fn tiny(tied: bool, heads: usize, kv: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 61,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: 32 / heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: tied,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![2],
            torch_dtype: "float32".into(),
        }
    }

    fn batch(device: &Device) -> (Tensor, Tensor, Tensor) {
        let ids: Vec<u32> = (0..2 * 12).map(|i| (i * 7 + 3) % 61).collect();
        let x = Tensor::from_vec(ids.clone(), (2, 12), device).unwrap();
        let y: Vec<u32> = ids.iter().map(|i| (i * 5 + 1) % 61).collect();
        let y = Tensor::from_vec(y, (2, 12), device).unwrap();
        let w = Tensor::ones((2, 12), DType::F32, device).unwrap();
        (x, y, w)
    }

    fn train_steps(model: &TrainableLlama, steps: usize) {
        let (x, y, w) = batch(model.device());
        let mut opt = AdamW::new(
            model.vars(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..steps {
            let loss = model.loss(&x, &y, &w).unwrap();
            opt.backward_step(&loss).unwrap();
        }
    }

    #[test]
    fn every_variable_gets_a_gradient() {
        for (tied, heads, kv) in [(true, 4, 2), (false, 4, 4)] {
            let model = TrainableLlama::init(&tiny(tied, heads, kv), &Device::Cpu, 1).unwrap();
            // One step first so that no gradient is zero by symmetry (e.g. norms at 1).
            train_steps(&model, 1);
            let (x, y, w) = batch(model.device());
            let grads = model.loss(&x, &y, &w).unwrap().backward().unwrap();
            for (name, var) in model.named_vars() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name} has no gradient"));
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    norm > 0.0 && norm.is_finite(),
                    "{name}: gradient norm {norm}"
                );
            }
        }
    }

    #[test]
    fn loss_falls() {
        let model = TrainableLlama::init(&tiny(true, 4, 2), &Device::Cpu, 2).unwrap();
        let (x, y, w) = batch(model.device());
        let before = model.loss(&x, &y, &w).unwrap().to_scalar::<f32>().unwrap();
        train_steps(&model, 30);
        let after = model.loss(&x, &y, &w).unwrap().to_scalar::<f32>().unwrap();
        assert!(after < before * 0.5, "{before} -> {after}");
    }

    #[test]
    fn inference_forward_gives_the_same_logits_after_training() {
        for (tied, heads, kv) in [(true, 4, 2), (false, 2, 1), (false, 4, 4)] {
            let config = tiny(tied, heads, kv);
            let model = TrainableLlama::init(&config, &Device::Cpu, 3).unwrap();
            train_steps(&model, 5);
            let dir = tempfile::tempdir().unwrap();
            // Through the disk, as bootstrap does: safetensors -> SafetensorsFiles.
            let path = dir.path().join("model.safetensors");
            model.to_weights().unwrap().save_safetensors(&path).unwrap();
            let files = swarm_model::SafetensorsFiles::open(&[path]).unwrap();
            let llama = Llama::load(&files, &config, &Device::Cpu, Precision::F32).unwrap();
            let (x, _, _) = batch(&Device::Cpu);
            let ours = model.forward(&x).unwrap();
            let theirs = llama.forward(&x, &mut llama.new_cache(2, 0)).unwrap();
            let diff = (ours - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 1e-4,
                "tied={tied} heads={heads}/{kv}: logits differ by {diff}"
            );
        }
    }

    #[test]
    fn init_is_deterministic() {
        let c = tiny(true, 4, 2);
        let a = TrainableLlama::init(&c, &Device::Cpu, 9)
            .unwrap()
            .to_weights()
            .unwrap();
        let b = TrainableLlama::init(&c, &Device::Cpu, 9)
            .unwrap()
            .to_weights()
            .unwrap();
        for (name, t) in a.iter() {
            let u = b.get(name).unwrap();
            let d = (t - u)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{name}");
        }
    }
}
