//! Low-rank additive deltas: running `W + b·diag(s)·a` without forming it.
//!
//! A [`LowRankDelta`] is `ΔW = b · diag(s) · a` for an (out, in) matrix, with `a` (r, in),
//! `b` (out, r) and an optional scale `s` (r). A linear layer with deltas computes
//! `y = x·Wᵀ + Σ ((x·aᵀ) ⊙ s)·bᵀ`: `2·r·(in + out)` FLOP per row instead of materialising
//! `W + ΔW`, and the base's dense `W` is shared, not copied. An embedding with deltas looks
//! up `E[id] + (b[id] ⊙ s)·a`.
//!
//! A [`ModelDelta`] names the deltas and replaced tensors of a whole model, in the
//! checkpoint's tensor names; [`Llama::with_delta`](crate::Llama::with_delta) builds the
//! model that shares every other tensor with its base. swarm-serve uses it to serve an
//! elite straight from the experts' SVD factors (`a = Vᵀ_k`, `b = U_k`, `s = c_k`), without
//! the matrices of the factors ever being copied.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::linear::dense_product;

/// `ΔW = b · diag(s) · a` for an (out, in) matrix.
#[derive(Debug, Clone)]
pub struct LowRankDelta {
    /// (r, in)
    a: Tensor,
    /// (r), or none for all ones.
    scale: Option<Tensor>,
    /// (out, r)
    b: Tensor,
}

impl LowRankDelta {
    /// `ΔW = b · a` with `a` (r, in) and `b` (out, r).
    pub fn new(a: Tensor, b: Tensor) -> Result<Self> {
        Self::build(a, None, b)
    }

    /// `ΔW = b · diag(scale) · a`, with `scale` (r): the scale is applied to the r-wide
    /// intermediate, so `a` and `b` can be shared by deltas that differ only in it.
    pub fn scaled(a: Tensor, scale: Tensor, b: Tensor) -> Result<Self> {
        Self::build(a, Some(scale), b)
    }

    fn build(a: Tensor, scale: Option<Tensor>, b: Tensor) -> Result<Self> {
        let bad = |message: String| ModelError::tensor("low-rank delta", message);
        let (r, _) = a
            .dims2()
            .map_err(|_| bad(format!("`a` must be (r, in), got {:?}", a.dims())))?;
        let (_, rb) = b
            .dims2()
            .map_err(|_| bad(format!("`b` must be (out, r), got {:?}", b.dims())))?;
        if rb != r {
            return Err(bad(format!(
                "`a` has rank {r} ({:?}) but `b` has rank {rb} ({:?})",
                a.dims(),
                b.dims()
            )));
        }
        if let Some(s) = &scale {
            if s.dims() != [r] {
                return Err(bad(format!(
                    "the scale must be ({r}) like the rank, got {:?}",
                    s.dims()
                )));
            }
        }
        if a.dtype() != b.dtype() || scale.as_ref().is_some_and(|s| s.dtype() != a.dtype()) {
            return Err(bad("`a`, `b` and the scale must have one dtype".to_string()));
        }
        Ok(Self { a, scale, b })
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// (out, in) of the matrix it changes.
    pub fn shape(&self) -> (usize, usize) {
        (self.b.dims()[0], self.a.dims()[1])
    }

    /// Bytes of its tensors (shared tensors counted in full).
    pub fn size_in_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        bytes(&self.a) + bytes(&self.b) + self.scale.as_ref().map_or(0, bytes)
    }

    /// `ΔW` as a dense (out, in) matrix (tests, checks).
    pub fn dense(&self) -> Result<Tensor> {
        let b = match &self.scale {
            Some(s) => self.b.broadcast_mul(&s.unsqueeze(0)?)?,
            None => self.b.clone(),
        };
        Ok(b.matmul(&self.a)?)
    }

    /// On `device` in `dtype` (no copy when already there).
    pub(crate) fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        let conv = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(dtype)?) };
        Ok(Self {
            a: conv(&self.a)?.contiguous()?,
            scale: self.scale.as_ref().map(conv).transpose()?,
            b: conv(&self.b)?.contiguous()?,
        })
    }

    /// `x (rows, in) -> ((x·aᵀ) ⊙ s)·bᵀ (rows, out)`.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let h = dense_product(x, &self.a)?;
        let h = match &self.scale {
            Some(s) => h.broadcast_mul(s)?,
            None => h,
        };
        dense_product(&h, &self.b)
    }

    /// The scale `s` (r), if any.
    pub(crate) fn scale(&self) -> Option<&Tensor> {
        self.scale.as_ref()
    }

    /// Whether `other` is built on the same `a` and `b` tensors (not copies): the deltas of
    /// elites served from one factor set differ only in their scales.
    pub(crate) fn shares_factors(&self, other: &LowRankDelta) -> bool {
        self.a.id() == other.a.id() && self.b.id() == other.b.id()
    }

    /// `x (rows, in) -> ((x·aᵀ) ⊙ S)·bᵀ` with a scale per row, `scales` (rows, r): the
    /// deltas of several elites that share `a` and `b` in one pair of products, each row
    /// with its elite's scale (the scale of this delta is not used).
    pub(crate) fn apply_scaled_rows(&self, x: &Tensor, scales: &Tensor) -> Result<Tensor> {
        let h = (dense_product(x, &self.a)? * scales)?;
        dense_product(&h, &self.b)
    }

    /// Rows `ids` of `ΔW`: `(b[ids] ⊙ s)·a`, (n, in) (an embedding lookup).
    pub(crate) fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let h = self.b.index_select(ids, 0)?;
        let h = match &self.scale {
            Some(s) => h.broadcast_mul(s)?,
            None => h,
        };
        Ok(h.matmul(&self.a)?)
    }
}

/// What turns a base model into another of the same architecture without copying the base:
/// low-rank deltas added to named matrices, and named tensors replaced (typically the 1-D
/// ones, norms and biases, which are small). Names are the checkpoint's
/// (`model.layers.3.mlp.up_proj.weight`); see [`Llama::with_delta`](crate::Llama::with_delta).
#[derive(Debug, Clone, Default)]
pub struct ModelDelta {
    low_rank: BTreeMap<String, Vec<LowRankDelta>>,
    replaced: BTreeMap<String, Tensor>,
}

impl ModelDelta {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `delta` to matrix `name` (several deltas on one matrix add up).
    pub fn add_low_rank(&mut self, name: impl Into<String>, delta: LowRankDelta) {
        self.low_rank.entry(name.into()).or_default().push(delta);
    }

    /// Replaces tensor `name` by `tensor` (same shape).
    pub fn replace(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.replaced.insert(name.into(), tensor);
    }

    /// The deltas, by matrix name.
    pub fn low_rank(&self) -> &BTreeMap<String, Vec<LowRankDelta>> {
        &self.low_rank
    }

    /// The replaced tensors, by name.
    pub fn replaced(&self) -> &BTreeMap<String, Tensor> {
        &self.replaced
    }

    /// The sum of every matrix's delta ranks.
    pub fn total_rank(&self) -> usize {
        self.low_rank
            .values()
            .flatten()
            .map(LowRankDelta::rank)
            .sum()
    }

    /// Bytes of the tensors it holds (tensors shared with other deltas counted in full).
    pub fn size_in_bytes(&self) -> usize {
        let deltas: usize = self
            .low_rank
            .values()
            .flatten()
            .map(LowRankDelta::size_in_bytes)
            .sum();
        let replaced: usize = self
            .replaced
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        deltas + replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn apply_and_rows_match_the_dense_delta() {
        // a (2, 3), b (4, 2), s (2).
        let a = t(&[1., 2., 3., -1., 0., 0.5], &[2, 3]);
        let b = t(&[1., 0., 0., 1., 2., -1., 0.5, 0.5], &[4, 2]);
        let s = t(&[2., -3.], &[2]);
        let d = LowRankDelta::scaled(a, s, b).unwrap();
        assert_eq!((d.rank(), d.shape()), (2, (4, 3)));
        let dense = d.dense().unwrap();
        let x = t(&[0.3, -1.0, 2.0, 1.0, 1.0, 1.0], &[2, 3]);
        let want = x.matmul(&dense.t().unwrap()).unwrap();
        let diff = max_abs_diff(&want, &d.apply(&x).unwrap());
        assert!(diff < 1e-5, "{diff}");
        let ids = Tensor::new(&[3u32, 0], &Device::Cpu).unwrap();
        let want = dense.index_select(&ids, 0).unwrap();
        let diff = max_abs_diff(&want, &d.rows(&ids).unwrap());
        assert!(diff < 1e-5, "{diff}");
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn mismatched_shapes_are_named_errors() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((4, 5), DType::F32, &Device::Cpu).unwrap();
        let err = LowRankDelta::new(a.clone(), b).unwrap_err().to_string();
        assert!(err.contains("rank 2") && err.contains("rank 5"), "{err}");
        let b = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
        let s = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(LowRankDelta::scaled(a, s, b).is_err());
    }
}
