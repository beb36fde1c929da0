//! The precision a model runs in, and the one linear layer that honours it.
//!
//! A [`Precision`] names the dtype of activations and dense weights (`f32`, `f16`, `bf16`), or
//! `q8_0`: weights requantised to GGML's 8-bit blocks in memory with f32 activations, which
//! halves the bytes a memory-bound decode step reads compared with f16 (and quarters them
//! compared with f32). Checkpoints of any stored dtype load into any precision.

use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::delta::LowRankDelta;
use crate::error::{ModelError, Result};
use crate::products::{self, ProductWeight};

/// How a model's weights are held and its activations computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    F32,
    F16,
    BF16,
    /// 2-D weights requantised to Q8_0 blocks (32 values, one f16 scale); f32 activations.
    Q8_0,
}

impl Precision {
    /// The dtype of activations, norms and embeddings.
    pub fn activation_dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Q8_0 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::BF16 => DType::BF16,
        }
    }

    /// The default precision of a device: f32 on the CPU, bf16 on CUDA.
    pub fn default_for(device: &Device) -> Self {
        if device.is_cuda() {
            Precision::BF16
        } else {
            Precision::F32
        }
    }

    /// Refuses combinations candle cannot run (bf16 matmul on the CPU).
    pub fn check_device(self, device: &Device) -> Result<()> {
        if self == Precision::BF16 && device.is_cpu() {
            return Err(ModelError::Device(
                "cpu".to_string(),
                "bf16 matrix products are not supported on the CPU; use `f32` (bf16 \
                 checkpoints are converted exactly) or `q8_0`"
                    .to_string(),
            ));
        }
        Ok(())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
            Precision::Q8_0 => "q8_0",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "f16" | "float16" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::BF16),
            "q8_0" | "q8" => Ok(Precision::Q8_0),
            other => Err(ModelError::Generation(format!(
                "unknown precision `{other}`; expected f32, f16, bf16 or q8_0"
            ))),
        }
    }
}

/// `y = x Wᵀ + b` with `W` dense (out, in) or Q8_0-quantised, plus any low-rank deltas
/// (`+ Σ ((x aᵀ) ⊙ s) bᵀ`, none on a plain model: the dense path only tests an empty list).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    deltas: Vec<LowRankDelta>,
}

#[derive(Debug, Clone)]
enum Weight {
    Dense(Tensor),
    Quantized(Arc<QTensor>, QMatMul),
}

/// From this many input rows on, a Q8_0 product that [`products`] does not take (prefill
/// beyond its small batches, or not on the CPU) dequantises the weight and runs a dense
/// GEMM: candle's quantised kernel goes a row at a time, fast for decode (memory-bound) but
/// ~10x slower than GEMM for prefill, where dequantising once per call costs a few percent.
const DEQUANTIZE_FROM_ROWS: usize = 16;

impl Linear {
    /// Builds from an (out, in) weight already in the activation dtype; quantises it when
    /// `precision` is Q8_0 and the input width is a multiple of the block size.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>, precision: Precision) -> Result<Self> {
        let in_dim = weight.dim(1)?;
        let weight = if precision == Precision::Q8_0
            && in_dim.is_multiple_of(GgmlDType::Q8_0.block_size())
        {
            let q = Arc::new(QTensor::quantize(
                &weight.to_dtype(DType::F32)?,
                GgmlDType::Q8_0,
            )?);
            Weight::Quantized(q.clone(), QMatMul::from_arc(q)?)
        } else {
            Weight::Dense(weight.contiguous()?)
        };
        Ok(Self {
            weight,
            bias,
            deltas: Vec::new(),
        })
    }

    /// (out, in) of the weight.
    pub(crate) fn weight_shape(&self) -> (usize, usize) {
        let dims = match &self.weight {
            Weight::Dense(w) => w.dims(),
            Weight::Quantized(q, _) => q.shape().dims(),
        };
        (dims[0], dims[1])
    }

    pub(crate) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The same layer with another bias (the weight and deltas shared).
    pub(crate) fn set_bias(&mut self, bias: Option<Tensor>) {
        self.bias = bias;
    }

    /// Adds a low-rank delta (already on the layer's device and dtype, shape checked by the
    /// caller).
    pub(crate) fn push_delta(&mut self, delta: LowRankDelta) {
        self.deltas.push(delta);
    }

    /// `x`: (..., in) -> (..., out).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (x2, dims) = rows_of(x)?;
        let mut y = self.dense(&x2)?;
        for d in &self.deltas {
            y = (y + d.apply(&x2)?)?;
        }
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        with_rows(y, &dims)
    }
}

/// Rows of a mixed batch run by one layer: the next `rows` rows of the input (contiguous,
/// in order), and the layer (of one elite) that runs them.
pub(crate) type LinearGroup<'a> = (&'a Linear, usize);

impl Linear {
    /// Whether two layers hold the same dense (or quantised) weight, not a copy: the one
    /// product `x·Wᵀ` then serves both.
    fn shares_weight(&self, other: &Linear) -> bool {
        match (&self.weight, &other.weight) {
            (Weight::Dense(a), Weight::Dense(b)) => a.id() == b.id(),
            (Weight::Quantized(a, _), Weight::Quantized(b, _)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    fn shares_bias(&self, other: &Linear) -> bool {
        match (&self.bias, &other.bias) {
            (None, None) => true,
            (Some(a), Some(b)) => a.id() == b.id(),
            _ => false,
        }
    }

    /// `x` (b, ..., in) whose rows (dim 0) are split into contiguous `groups`, each run by
    /// its own layer: the layers of different elites served from factors over one base.
    ///
    /// Why: a decode step is memory-bound, reading every dense weight once per product; the
    /// elites of a mixed batch share the base's weights, so the rows of all of them go
    /// through one `x·Wᵀ` (read once), and only each group's low-rank deltas and bias run
    /// on its own rows (`narrow`, no gather). Runs of groups whose layers hold different
    /// weights (a materialised elite, a replaced matrix) get their own product: the result
    /// is right for any layers of one shape, and fastest when they share.
    pub(crate) fn forward_grouped(groups: &[LinearGroup], x: &Tensor) -> Result<Tensor> {
        match groups {
            [] => Err(ModelError::Generation("no row groups given".to_string())),
            [(layer, _)] => layer.forward(x),
            _ => Self::forward_groups(groups, x),
        }
    }

    /// Several layers that read the same `x` (q, k and v): as [`Linear::forward_grouped`]
    /// for each, with the dense products in one parallel region when they are plain (see
    /// [`products`]).
    pub(crate) fn forward_grouped_many(
        layers: &[&[LinearGroup]],
        x: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let weights: Option<Vec<ProductWeight>> =
            layers.iter().map(|g| Self::plain_weight(g)).collect();
        if let Some(weights) = weights {
            let (x2, dims) = rows_of(x)?;
            if products::applies(&x2, &weights) {
                let ys = products::products(&x2, &weights)?;
                return ys
                    .into_iter()
                    .zip(layers)
                    .map(|(y, groups)| {
                        let y = match &groups[0].0.bias {
                            Some(b) => y.broadcast_add(b)?,
                            None => y,
                        };
                        with_rows(y, &dims)
                    })
                    .collect();
            }
        }
        layers
            .iter()
            .map(|groups| Self::forward_grouped(groups, x))
            .collect()
    }

    /// `silu(gate(x)) ⊙ up(x)`, the gated MLP's hidden activations: one parallel region for
    /// both products and the SiLU when they are plain and unbiased (see [`products`]).
    pub(crate) fn gated_grouped(
        gate: &[LinearGroup],
        up: &[LinearGroup],
        x: &Tensor,
    ) -> Result<Tensor> {
        let plain = Self::plain_weight(gate).zip(Self::plain_weight(up));
        if let Some((g, u)) = plain {
            let unbiased = gate[0].0.bias.is_none() && up[0].0.bias.is_none();
            let (x2, dims) = rows_of(x)?;
            if unbiased && products::applies(&x2, &[g, u]) {
                return with_rows(products::gated_product(&x2, g, u)?, &dims);
            }
        }
        let gate = Self::forward_grouped(gate, x)?.silu()?;
        Ok((gate * Self::forward_grouped(up, x)?)?)
    }

    /// The weight that every group runs with nothing else but one shared bias (no low-rank
    /// deltas): the one product `x·Wᵀ` is then the whole layer but its bias.
    fn plain_weight<'a>(groups: &[LinearGroup<'a>]) -> Option<ProductWeight<'a>> {
        let (first, _) = groups.first()?;
        let plain = groups
            .iter()
            .all(|(l, _)| l.deltas.is_empty() && l.shares_weight(first) && l.shares_bias(first));
        if !plain {
            return None;
        }
        Some(first.weight.as_product_weight())
    }

    fn forward_groups(groups: &[LinearGroup], x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let batch = dims[0];
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        if groups.iter().map(|(_, n)| n).sum::<usize>() != batch {
            return Err(ModelError::Generation(format!(
                "row groups of {} rows given a batch of {batch}",
                groups.iter().map(|(_, n)| n).sum::<usize>()
            )));
        }
        // Each row of dim 0 is `per` rows of the (rows, in) matrix (t tokens of a prefill).
        let per = rows / batch.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        // The dense products: one per run of groups that share a weight.
        let mut dense = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < groups.len() {
            let (layer, _) = groups[i];
            let mut n = 0;
            while i < groups.len() && groups[i].0.shares_weight(layer) {
                n += groups[i].1 * per;
                i += 1;
            }
            if n > 0 {
                let xs = if n == rows {
                    x2.clone()
                } else {
                    x2.narrow(0, start, n)?
                };
                dense.push(layer.dense(&xs)?);
            }
            start += n;
        }
        let mut y = if dense.len() == 1 {
            dense.swap_remove(0)
        } else {
            Tensor::cat(&dense, 0)?
        };
        if groups.iter().any(|(l, _)| !l.deltas.is_empty()) {
            y = match Self::aligned_deltas(groups) {
                Some(template) => {
                    // One product pair per shared delta for all rows, each row scaled by
                    // its group's coefficients (zero for a group without deltas).
                    for (j, d) in template.iter().enumerate() {
                        let r = d.rank();
                        let mut scales = Vec::with_capacity(groups.len());
                        for &(layer, n) in groups {
                            let s = match layer.deltas.get(j).and_then(LowRankDelta::scale) {
                                Some(s) => s.clone(),
                                None => Tensor::zeros(r, x2.dtype(), x2.device())?,
                            };
                            scales.push(s.unsqueeze(0)?.broadcast_as((n * per, r))?);
                        }
                        let scales = Tensor::cat(&scales, 0)?;
                        y = (y + d.apply_scaled_rows(&x2, &scales)?)?;
                    }
                    y
                }
                None => {
                    // Each group's deltas on its own rows.
                    let mut parts = Vec::with_capacity(groups.len());
                    let mut start = 0;
                    for &(layer, n) in groups {
                        let n = n * per;
                        let xs = x2.narrow(0, start, n)?;
                        let mut ys = y.narrow(0, start, n)?;
                        for d in &layer.deltas {
                            ys = (ys + d.apply(&xs)?)?;
                        }
                        parts.push(ys);
                        start += n;
                    }
                    Tensor::cat(&parts, 0)?
                }
            };
        }
        // One bias for all rows when the groups share it, else each group's on its rows.
        let (first, _) = groups[0];
        let y = if groups.iter().all(|(l, _)| l.shares_bias(first)) {
            match &first.bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        } else {
            let mut parts = Vec::with_capacity(groups.len());
            let mut start = 0;
            for &(layer, n) in groups {
                let n = n * per;
                let ys = y.narrow(0, start, n)?;
                parts.push(match &layer.bias {
                    Some(b) => ys.broadcast_add(b)?,
                    None => ys,
                });
                start += n;
            }
            Tensor::cat(&parts, 0)?
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }

    /// The deltas of the first group that has any, when every group's deltas are the same
    /// factors as those, position by position, each with its own scale (or the group has
    /// none): elites served from one factor set (`a = Vᵀ`, `b = U` shared, `s = c` their
    /// own). Then each position's deltas run as one product pair for all rows.
    pub(crate) fn aligned_deltas<'a>(groups: &[LinearGroup<'a>]) -> Option<&'a [LowRankDelta]> {
        let template = groups
            .iter()
            .map(|(l, _)| l.deltas.as_slice())
            .find(|d| !d.is_empty())?;
        let aligned = groups.iter().all(|(l, _)| {
            l.deltas.is_empty()
                || (l.deltas.len() == template.len()
                    && l.deltas.iter().zip(template).all(|(d, t)| {
                        d.shares_factors(t) && d.scale().is_some() && t.scale().is_some()
                    }))
        });
        aligned.then_some(template)
    }

    /// `x2` (rows, in) times `Wᵀ`, without deltas or bias.
    fn dense(&self, x2: &Tensor) -> Result<Tensor> {
        let rows = x2.dim(0)?;
        match &self.weight {
            Weight::Dense(w) => dense_product(x2, w),
            Weight::Quantized(q, matmul) => {
                match small_batch_product(x2, ProductWeight::Q8_0(q))? {
                    Some(y) => Ok(y),
                    None if rows >= DEQUANTIZE_FROM_ROWS => {
                        dense_product(x2, &q.dequantize(x2.device())?)
                    }
                    None => Ok(matmul.forward(x2)?),
                }
            }
        }
    }
}

impl Weight {
    fn as_product_weight(&self) -> ProductWeight<'_> {
        match self {
            Weight::Dense(w) => ProductWeight::F32(w),
            Weight::Quantized(q, _) => ProductWeight::Q8_0(q),
        }
    }
}

/// `x` (rows, in) times the transpose of `w` (out, in).
pub(crate) fn dense_product(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match small_batch_product(x, ProductWeight::F32(w))? {
        Some(y) => Ok(y),
        None => Ok(x.matmul(&w.t()?)?),
    }
}

/// `x Wᵀ` by [`products`] when it takes them (a small batch on the CPU).
fn small_batch_product(x: &Tensor, w: ProductWeight) -> Result<Option<Tensor>> {
    if !products::applies(x, &[w]) {
        return Ok(None);
    }
    Ok(products::products(x, &[w])?.pop())
}

/// `x` (..., in) as a (rows, in) matrix, and its leading dims.
fn rows_of(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let in_dim = dims.last().copied().unwrap_or(0);
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    Ok((x.reshape((rows, in_dim))?, dims))
}

/// `y` (rows, out) back in the leading dims of the input it came from.
fn with_rows(y: Tensor, input_dims: &[usize]) -> Result<Tensor> {
    let mut dims = input_dims.to_vec();
    if let Some(last) = dims.last_mut() {
        *last = y.dim(1)?;
    }
    Ok(y.reshape(dims)?)
}
