//! The Llama-family forward pass, in the order of the network: rotary embedding (with
//! Llama-3.1 scaling), MLP, attention (grouped-query), decoder layer, model, causal-LM head.
//!
//! Field names equal the HF checkpoint tensor names (`model.layers.3.self_attn.q_proj` is
//! `layers[3].self_attn.q_proj`). Weights are read through `&self` only and the
//! [`KvCache`] lives outside, so one [`Llama`] serves any number of sequences. A `Llama` built
//! from in-memory [`Weights`](crate::Weights) of the right dtype shares their storage (no copy),
//! which is how merged elites are run.
//!
//! A batch may mix models of one architecture ([`Llama::prefill_grouped`],
//! [`Llama::decode_grouped`]): its rows are grouped contiguously by model, each part of the
//! network takes the same part of every group's model, and a dense product runs once for all
//! the groups whose models share its weight (the elites [`Llama::with_delta`] builds over one
//! base), while each group's low-rank deltas, norms and biases run on its own rows. A plain
//! batch is one group.
//!
//! Inference only: the fused candle-nn kernels used here (`rms_norm`, `softmax_last_dim`,
//! `rope`) have no backward pass.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::rope;

use crate::attention::cached_attention;
use crate::config::{Llama3RopeScaling, LlamaConfig};
use crate::delta::{LowRankDelta, ModelDelta};
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::linear::{Linear, LinearGroup, Precision};
use crate::weights::{TensorSource, Weights};

/// Loads one tensor, checks its shape and converts it to `dtype`.
fn load(
    source: &dyn TensorSource,
    name: &str,
    shape: &[usize],
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let actual = source.shape(name)?;
    if actual != shape {
        return Err(ModelError::tensor(
            name,
            format!(
                "shape {actual:?} in {} but the config implies {shape:?}",
                source.describe()
            ),
        ));
    }
    Ok(source.load(name, device)?.to_dtype(dtype)?)
}

/// What every layer constructor needs to read its weights.
struct Loader<'a> {
    source: &'a dyn TensorSource,
    device: &'a Device,
    precision: Precision,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        load(
            self.source,
            name,
            shape,
            self.device,
            self.precision.activation_dtype(),
        )
    }

    fn linear(&self, prefix: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear> {
        let weight = self.tensor(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Linear::new(weight, bias, self.precision)
    }
}

// ---------------------------------------------------------------------------------------------
// Row groups
//
// Every forward pass runs a batch whose rows are split into contiguous groups, each run by
// its own model (one group on a plain batch; one per elite in a mixed batch of elites served
// from factors). A part of the network takes the same part of every group's model, with the
// group's row count.

/// The same part of each group's model, with the group's rows.
fn parts<'a, T, U>(
    groups: &[(&'a T, usize)],
    part: impl Fn(&'a T) -> &'a U,
) -> Vec<(&'a U, usize)> {
    groups.iter().map(|&(t, n)| (part(t), n)).collect()
}

/// RMS norm of `x` (b, ...) with each group's weight on its rows: one call when every group
/// has the same weight (the base's), else one per group.
fn rms_norm_grouped(weights: &[(&Tensor, usize)], x: &Tensor, eps: f32) -> Result<Tensor> {
    let (first, _) = weights[0];
    if weights.iter().all(|(w, _)| w.id() == first.id()) {
        return Ok(rms_norm(x, first, eps)?);
    }
    let mut out = Vec::with_capacity(weights.len());
    let mut start = 0;
    for &(w, n) in weights {
        out.push(rms_norm(&x.narrow(0, start, n)?, w, eps)?);
        start += n;
    }
    Ok(Tensor::cat(&out, 0)?)
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding

/// The inverse frequencies of RoPE, with Llama-3.1's frequency-dependent scaling when
/// configured (HF `_compute_llama3_parameters`): wavelengths longer than
/// `original_max_position_embeddings / low_freq_factor` are stretched by `factor`, shorter than
/// `... / high_freq_factor` are kept, and the band between is interpolated smoothly.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&Llama3RopeScaling>) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| {
            let inv = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            match scaling {
                None => inv,
                Some(s) => {
                    let old = s.original_max_position_embeddings as f64;
                    let low_wavelen = old / s.low_freq_factor;
                    let high_wavelen = old / s.high_freq_factor;
                    let wavelen = 2.0 * std::f64::consts::PI / inv;
                    if wavelen < high_wavelen {
                        inv
                    } else if wavelen > low_wavelen {
                        inv / s.factor
                    } else {
                        let smooth = (old / wavelen - s.low_freq_factor)
                            / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * inv / s.factor + smooth * inv
                    }
                }
            }
        })
        .collect()
}

/// RoPE's cosine and sine tables in f32, each (max_position_embeddings, head_dim / 2): row p
/// holds the angles of position p. The angles are taken in f32 from f64 frequencies, as HF does,
/// so that training and inference rotate identically.
pub fn rope_tables(config: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = rope_inv_freq(
        config.head_dim,
        config.rope_theta,
        config.rope_scaling.as_ref(),
    )
    .iter()
    .map(|&x| x as f32)
    .collect();
    let half = inv.len();
    let n = config.max_position_embeddings;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for &f in &inv {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

/// Cosine and sine tables for every position, computed once; a forward pass gathers the
/// rows of its positions (different per row of a left-padded batch).
#[derive(Debug, Clone)]
struct RotaryEmbedding {
    /// (max_positions, head_dim / 2)
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

impl RotaryEmbedding {
    fn new(config: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let (cos, sin) = rope_tables(config, device)?;
        Ok(Self {
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            max_positions: config.max_position_embeddings,
        })
    }

    /// `positions`: (b * t) u32 -> cos, sin of shape (b, t, head_dim / 2).
    fn at(&self, positions: &Tensor, b: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(positions, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(positions, 0)?.reshape((b, t, half))?;
        Ok((cos, sin))
    }
}

// ---------------------------------------------------------------------------------------------
// MLP

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(loader: &Loader, prefix: &str, config: &LlamaConfig) -> Result<Self> {
        let (h, i, bias) = (
            config.hidden_size,
            config.intermediate_size,
            config.mlp_bias,
        );
        Ok(Self {
            gate_proj: loader.linear(&format!("{prefix}.gate_proj"), i, h, bias)?,
            up_proj: loader.linear(&format!("{prefix}.up_proj"), i, h, bias)?,
            down_proj: loader.linear(&format!("{prefix}.down_proj"), h, i, bias)?,
        })
    }

    fn forward(mlps: &[(&Mlp, usize)], x: &Tensor) -> Result<Tensor> {
        let (gate, up) = (parts(mlps, |m| &m.gate_proj), parts(mlps, |m| &m.up_proj));
        let hidden = Linear::gated_grouped(&gate, &up, x)?;
        Linear::forward_grouped(&parts(mlps, |m| &m.down_proj), &hidden)
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(loader: &Loader, prefix: &str, config: &LlamaConfig) -> Result<Self> {
        let h = config.hidden_size;
        let q = config.num_attention_heads * config.head_dim;
        let kv = config.num_key_value_heads * config.head_dim;
        let bias = config.attention_bias;
        Ok(Self {
            q_proj: loader.linear(&format!("{prefix}.q_proj"), q, h, bias)?,
            k_proj: loader.linear(&format!("{prefix}.k_proj"), kv, h, bias)?,
            v_proj: loader.linear(&format!("{prefix}.v_proj"), kv, h, bias)?,
            o_proj: loader.linear(&format!("{prefix}.o_proj"), h, q, false)?,
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
        })
    }

    /// `x`: (b, t, hidden), its rows split among `attns`' groups.
    fn forward(
        attns: &[(&Attention, usize)],
        x: &Tensor,
        rope_cs: &(Tensor, Tensor),
        masking: &Masking,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let this = attns[0].0;
        let (h, kvh, d) = (this.num_heads, this.num_kv_heads, this.head_dim);
        let linear = |l: &[LinearGroup], x: &Tensor| Linear::forward_grouped(l, x);
        let group = h / kvh;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let (qs, ks, vs) = (
            parts(attns, |a| &a.q_proj),
            parts(attns, |a| &a.k_proj),
            parts(attns, |a| &a.v_proj),
        );
        let [q, k, v]: [Tensor; 3] = Linear::forward_grouped_many(&[&qs, &ks, &vs], x)?
            .try_into()
            .map_err(|_| ModelError::Generation("q, k and v: three products".to_string()))?;
        let q = heads(q, h)?;
        let k = heads(k, kvh)?;
        let v = heads(v, kvh)?;
        let (cos, sin) = rope_cs;
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        let (k, v) = cache.append(layer, &k, &v)?;
        let len = k.dim(2)?;
        let in_kernel = matches!(masking, Masking::InKernel { .. });
        // A cache stored in another dtype (KvCache::with_dtype) is widened for the products;
        // the CPU kernel reads an f16 cache itself.
        let (k, v) = if k.dtype() != q.dtype() && !in_kernel {
            (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?)
        } else {
            (k, v)
        };

        // Grouped-query attention without repeating K and V: the `group` query heads that
        // share a KV head are stacked into the rows of one product per KV head.
        let q = q.reshape((b, kvh, group * t, d))?;
        let y = match masking {
            Masking::InKernel { padding } => cached_attention(&q, &k, &v, padding, t)?,
            Masking::Additive(mask) => {
                let q = (q * (1.0 / (d as f64).sqrt()))?;
                let scores = q.matmul(&k.t()?)?;
                let scores = match mask {
                    Some(mask) => scores
                        .reshape((b, kvh, group, t, len))?
                        .broadcast_add(mask)?
                        .reshape((b, kvh, group * t, len))?,
                    None => scores,
                };
                let probs = softmax_last_dim(&scores)?;
                probs.matmul(&v)?
            }
        }; // (b, kvh, group * t, d) = (b, h, t, d)
        let y = if t == 1 {
            y.reshape((b, 1, h * d))?
        } else {
            y.reshape((b, h, t, d))?
                .transpose(1, 2)?
                .reshape((b, t, h * d))?
        };
        linear(&parts(attns, |a| &a.o_proj), &y)
    }
}

/// How attention hides padding and future slots.
enum Masking {
    /// The CPU kernel over the cache ([`cached_attention`]): row `r` sees slots from
    /// `padding[r]` up to each query's own.
    InKernel { padding: Vec<usize> },
    /// An additive mask (b, 1, 1, t, len) added to the scores, or none when every key may
    /// be seen.
    Additive(Option<Tensor>),
}

/// Up to this many new tokens per row, the CPU attends with [`cached_attention`] (decode
/// steps); beyond, two batched matrix products are faster (prefill).
const CACHED_ATTENTION_MAX_TOKENS: usize = 1;

// ---------------------------------------------------------------------------------------------
// Decoder layer

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
    eps: f32,
}

impl DecoderLayer {
    fn load(loader: &Loader, prefix: &str, config: &LlamaConfig) -> Result<Self> {
        let h = config.hidden_size;
        Ok(Self {
            input_layernorm: loader.tensor(&format!("{prefix}.input_layernorm.weight"), &[h])?,
            self_attn: Attention::load(loader, &format!("{prefix}.self_attn"), config)?,
            post_attention_layernorm: loader
                .tensor(&format!("{prefix}.post_attention_layernorm.weight"), &[h])?,
            mlp: Mlp::load(loader, &format!("{prefix}.mlp"), config)?,
            eps: config.rms_norm_eps as f32,
        })
    }

    /// `x`: (b, t, hidden), its rows split among `layers`' groups.
    fn forward(
        layers: &[(&DecoderLayer, usize)],
        x: &Tensor,
        rope_cs: &(Tensor, Tensor),
        masking: &Masking,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let eps = layers[0].0.eps;
        let normed = rms_norm_grouped(&parts(layers, |l| &l.input_layernorm), x, eps)?;
        let attns = parts(layers, |l| &l.self_attn);
        let x = (x + Attention::forward(&attns, &normed, rope_cs, masking, cache, layer)?)?;
        let normed = rms_norm_grouped(&parts(layers, |l| &l.post_attention_layernorm), &x, eps)?;
        Ok((&x + Mlp::forward(&parts(layers, |l| &l.mlp), &normed)?)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Model and causal-LM head

/// A Llama-family causal language model, ready to run.
#[derive(Debug, Clone)]
pub struct Llama {
    config: LlamaConfig,
    precision: Precision,
    device: Device,
    embed_tokens: Tensor,
    /// Low-rank deltas of the embedding (none on a plain model; see [`Llama::with_delta`]).
    embed_deltas: Vec<LowRankDelta>,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Linear,
    rotary: RotaryEmbedding,
    /// What [`Llama::new_cache`] stores keys and values in (`None`: the activation dtype).
    kv_cache_dtype: Option<DType>,
}

/// Runs `f` (a forward pass) on a thread of rayon's pool when called on the CPU from a thread
/// outside it.
///
/// Why: each parallel region a CPU op opens from outside the pool (candle's products, norms
/// and RoPE, our attention and products) hands its job to the pool and puts the caller to
/// sleep until the job is done: a wake-up and a sleep per region, ~300 regions in a decode
/// step of SmolLM2, ~10% of a batch-32 step's CPU in the scheduler (perf). Inside the pool a
/// region is a fork-join that the running worker takes part in, and the step pays for one
/// hand-off.
fn in_cpu_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu()
        && rayon::current_thread_index().is_none()
        && rayon::current_num_threads() > 1
    {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// Rows of a mixed batch and the model that runs them: the next `rows` rows of the batch
/// (contiguous, in order). See [`Llama::decode_grouped`].
#[derive(Debug, Clone, Copy)]
pub struct RowGroup<'a> {
    pub model: &'a Llama,
    pub rows: usize,
}

impl<'a> RowGroup<'a> {
    pub fn new(model: &'a Llama, rows: usize) -> Self {
        Self { model, rows }
    }
}

/// Where a checkpoint tensor name lives in a [`Llama`].
enum Slot<'a> {
    Embedding,
    Vector(&'a mut Tensor),
    Weight(&'a mut Linear),
    Bias(&'a mut Linear),
}

impl Llama {
    /// Builds the model from tensors in HF names and layout (safetensors, GGUF or in-memory
    /// weights), converting them to `precision` on `device`.
    pub fn load(
        source: &dyn TensorSource,
        config: &LlamaConfig,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        precision.check_device(device)?;
        let loader = Loader {
            source,
            device,
            precision,
        };
        let (h, v) = (config.hidden_size, config.vocab_size);
        let embed_tokens = loader.tensor("model.embed_tokens.weight", &[v, h])?;
        let layers = (0..config.num_hidden_layers)
            .map(|l| DecoderLayer::load(&loader, &format!("model.layers.{l}"), config))
            .collect::<Result<Vec<_>>>()?;
        let norm = loader.tensor("model.norm.weight", &[h])?;
        let lm_head = if config.tie_word_embeddings {
            Linear::new(embed_tokens.clone(), None, precision)?
        } else {
            loader.linear("lm_head", v, h, false)?
        };
        let rotary = RotaryEmbedding::new(config, precision.activation_dtype(), device)?;
        Ok(Self {
            config: config.clone(),
            precision,
            device: device.clone(),
            embed_tokens,
            embed_deltas: Vec::new(),
            layers,
            norm,
            lm_head,
            rotary,
            kv_cache_dtype: None,
        })
    }

    /// A model that shares every tensor of this one (candle tensors are reference counted:
    /// nothing is copied) except what `delta` changes: the tensors it replaces (converted to
    /// this model's device and dtype; a replaced matrix is quantised again under Q8_0) and
    /// the low-rank deltas it adds to matrices, which run beside the shared dense matmul
    /// (`y = x·Wᵀ + Σ ((x·aᵀ) ⊙ s)·bᵀ`) and beside the embedding lookup
    /// (`E[id] + (b[id] ⊙ s)·a`). With tied embeddings, a delta or replacement of
    /// `model.embed_tokens.weight` applies to the head as well. Names are the checkpoint's;
    /// an unknown name or a wrong shape is an error naming it.
    pub fn with_delta(&self, delta: &ModelDelta) -> Result<Llama> {
        let mut model = self.clone();
        let dtype = self.precision.activation_dtype();
        let (device, precision) = (self.device.clone(), self.precision);
        let conv = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&device)?.to_dtype(dtype)?) };
        let wrong = |name: &str, what: &str, got: &[usize], want: &[usize]| {
            ModelError::tensor(
                name,
                format!("{what} of shape {got:?}, the model's is {want:?}"),
            )
        };
        for (name, t) in delta.replaced() {
            let tied = model.config.tie_word_embeddings;
            match model.slot(name)? {
                Slot::Embedding => {
                    let want = model.embed_tokens.dims().to_vec();
                    if t.dims() != want {
                        return Err(wrong(name, "replacement", t.dims(), &want));
                    }
                    model.embed_tokens = conv(t)?.contiguous()?;
                    if tied {
                        model.lm_head = Linear::new(model.embed_tokens.clone(), None, precision)?;
                    }
                }
                Slot::Vector(v) => {
                    if t.dims() != v.dims() {
                        return Err(wrong(name, "replacement", t.dims(), v.dims()));
                    }
                    *v = conv(t)?.contiguous()?;
                }
                Slot::Weight(linear) => {
                    let (out, inp) = linear.weight_shape();
                    if t.dims() != [out, inp] {
                        return Err(wrong(name, "replacement", t.dims(), &[out, inp]));
                    }
                    *linear = Linear::new(conv(t)?, linear.bias().cloned(), precision)?;
                }
                Slot::Bias(linear) => {
                    let want = linear.bias().map(|b| b.dims().to_vec()).unwrap_or_default();
                    if t.dims() != want {
                        return Err(wrong(name, "replacement", t.dims(), &want));
                    }
                    linear.set_bias(Some(conv(t)?.contiguous()?));
                }
            }
        }
        for (name, deltas) in delta.low_rank() {
            let tied = model.config.tie_word_embeddings;
            for d in deltas {
                let (out, inp) = d.shape();
                let d = d.to(&device, dtype)?;
                match model.slot(name)? {
                    Slot::Embedding => {
                        let want = model.embed_tokens.dims().to_vec();
                        if [out, inp] != *want {
                            return Err(wrong(name, "low-rank delta", &[out, inp], &want));
                        }
                        if tied {
                            model.lm_head.push_delta(d.clone());
                        }
                        model.embed_deltas.push(d);
                    }
                    Slot::Weight(linear) => {
                        let want = linear.weight_shape();
                        if (out, inp) != want {
                            return Err(wrong(
                                name,
                                "low-rank delta",
                                &[out, inp],
                                &[want.0, want.1],
                            ));
                        }
                        linear.push_delta(d);
                    }
                    Slot::Vector(_) | Slot::Bias(_) => {
                        return Err(ModelError::tensor(
                            name,
                            "is 1-D: it takes a replacement, not a low-rank delta",
                        ))
                    }
                }
            }
        }
        Ok(model)
    }

    /// The field that holds checkpoint tensor `name`.
    fn slot(&mut self, name: &str) -> Result<Slot<'_>> {
        let unknown = || ModelError::tensor(name, "is not a tensor of this model");
        match name {
            "model.embed_tokens.weight" => return Ok(Slot::Embedding),
            "model.norm.weight" => return Ok(Slot::Vector(&mut self.norm)),
            "lm_head.weight" if !self.config.tie_word_embeddings => {
                return Ok(Slot::Weight(&mut self.lm_head))
            }
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.").ok_or_else(unknown)?;
        let (index, rest) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = index.parse().map_err(|_| unknown())?;
        let layer = self.layers.get_mut(layer).ok_or_else(unknown)?;
        let (module, part) = rest.rsplit_once('.').ok_or_else(unknown)?;
        let linear = match module {
            "input_layernorm" if part == "weight" => {
                return Ok(Slot::Vector(&mut layer.input_layernorm))
            }
            "post_attention_layernorm" if part == "weight" => {
                return Ok(Slot::Vector(&mut layer.post_attention_layernorm))
            }
            "self_attn.q_proj" => &mut layer.self_attn.q_proj,
            "self_attn.k_proj" => &mut layer.self_attn.k_proj,
            "self_attn.v_proj" => &mut layer.self_attn.v_proj,
            "self_attn.o_proj" => &mut layer.self_attn.o_proj,
            "mlp.gate_proj" => &mut layer.mlp.gate_proj,
            "mlp.up_proj" => &mut layer.mlp.up_proj,
            "mlp.down_proj" => &mut layer.mlp.down_proj,
            _ => return Err(unknown()),
        };
        match part {
            "weight" => Ok(Slot::Weight(linear)),
            "bias" if linear.bias().is_some() => Ok(Slot::Bias(linear)),
            _ => Err(unknown()),
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// An empty cache for `batch` sequences, with room for `capacity` tokens before it grows.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> KvCache {
        let cache = KvCache::new(self.config.num_hidden_layers, batch, capacity);
        match self.kv_cache_dtype {
            Some(dtype) => cache.with_dtype(dtype),
            None => cache,
        }
    }

    /// Makes [`Llama::new_cache`] store keys and values in `dtype` (see
    /// [`KvCache::with_dtype`]); `None` restores the activation dtype. Floating-point dtypes
    /// only; an f32 model on the CPU takes f32 or f16 (what its attention kernel reads).
    pub fn set_kv_cache_dtype(&mut self, dtype: Option<DType>) -> Result<()> {
        if let Some(dtype) = dtype {
            let cpu_kernel =
                self.device.is_cpu() && self.precision.activation_dtype() == DType::F32;
            let supported = if cpu_kernel {
                matches!(dtype, DType::F32 | DType::F16)
            } else {
                dtype.is_float()
            };
            if !supported {
                return Err(ModelError::Generation(format!(
                    "a KV cache in {} is not supported here (an f32 model on the CPU takes \
                     f32 or f16)",
                    dtype.as_str()
                )));
            }
        }
        self.kv_cache_dtype = dtype;
        Ok(())
    }

    /// The dtype set by [`Llama::set_kv_cache_dtype`].
    pub fn kv_cache_dtype(&self) -> Option<DType> {
        self.kv_cache_dtype
    }

    /// Runs `input_ids` (b, t) after what `cache` holds and returns the logits of every
    /// position, (b, t, vocab). The rows continue at their own positions (left padding).
    pub fn forward(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let groups = [(self, input_ids.dim(0)?)];
        in_cpu_pool(&self.device, || {
            let hidden = Self::hidden(&groups, input_ids, cache)?;
            self.lm_head.forward(&hidden)
        })
    }

    /// Like [`Llama::forward`] but returns only the logits of the last position, (b, vocab):
    /// the head (the largest matrix) runs once per row.
    pub fn forward_last(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        Self::forward_last_grouped(&[(self, input_ids.dim(0)?)], input_ids, cache)
    }

    fn forward_last_grouped(
        groups: &[(&Llama, usize)],
        input_ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        in_cpu_pool(&groups[0].0.device, || {
            let hidden = Self::hidden(groups, input_ids, cache)?;
            let t = hidden.dim(1)?;
            let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?;
            Linear::forward_grouped(&parts(groups, |m| &m.lm_head), &last)
        })
    }

    /// Prefills an empty `cache` with prompts of different lengths, left-padded into one
    /// batch, and returns the logits of each prompt's last token, (b, vocab).
    pub fn prefill(&self, prompts: &[Vec<u32>], cache: &mut KvCache) -> Result<Tensor> {
        Self::prefill_grouped(&[RowGroup::new(self, prompts.len())], prompts, cache)
    }

    /// [`Llama::prefill`] of a mixed batch: prompt `i` is run by the model of the group that
    /// holds row `i` (see [`Llama::decode_grouped`]).
    pub fn prefill_grouped(
        groups: &[RowGroup],
        prompts: &[Vec<u32>],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let groups = Self::check_groups(groups)?;
        let model = groups[0].0;
        if prompts.is_empty() {
            return Err(ModelError::Generation("no prompts given".to_string()));
        }
        if prompts.len() != cache.batch_size() {
            return Err(ModelError::Generation(format!(
                "{} prompts given to a cache of {} rows",
                prompts.len(),
                cache.batch_size()
            )));
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(ModelError::Generation(format!("prompt {i} is empty")));
            }
            model.check_ids(p)?;
        }
        let t = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let padding: Vec<usize> = prompts.iter().map(|p| t - p.len()).collect();
        let mut ids = Vec::with_capacity(prompts.len() * t);
        for (p, &pad) in prompts.iter().zip(&padding) {
            ids.extend(std::iter::repeat_n(0u32, pad));
            ids.extend_from_slice(p);
        }
        cache.set_padding(padding)?;
        let ids = Tensor::from_vec(ids, (prompts.len(), t), &model.device)?;
        Self::forward_last_grouped(&groups, &ids, cache)
    }

    /// One decode step: appends one token per row and returns the next-token logits,
    /// (b, vocab).
    pub fn decode(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        Self::decode_grouped(&[RowGroup::new(self, tokens.len())], tokens, cache)
    }

    /// One decode step of a mixed batch: rows `0..groups[0].rows` are run by
    /// `groups[0].model`, the next `groups[1].rows` by `groups[1].model`, and so on; one
    /// [`KvCache`] holds every row.
    ///
    /// Made for elites served from factors over one base ([`Llama::with_delta`]): every
    /// dense product `x·Wᵀ` of the base runs once for the rows of all of them (a decode
    /// step reads each weight once, not once per elite), and each elite's low-rank deltas,
    /// norms and biases run on its own rows. The models must share the architecture,
    /// precision and device; models that do not share a weight (a materialised elite) get
    /// a product of their own for it, so the answer is each model's alone, up to float
    /// rounding, whatever the models.
    pub fn decode_grouped(
        groups: &[RowGroup],
        tokens: &[u32],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let groups = Self::check_groups(groups)?;
        let model = groups[0].0;
        model.check_ids(tokens)?;
        let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), &model.device)?;
        Self::forward_last_grouped(&groups, &ids, cache)
    }

    /// The groups as (model, rows), once checked: at least one, none empty, and models that
    /// can share a batch (one architecture, precision and device).
    fn check_groups<'a>(groups: &[RowGroup<'a>]) -> Result<Vec<(&'a Llama, usize)>> {
        let Some(first) = groups.first() else {
            return Err(ModelError::Generation("no row groups given".to_string()));
        };
        for (i, g) in groups.iter().enumerate() {
            if g.rows == 0 {
                return Err(ModelError::Generation(format!("row group {i} has no rows")));
            }
            let m = g.model;
            if m.config != first.model.config
                || m.precision != first.model.precision
                || !m.device.same_device(&first.model.device)
            {
                return Err(ModelError::Generation(format!(
                    "row group {i}'s model differs from group 0's in architecture, precision \
                     or device: they cannot share a batch"
                )));
            }
        }
        Ok(groups.iter().map(|g| (g.model, g.rows)).collect())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(bad) => Err(ModelError::Generation(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            ))),
            None => Ok(()),
        }
    }

    /// The final hidden states (after the last norm), (b, t, hidden), of a batch whose rows
    /// are split among `groups` (which together hold `b` rows; their models checked alike).
    fn hidden(
        groups: &[(&Llama, usize)],
        input_ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let this = groups[0].0;
        let (b, t) = input_ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Generation("no input tokens".to_string()));
        }
        if b != cache.batch_size() {
            return Err(ModelError::Generation(format!(
                "a batch of {b} rows given to a cache of {} rows",
                cache.batch_size()
            )));
        }
        let grouped: usize = groups.iter().map(|(_, n)| n).sum();
        if grouped != b {
            return Err(ModelError::Generation(format!(
                "row groups of {grouped} rows given a batch of {b}"
            )));
        }
        let offset = cache.len();
        let padding = cache.padding().to_vec();
        let longest = offset + t - padding.iter().copied().min().unwrap_or(0);
        if longest > this.rotary.max_positions {
            return Err(ModelError::Generation(format!(
                "sequence of {longest} tokens exceeds the model's {} positions \
                 (max_position_embeddings)",
                this.rotary.max_positions
            )));
        }

        // Positions per row; padding slots get position 0 (their outputs are never seen).
        let mut positions = Vec::with_capacity(b * t);
        for &pad in &padding {
            for j in 0..t {
                positions.push((offset + j).saturating_sub(pad) as u32);
            }
        }
        let positions = Tensor::from_vec(positions, b * t, &this.device)?;
        let rope_cs = this.rotary.at(&positions, b, t)?;
        // Decode steps on the CPU attend in one kernel that reads the cache in place and
        // skips each row's padding itself; prefill (many queries: matrix products win) and
        // other devices use an additive mask, built once for all layers.
        let in_kernel = t <= CACHED_ATTENTION_MAX_TOKENS
            && this.device.is_cpu()
            && this.precision.activation_dtype() == DType::F32;
        let masking = if in_kernel {
            Masking::InKernel { padding }
        } else {
            Masking::Additive(this.mask(&padding, offset, t)?)
        };

        let dims = (b, t, this.config.hidden_size);
        let mut x = Self::embed(groups, &input_ids.flatten_all()?, t)?.reshape(dims)?;
        for l in 0..this.layers.len() {
            let layers = parts(groups, |m| &m.layers[l]);
            x = DecoderLayer::forward(&layers, &x, &rope_cs, &masking, cache, l)?;
        }
        cache.advance(t);
        let eps = this.config.rms_norm_eps as f32;
        rms_norm_grouped(&parts(groups, |m| &m.norm), &x, eps)
    }

    /// The embeddings of `ids` (b * t), (b * t, hidden): group `g`'s rows (`t` ids each)
    /// looked up in its model's table, plus its embedding deltas.
    fn embed(groups: &[(&Llama, usize)], ids: &Tensor, t: usize) -> Result<Tensor> {
        let this = groups[0].0;
        let one_table = groups
            .iter()
            .all(|(m, _)| m.embed_tokens.id() == this.embed_tokens.id());
        if let [(model, _)] = groups {
            let mut x = model.embed_tokens.index_select(ids, 0)?;
            for d in &model.embed_deltas {
                x = (x + d.rows(ids)?)?;
            }
            return Ok(x);
        }
        let shared = if one_table {
            Some(this.embed_tokens.index_select(ids, 0)?)
        } else {
            None
        };
        if let Some(x) = &shared {
            if groups.iter().all(|(m, _)| m.embed_deltas.is_empty()) {
                return Ok(x.clone());
            }
        }
        let mut out = Vec::with_capacity(groups.len());
        let mut start = 0;
        for &(model, n) in groups {
            let ids = ids.narrow(0, start * t, n * t)?;
            let mut x = match &shared {
                Some(x) => x.narrow(0, start * t, n * t)?,
                None => model.embed_tokens.index_select(&ids, 0)?,
            };
            for d in &model.embed_deltas {
                x = (x + d.rows(&ids)?)?;
            }
            out.push(x);
            start += n;
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    /// The additive attention mask (b, 1, 1, t, offset + t): query `i` (slot `offset + i`) of
    /// row `r` sees key slot `j` when `padding[r] <= j <= offset + i`. A padding query sees only
    /// itself, so no softmax row is all `-inf` (which would turn into NaN and leak through
    /// `0 * NaN` into real rows). `None` when nothing needs masking.
    fn mask(&self, padding: &[usize], offset: usize, t: usize) -> Result<Option<Tensor>> {
        if t == 1 && padding.iter().all(|&p| p == 0) {
            return Ok(None);
        }
        let len = offset + t;
        let b = padding.len();
        let mut mask = vec![0f32; b * t * len];
        for (r, &pad) in padding.iter().enumerate() {
            for i in 0..t {
                let q = offset + i;
                let row = &mut mask[(r * t + i) * len..(r * t + i + 1) * len];
                for (j, m) in row.iter_mut().enumerate() {
                    let visible = (j >= pad && j <= q) || j == q;
                    if !visible {
                        *m = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, 1, t, len), &self.device)?
            .to_dtype(self.precision.activation_dtype())?;
        Ok(Some(mask))
    }
}

/// Random weights of `config`'s shape (uniform, scaled by 1/sqrt(fan-in); norms near 1):
/// for tests and for benchmarking a shape without its checkpoint.
pub fn random_weights(config: &LlamaConfig, seed: u64, device: &Device) -> Result<Weights> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut weights = Weights::new();
    for (name, shape) in config.tensor_shapes() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n).map(|_| 1.0 + rng.gen_range(-0.1..0.1)).collect()
        } else {
            let scale = 1.7 / (shape[shape.len() - 1] as f32).sqrt();
            (0..n).map(|_| rng.gen_range(-1.0..1.0) * scale).collect()
        };
        weights.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(weights)
}

/// Index of the largest value of each row of `logits` (b, vocab).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny random Llama: `kv_heads` < `heads` exercises GQA.
    pub(crate) fn tiny_config(tied: bool, heads: usize, kv_heads: usize) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 64,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: 32 / heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 128,
            tie_word_embeddings: tied,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            torch_dtype: "float32".to_string(),
        }
    }

    pub(crate) fn random_weights(config: &LlamaConfig, seed: u64) -> Weights {
        super::random_weights(config, seed, &Device::Cpu).expect("random weights")
    }

    pub(crate) fn tiny_model(tied: bool, heads: usize, kv_heads: usize) -> Llama {
        let config = tiny_config(tied, heads, kv_heads);
        let w = random_weights(&config, 7);
        Llama::load(&w, &config, &Device::Cpu, Precision::F32).expect("tiny model")
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn ids(tokens: &[u32]) -> Tensor {
        Tensor::from_vec(tokens.to_vec(), (1, tokens.len()), &Device::Cpu).unwrap()
    }

    /// The one tester of paths that must agree: full sequence, prefill + incremental decode,
    /// chunked prefill, and batched left-padded prefill + decode.
    fn check_paths_agree(model: &Llama) {
        let seqs: Vec<Vec<u32>> = vec![
            vec![1, 5, 9, 33, 12, 40, 7, 8, 61, 3],
            vec![1, 17, 4],
            vec![1, 2, 3, 4, 5, 6, 7],
        ];
        let decode_steps = 4;
        let mut singles = Vec::new();
        for s in &seqs {
            // Full forward over prompt + continuation.
            let mut c = model.new_cache(1, 0);
            let full = model.forward(&ids(s), &mut c).unwrap().squeeze(0).unwrap();
            // Prefill 3 tokens, then one token at a time.
            let split = 3.min(s.len());
            let mut c = model.new_cache(1, 4);
            let mut parts = vec![model.forward(&ids(&s[..split]), &mut c).unwrap()];
            for &tok in &s[split..] {
                parts.push(model.forward(&ids(&[tok]), &mut c).unwrap());
            }
            let incremental = Tensor::cat(&parts, 1).unwrap().squeeze(0).unwrap();
            let diff = max_abs_diff(&full, &incremental);
            assert!(diff < 1e-5, "full vs incremental differ by {diff}");
            singles.push(full);
        }

        // Batched, left-padded prefill vs each sequence alone.
        let prompts: Vec<Vec<u32>> = seqs.iter().map(|s| s[..s.len() - 1].to_vec()).collect();
        let mut cache = model.new_cache(prompts.len(), 0);
        let last = model.prefill(&prompts, &mut cache).unwrap();
        for (r, p) in prompts.iter().enumerate() {
            let alone = singles[r].get(p.len() - 1).unwrap();
            let diff = max_abs_diff(&last.get(r).unwrap(), &alone);
            assert!(diff < 1e-5, "row {r}: batched prefill differs by {diff}");
        }
        // Batched decode vs single decode, feeding greedy tokens.
        let mut tokens: Vec<u32> = seqs.iter().map(|s| s[s.len() - 1]).collect();
        let mut single_caches: Vec<KvCache> = Vec::new();
        for s in &seqs {
            let mut c = model.new_cache(1, 0);
            model.forward(&ids(&s[..s.len() - 1]), &mut c).unwrap();
            single_caches.push(c);
        }
        for step in 0..decode_steps {
            let batched = model.decode(&tokens, &mut cache).unwrap();
            for (r, c) in single_caches.iter_mut().enumerate() {
                let alone = model.decode(&[tokens[r]], c).unwrap();
                let diff = max_abs_diff(&batched.get(r).unwrap(), &alone.get(0).unwrap());
                assert!(
                    diff < 1e-5,
                    "step {step} row {r}: batched decode differs by {diff}"
                );
            }
            tokens = argmax_rows(&batched).unwrap();
        }
    }

    #[test]
    fn paths_agree_multi_head() {
        check_paths_agree(&tiny_model(false, 4, 4));
    }

    #[test]
    fn paths_agree_gqa_tied() {
        check_paths_agree(&tiny_model(true, 4, 2));
    }

    #[test]
    fn paths_agree_multi_query() {
        check_paths_agree(&tiny_model(false, 4, 1));
    }

    #[test]
    fn paths_agree_with_rope_scaling() {
        let mut config = tiny_config(false, 4, 2);
        config.rope_scaling = Some(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16,
        });
        let w = random_weights(&config, 3);
        check_paths_agree(&Llama::load(&w, &config, &Device::Cpu, Precision::F32).unwrap());
    }

    #[test]
    fn an_f16_cache_is_half_the_size_and_close_to_f32() {
        let mut model = tiny_model(false, 4, 2);
        let prompts: Vec<Vec<u32>> = vec![vec![1, 5, 9, 33, 12, 40, 7], vec![1, 17, 4]];
        let run = |model: &Llama| {
            let mut cache = model.new_cache(prompts.len(), 0);
            let mut logits = vec![model.prefill(&prompts, &mut cache).unwrap()];
            let mut tokens = vec![8u32, 61];
            for _ in 0..5 {
                let step = model.decode(&tokens, &mut cache).unwrap();
                tokens = step.argmax(1).unwrap().to_vec1::<u32>().unwrap();
                logits.push(step);
            }
            // Dropping a row and joining caches keep the dtype.
            cache.select_rows(&[1]).unwrap();
            let joined = KvCache::concat(&[cache, model.new_cache(1, 0)]).unwrap();
            (logits, joined)
        };
        let (exact, exact_cache) = run(&model);
        model.set_kv_cache_dtype(Some(DType::F16)).unwrap();
        let (half, half_cache) = run(&model);
        assert_eq!(half_cache.dtype(), Some(DType::F16));
        assert_eq!(2 * half_cache.size_in_bytes(), exact_cache.size_in_bytes());
        for (step, (a, b)) in exact.iter().zip(&half).enumerate() {
            let scale = a.abs().unwrap().max_keepdim(1).unwrap().max(0).unwrap();
            let scale = scale.to_vec1::<f32>().unwrap()[0];
            let diff = max_abs_diff(a, b);
            assert!(diff > 0.0, "step {step}: an f16 cache changed nothing");
            assert!(
                diff < 1e-2 * scale,
                "step {step}: f16 cache off by {diff} (scale {scale})"
            );
        }
        // Joining caches of different dtypes is refused.
        let f16_cache = model.new_cache(1, 0);
        model.set_kv_cache_dtype(None).unwrap();
        let err = KvCache::concat(&[f16_cache, model.new_cache(1, 0)]).unwrap_err();
        assert!(err.to_string().contains("dtypes"), "{err}");
        let err = model.set_kv_cache_dtype(Some(DType::BF16)).unwrap_err();
        assert!(err.to_string().contains("bf16"), "{err}");
    }

    #[test]
    fn tied_head_equals_untied_head_with_the_same_matrix() {
        let tied_cfg = tiny_config(true, 4, 2);
        let untied_cfg = tiny_config(false, 4, 2);
        let mut w = random_weights(&tied_cfg, 11);
        let tied = Llama::load(&w, &tied_cfg, &Device::Cpu, Precision::F32).unwrap();
        let embed = w.get("model.embed_tokens.weight").unwrap().clone();
        w.insert("lm_head.weight", embed.clone());
        let untied = Llama::load(&w, &untied_cfg, &Device::Cpu, Precision::F32).unwrap();
        let x = ids(&[1, 4, 9, 16]);
        let a = tied.forward(&x, &mut tied.new_cache(1, 0)).unwrap();
        let b = untied.forward(&x, &mut untied.new_cache(1, 0)).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-6);
        // And a different head changes the logits.
        w.insert("lm_head.weight", (embed * 0.5).unwrap());
        let half = Llama::load(&w, &untied_cfg, &Device::Cpu, Precision::F32).unwrap();
        let c = half.forward(&x, &mut half.new_cache(1, 0)).unwrap();
        assert!(max_abs_diff(&a, &c) > 1e-3);
        // An untied config without `lm_head.weight` is a named error.
        w.remove("lm_head.weight");
        let err = Llama::load(&w, &untied_cfg, &Device::Cpu, Precision::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lm_head.weight"), "{err}");
    }

    #[test]
    fn gqa_equals_mha_with_repeated_kv_heads() {
        // A GQA model equals the MHA model whose K/V projections repeat each KV head.
        let gqa_cfg = tiny_config(false, 4, 2);
        let mha_cfg = tiny_config(false, 4, 4);
        let w = random_weights(&gqa_cfg, 5);
        let mut m = w.clone();
        for l in 0..gqa_cfg.num_hidden_layers {
            for p in ["k_proj", "v_proj"] {
                let name = format!("model.layers.{l}.self_attn.{p}.weight");
                let t = w.get(&name).unwrap();
                let d = gqa_cfg.head_dim;
                let heads: Vec<Tensor> = (0..gqa_cfg.num_key_value_heads)
                    .flat_map(|kv| {
                        let head = t.narrow(0, kv * d, d).unwrap();
                        [head.clone(), head]
                    })
                    .collect();
                m.insert(name, Tensor::cat(&heads, 0).unwrap());
            }
        }
        let gqa = Llama::load(&w, &gqa_cfg, &Device::Cpu, Precision::F32).unwrap();
        let mha = Llama::load(&m, &mha_cfg, &Device::Cpu, Precision::F32).unwrap();
        let x = ids(&[1, 3, 5, 7, 11]);
        let a = gqa.forward(&x, &mut gqa.new_cache(1, 0)).unwrap();
        let b = mha.forward(&x, &mut mha.new_cache(1, 0)).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }

    fn random_tensor(shape: &[usize], scale: f32, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0) * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A delta on every matrix (two on the MLP's, one unscaled) and every norm replaced; and
    /// the dense weights `W + b·diag(s)·a` it stands for.
    fn random_delta(config: &LlamaConfig, base: &Weights, seed: u64) -> (ModelDelta, Weights) {
        let mut delta = ModelDelta::new();
        let mut dense = base.clone();
        for (i, (name, shape)) in config.tensor_shapes().into_iter().enumerate() {
            let seed = seed + 100 + 10 * i as u64;
            let w = base.get(&name).unwrap().clone();
            if shape.len() == 1 {
                let v = (&w + random_tensor(&shape, 0.2, seed)).unwrap();
                delta.replace(name.clone(), v.clone());
                dense.insert(name, v);
                continue;
            }
            let (out, inp) = (shape[0], shape[1]);
            let terms = if name.contains("mlp") { 2 } else { 1 };
            let mut sum = w;
            for k in 0..terms as u64 {
                let r = 3 + k as usize;
                let a = random_tensor(&[r, inp], 0.3, seed + 3 * k);
                let b = random_tensor(&[out, r], 0.3, seed + 3 * k + 1);
                let d = if k == 0 {
                    let s = random_tensor(&[r], 1.0, seed + 3 * k + 2);
                    LowRankDelta::scaled(a, s, b).unwrap()
                } else {
                    LowRankDelta::new(a, b).unwrap()
                };
                sum = (sum + d.dense().unwrap()).unwrap();
                delta.add_low_rank(name.clone(), d);
            }
            dense.insert(name, sum);
        }
        (delta, dense)
    }

    /// Random factors `(a, b)` of rank 3 (and 4 for the MLP's) for every matrix.
    fn shared_factors(config: &LlamaConfig) -> Vec<(String, Vec<(Tensor, Tensor)>)> {
        config
            .tensor_shapes()
            .into_iter()
            .enumerate()
            .filter(|(_, (_, shape))| shape.len() == 2)
            .map(|(i, (name, shape))| {
                let seed = 5000 + 10 * i as u64;
                let terms = if name.contains("mlp") { 2 } else { 1 };
                let f = (0..terms as u64)
                    .map(|k| {
                        let r = 3 + k as usize;
                        let a = random_tensor(&[r, shape[1]], 0.3, seed + 3 * k);
                        let b = random_tensor(&[shape[0], r], 0.3, seed + 3 * k + 1);
                        (a, b)
                    })
                    .collect();
                (name, f)
            })
            .collect()
    }

    /// Deltas on `factors` (the same tensors, not copies) with random scales; and the dense
    /// weights they stand for.
    fn scaled_delta(
        factors: &[(String, Vec<(Tensor, Tensor)>)],
        base: &Weights,
        seed: u64,
    ) -> (ModelDelta, Weights) {
        let mut delta = ModelDelta::new();
        let mut dense = base.clone();
        for (i, (name, terms)) in factors.iter().enumerate() {
            let mut sum = base.get(name).unwrap().clone();
            for (k, (a, b)) in terms.iter().enumerate() {
                let s = random_tensor(&[a.dims()[0]], 1.0, seed + 10 * i as u64 + k as u64);
                let d = LowRankDelta::scaled(a.clone(), s, b.clone()).unwrap();
                sum = (sum + d.dense().unwrap()).unwrap();
                delta.add_low_rank(name.clone(), d);
            }
            dense.insert(name.clone(), sum);
        }
        (delta, dense)
    }

    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        (norm(&(a - b).unwrap()) / norm(b)).sqrt()
    }

    #[test]
    fn low_rank_deltas_give_the_logits_of_the_dense_weights() {
        for tied in [false, true] {
            let config = tiny_config(tied, 4, 2);
            let w = random_weights(&config, 21);
            let base = Llama::load(&w, &config, &Device::Cpu, Precision::F32).unwrap();
            let (delta, dense_w) = random_delta(&config, &w, 0);
            let factored = base.with_delta(&delta).unwrap();
            let dense = Llama::load(&dense_w, &config, &Device::Cpu, Precision::F32).unwrap();
            let x = ids(&[1, 5, 9, 33, 12, 40, 7]);
            let a = factored.forward(&x, &mut factored.new_cache(1, 0)).unwrap();
            let b = dense.forward(&x, &mut dense.new_cache(1, 0)).unwrap();
            let rel = rel_diff(&a, &b);
            assert!(
                rel < 1e-4,
                "tied {tied}: delta model vs dense differ by {rel} (rel)"
            );
            // The base is untouched (the delta model shares its tensors, it does not change
            // them).
            let fresh = Llama::load(&w, &config, &Device::Cpu, Precision::F32).unwrap();
            let c = base.forward(&x, &mut base.new_cache(1, 0)).unwrap();
            let d = fresh.forward(&x, &mut fresh.new_cache(1, 0)).unwrap();
            assert_eq!(max_abs_diff(&c, &d), 0.0);
            assert!(rel_diff(&a, &c) > 1e-2, "the delta changed nothing");
            // Every path (cached, batched, left-padded) agrees on the delta model too.
            check_paths_agree(&factored);
        }
    }

    #[test]
    fn low_rank_deltas_on_q8_0_are_close() {
        let config = tiny_config(false, 4, 2);
        let w = random_weights(&config, 22);
        let (delta, dense_w) = random_delta(&config, &w, 0);
        let q = Llama::load(&w, &config, &Device::Cpu, Precision::Q8_0).unwrap();
        let q = q.with_delta(&delta).unwrap();
        let f = Llama::load(&dense_w, &config, &Device::Cpu, Precision::F32).unwrap();
        let x = ids(&[1, 8, 27, 63]);
        let a = q.forward(&x, &mut q.new_cache(1, 0)).unwrap();
        let b = f.forward(&x, &mut f.new_cache(1, 0)).unwrap();
        let rel = rel_diff(&a, &b);
        assert!(rel < 0.05, "q8_0 with deltas differs by {rel}");
    }

    #[test]
    fn bad_deltas_are_named_errors() {
        let config = tiny_config(true, 4, 2);
        let model = tiny_model(true, 4, 2);
        let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let err_of = |d: ModelDelta| model.with_delta(&d).unwrap_err().to_string();
        let mut d = ModelDelta::new();
        d.replace("model.layers.9.input_layernorm.weight", z(&[32]));
        assert!(err_of(d).contains("model.layers.9"));
        let mut d = ModelDelta::new();
        d.replace("lm_head.weight", z(&[64, 32])); // tied: there is no lm_head.weight
        assert!(err_of(d).contains("lm_head.weight"));
        let mut d = ModelDelta::new();
        d.replace("model.norm.weight", z(&[31]));
        assert!(err_of(d).contains("model.norm.weight"));
        let mut d = ModelDelta::new();
        let bad = LowRankDelta::new(z(&[2, 32]), z(&[63, 2])).unwrap();
        d.add_low_rank("model.layers.0.mlp.gate_proj.weight", bad);
        let err = err_of(d);
        assert!(err.contains("gate_proj") && err.contains("63"), "{err}");
        let mut d = ModelDelta::new();
        let ok = LowRankDelta::new(z(&[2, 32]), z(&[32, 2])).unwrap();
        d.add_low_rank("model.norm.weight", ok);
        assert!(err_of(d).contains("1-D"));
        assert_eq!(config.vocab_size, 64);
    }

    /// A mixed batch (two elites from low-rank deltas, the plain base, an elite with a
    /// replaced matrix and a dense model: every kind of group) gives each row what its model
    /// gives alone, through a left-padded prefill, decode steps, and rows leaving mid-way.
    #[test]
    fn grouped_batches_answer_what_each_model_answers_alone() {
        for (tied, shared) in [(false, false), (true, false), (false, true), (true, true)] {
            let config = tiny_config(tied, 4, 2);
            let w = random_weights(&config, 31);
            let base = Llama::load(&w, &config, &Device::Cpu, Precision::F32).unwrap();
            // Deltas on factors of their own, or on factors shared by both elites (their
            // scales their own: elites of one factor set).
            let ((d1, _), (d2, dense_w)) = if shared {
                let factors = shared_factors(&config);
                (
                    scaled_delta(&factors, &w, 1000),
                    scaled_delta(&factors, &w, 2000),
                )
            } else {
                (
                    random_delta(&config, &w, 1000),
                    random_delta(&config, &w, 2000),
                )
            };
            let e1 = base.with_delta(&d1).unwrap();
            let e2 = base.with_delta(&d2).unwrap();
            // Shared factors run as one product pair for all rows; others group by group.
            let up = [&e1, &base, &e2].map(|m| (&m.layers[0].mlp.up_proj, 1));
            let aligned = Linear::aligned_deltas(&up).is_some();
            assert_eq!(aligned, shared);
            let mut d3 = ModelDelta::new();
            let name = "model.layers.1.mlp.up_proj.weight";
            d3.replace(name, (w.get(name).unwrap() * 0.5).unwrap());
            let e3 = base.with_delta(&d3).unwrap();
            let dense = Llama::load(&dense_w, &config, &Device::Cpu, Precision::F32).unwrap();
            // Rows (model, prompt): groups of 2, 1, 3, 1 and 1 rows.
            let rows: Vec<(&Llama, Vec<u32>)> = vec![
                (&e1, vec![1, 5, 9, 33, 12]),
                (&e1, vec![1, 17]),
                (&base, vec![1, 2, 3, 4, 5, 6, 7]),
                (&e2, vec![1, 40, 7]),
                (&e2, vec![1, 5, 9, 33, 12]),
                (&e2, vec![1, 8, 61, 3, 22, 9]),
                (&e3, vec![1, 13, 14]),
                (&dense, vec![1, 40, 7]),
            ];
            let group_sizes = [(&e1, 2), (&base, 1), (&e2, 3), (&e3, 1), (&dense, 1)];
            let groups: Vec<RowGroup> = group_sizes
                .iter()
                .map(|&(m, n)| RowGroup::new(m, n))
                .collect();
            let prompts: Vec<Vec<u32>> = rows.iter().map(|(_, p)| p.clone()).collect();
            let mut cache = base.new_cache(rows.len(), 0);
            let mixed = Llama::prefill_grouped(&groups, &prompts, &mut cache).unwrap();
            let mut alone: Vec<KvCache> = Vec::new();
            let mut alone_logits = Vec::new();
            for (model, prompt) in &rows {
                let mut c = model.new_cache(1, 0);
                alone_logits.push(model.prefill(std::slice::from_ref(prompt), &mut c).unwrap());
                alone.push(c);
            }
            let check = |mixed: &Tensor, alone: &[Tensor], live: &[usize], step: usize| {
                for (r, &row) in live.iter().enumerate() {
                    let a = mixed.get(r).unwrap();
                    let b = alone[row].get(0).unwrap();
                    let rel = rel_diff(&a, &b);
                    assert!(
                        rel < 1e-5,
                        "tied {tied} step {step} row {row}: differs by {rel}"
                    );
                }
            };
            let mut live: Vec<usize> = (0..rows.len()).collect();
            check(&mixed, &alone_logits, &live, 0);
            // The elites differ from the base (a batch that ran every row with one model
            // would fail the checks).
            assert!(rel_diff(&alone_logits[0], &alone_logits[2]) > 1e-2);
            let mut tokens = argmax_rows(&mixed).unwrap();
            let mut groups = group_sizes.to_vec();
            for step in 1..=4 {
                if step == 3 {
                    // Row 1 (e1), row 2 (the base's whole group) and row 4 (e2) leave.
                    let keep = [0, 3, 5, 6, 7];
                    let kept: Vec<usize> = keep
                        .iter()
                        .map(|&k| live.iter().position(|&l| l == k).unwrap())
                        .collect();
                    cache.select_rows(&kept).unwrap();
                    tokens = kept.iter().map(|&i| tokens[i]).collect();
                    live = keep.to_vec();
                    groups = vec![(&e1, 1), (&e2, 2), (&e3, 1), (&dense, 1)];
                }
                let row_groups: Vec<RowGroup> =
                    groups.iter().map(|&(m, n)| RowGroup::new(m, n)).collect();
                let mixed = Llama::decode_grouped(&row_groups, &tokens, &mut cache).unwrap();
                let alone_logits: Vec<Tensor> = (0..rows.len())
                    .map(|row| match live.iter().position(|&l| l == row) {
                        Some(r) => rows[row].0.decode(&[tokens[r]], &mut alone[row]).unwrap(),
                        None => Tensor::zeros((1, 64), DType::F32, &Device::Cpu).unwrap(),
                    })
                    .collect();
                check(&mixed, &alone_logits, &live, step);
                tokens = argmax_rows(&mixed).unwrap();
            }
        }
    }

    #[test]
    fn bad_row_groups_are_errors() {
        let model = tiny_model(false, 4, 2);
        let other = tiny_model(true, 4, 2);
        let mut c = model.new_cache(3, 0);
        let two = [RowGroup::new(&model, 2)];
        assert!(Llama::decode_grouped(&two, &[1, 2, 3], &mut c).is_err());
        let mut c = model.new_cache(2, 0);
        let zero = [RowGroup::new(&model, 2), RowGroup::new(&model, 0)];
        assert!(Llama::prefill_grouped(&zero, &[vec![1], vec![2]], &mut c).is_err());
        let mixed = [RowGroup::new(&model, 1), RowGroup::new(&other, 1)];
        let err = Llama::prefill_grouped(&mixed, &[vec![1], vec![2]], &mut c)
            .unwrap_err()
            .to_string();
        assert!(err.contains("architecture"), "{err}");
        assert!(Llama::decode_grouped(&[], &[1], &mut c).is_err());
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_stretches_low_ones() {
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = rope_inv_freq(128, 500_000.0, None);
        let scaled = rope_inv_freq(128, 500_000.0, Some(&s));
        // Short wavelengths (high frequencies) are untouched.
        assert_eq!(plain[0], scaled[0]);
        assert_eq!(plain[10], scaled[10]);
        // The longest wavelengths are stretched by exactly `factor`.
        let last = plain.len() - 1;
        assert!((plain[last] / scaled[last] - 8.0).abs() < 1e-9);
        // The band between is interpolated monotonically.
        for (p, s) in plain.iter().zip(&scaled) {
            assert!(s <= p && *s >= p / 8.0 - 1e-15);
        }
    }

    #[test]
    fn q8_0_is_close_to_f32() {
        // Widths are multiples of 32 so every matrix is quantised.
        let config = tiny_config(false, 4, 2);
        let w = random_weights(&config, 9);
        let f = Llama::load(&w, &config, &Device::Cpu, Precision::F32).unwrap();
        let q = Llama::load(&w, &config, &Device::Cpu, Precision::Q8_0).unwrap();
        let x = ids(&[1, 8, 27, 63]);
        let a = f.forward(&x, &mut f.new_cache(1, 0)).unwrap();
        let b = q.forward(&x, &mut q.new_cache(1, 0)).unwrap();
        let diff = max_abs_diff(&a, &b);
        assert!(diff < 0.1, "q8_0 differs by {diff}");
        // 20 rows take the dequantise + GEMM path, one row the quantised kernel: they agree
        // up to the kernel's 8-bit activations.
        let tokens: Vec<u32> = (0..20).map(|i| (i * 7 + 1) % 64).collect();
        let full = q.forward(&ids(&tokens), &mut q.new_cache(1, 0)).unwrap();
        let mut cache = q.new_cache(1, 0);
        let mut steps = Vec::new();
        for &t in &tokens {
            steps.push(q.forward(&ids(&[t]), &mut cache).unwrap());
        }
        let steps = Tensor::cat(&steps, 1).unwrap();
        let diff = max_abs_diff(&full, &steps);
        assert!(diff < 0.1, "q8_0 prefill vs decode differ by {diff}");
    }

    #[test]
    fn f16_runs_and_is_close() {
        let config = tiny_config(true, 4, 2);
        let w = random_weights(&config, 9);
        let f = Llama::load(&w, &config, &Device::Cpu, Precision::F32).unwrap();
        let h = Llama::load(&w, &config, &Device::Cpu, Precision::F16).unwrap();
        let x = ids(&[1, 8, 27, 63]);
        let a = f.forward(&x, &mut f.new_cache(1, 0)).unwrap();
        let b = h
            .forward(&x, &mut h.new_cache(1, 0))
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert!(max_abs_diff(&a, &b) < 0.05);
        // bf16 weights load into f32 exactly.
        let wb = w.to_dtype(DType::BF16).unwrap();
        assert!(Llama::load(&wb, &config, &Device::Cpu, Precision::F32).is_ok());
        assert!(Llama::load(&w, &config, &Device::Cpu, Precision::BF16).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let model = tiny_model(false, 4, 2);
        let mut c = model.new_cache(2, 0);
        assert!(model.prefill(&[vec![1, 2], vec![]], &mut c).is_err());
        let mut c = model.new_cache(1, 0);
        assert!(model.prefill(&[vec![1, 999]], &mut c).is_err());
        let mut c = model.new_cache(1, 0);
        let long: Vec<u32> = (0..129).map(|i| i % 64).collect();
        let err = model.prefill(&[long], &mut c).unwrap_err().to_string();
        assert!(err.contains("positions"), "{err}");
        let mut c = model.new_cache(1, 0);
        assert!(model.prefill(&[vec![1], vec![2]], &mut c).is_err());
        // A wrong shape in the weights is named.
        let config = tiny_config(false, 4, 2);
        let mut w = random_weights(&config, 1);
        w.insert(
            "model.norm.weight",
            Tensor::ones(7, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = Llama::load(&w, &config, &Device::Cpu, Precision::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.norm.weight"), "{err}");
    }
}
