//! Fused CPU kernels for a training pass, with their backward passes: the causal softmax over
//! attention scores, the cross-entropy over the vocabulary, RMSNorm and RoPE.
//!
//! Why: candle composes a softmax from five element-wise ops (max, subtract, exp, sum, divide)
//! and the causal mask and scaling add two more; log-softmax, gather and the weighted mean add
//! as many for the loss. Each op allocates and walks a whole tensor, and these are the largest
//! tensors of a step: the scores are batch × heads × t × t, the logits batch × t × vocab (12 and
//! 16 MiB each for the toy world's batches of 16 sequences of 256 tokens). On the 2-core
//! machine a step spent more time in those passes and their allocations than in the matrix
//! products. Here each direction is one pass per row, rows spread over rayon's threads.
//! RMSNorm (six ops) and RoPE (seven) touch smaller tensors, but they are half the nodes of a
//! layer's graph, and candle's backward pass allocates, zeroes and adds a gradient per node.
//!
//! Every row is computed by one thread in a fixed order, and per-row losses are added in row
//! order, so results do not depend on the number of threads. On devices other than the CPU the
//! functions fall back to candle's composed ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use candle_nn::ops::{log_softmax, softmax};
use rayon::prelude::*;

/// `softmax(scale · scores + causal mask)` over the last dimension.
///
/// `scores` is `(.., t, t)`: row `i` of each `t × t` block holds one query's scores against
/// keys `0..t`, and the query sees keys `0..=i`. The probabilities of the keys it does not see
/// are exactly zero, as with an additive `-inf` mask.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let dims = scores.dims();
    let (t, t_keys) = match dims {
        [.., q, k] => (*q, *k),
        _ => candle_core::bail!("causal_softmax: scores must have at least 2 dims, got {dims:?}"),
    };
    if t != t_keys {
        candle_core::bail!("causal_softmax: scores must be (.., t, t), got {dims:?}");
    }
    if !scores.device().is_cpu() || scores.dtype() != DType::F32 {
        let mask = causal_mask(t, scores.device())?.to_dtype(scores.dtype())?;
        return softmax(&(scores * scale)?.broadcast_add(&mask)?, D::Minus1);
    }
    scores.contiguous()?.apply_op1(CausalSoftmax {
        scale: scale as f32,
        t,
    })
}

/// An additive causal mask: 0 where the key is visible, `-inf` after the query.
pub fn causal_mask(t: usize, device: &candle_core::Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)
}

struct CausalSoftmax {
    scale: f32,
    t: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(storage, layout, self.name())?;
        let (t, scale) = (self.t, self.scale);
        let mut probs = vec![0f32; scores.len()];
        probs
            .par_chunks_mut(t)
            .zip(scores.par_chunks(t))
            .enumerate()
            .for_each(|(row, (p, s))| {
                let seen = row % t + 1;
                let (p, s) = (&mut p[..seen], &s[..seen]);
                let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
                let mut sum = 0f32;
                for (p, &s) in p.iter_mut().zip(s) {
                    *p = (s * scale - max).exp();
                    sum += *p;
                }
                let inv = 1.0 / sum;
                p.iter_mut().for_each(|p| *p *= inv);
            });
        Ok((CpuStorage::F32(probs), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let back = CausalSoftmaxBackward {
            scale: self.scale,
            t: self.t,
        };
        Ok(Some(probs.apply_op2_no_bwd(&grad, &back)?))
    }
}

/// d scores = scale · p ⊙ (g − ⟨p, g⟩) per row, zero on the masked keys.
struct CausalSoftmaxBackward {
    scale: f32,
    t: usize,
}

impl CustomOp2 for CausalSoftmaxBackward {
    fn name(&self) -> &'static str {
        "causal-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        probs: &CpuStorage,
        probs_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let probs = contiguous_f32(probs, probs_layout, self.name())?;
        let grad = contiguous_f32(grad, grad_layout, self.name())?;
        if probs.len() != grad.len() {
            candle_core::bail!(
                "{}: {} probabilities, {} gradients",
                self.name(),
                probs.len(),
                grad.len()
            );
        }
        let (t, scale) = (self.t, self.scale);
        let mut out = vec![0f32; probs.len()];
        out.par_chunks_mut(t)
            .zip(probs.par_chunks(t).zip(grad.par_chunks(t)))
            .enumerate()
            .for_each(|(row, (o, (p, g)))| {
                let seen = row % t + 1;
                let (o, p, g) = (&mut o[..seen], &p[..seen], &g[..seen]);
                let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
                    *o = scale * p * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), probs_layout.shape().clone()))
    }
}

/// The mean of `−log softmax(logits)[target]` over the positions, weighted by `weights`.
///
/// `logits` is `(n, vocab)`, `targets` (u32) and `weights` (f32) are `(n,)`; positions of
/// weight 0 (padding, prompts) do not count. The caller checks that the weights do not sum to
/// zero.
pub fn weighted_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    if targets.dims1()? != n || weights.dims1()? != n {
        candle_core::bail!(
            "cross-entropy: {n} rows of logits, {:?} targets, {:?} weights",
            targets.dims(),
            weights.dims()
        );
    }
    let total = weights
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    if !logits.device().is_cpu() || logits.dtype() != DType::F32 {
        let logp = log_softmax(logits, D::Minus1)?;
        let picked = logp.gather(&targets.reshape((n, 1))?, 1)?.reshape(n)?;
        return (picked * weights)?.sum_all()? * (-1.0 / total as f64);
    }
    let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    if let Some(bad) = targets.iter().find(|&&id| id as usize >= vocab) {
        candle_core::bail!("cross-entropy: target id {bad} is outside the vocabulary of {vocab}");
    }
    let weights = weights.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets,
        weights,
        total,
        vocab,
    })
}

struct CrossEntropy {
    targets: Vec<u32>,
    weights: Vec<f32>,
    total: f32,
    vocab: usize,
}

/// `ln Σ exp(row)`, computed from the row's maximum.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    max + sum.ln()
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "weighted-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let logits = contiguous_f32(storage, layout, self.name())?;
        let per_row: Vec<f32> = logits
            .par_chunks(self.vocab)
            .zip(self.targets.par_iter().zip(self.weights.par_iter()))
            .map(|(row, (&target, &w))| {
                if w == 0.0 {
                    0.0
                } else {
                    w * (log_sum_exp(row) - row[target as usize])
                }
            })
            .collect();
        // Row order, whatever the threads: the loss is the same bits on any machine.
        let loss = per_row.iter().sum::<f32>() / self.total;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let scale = grad.to_dtype(DType::F32)?.to_scalar::<f32>()? / self.total;
        let back = CrossEntropyBackward {
            targets: &self.targets,
            weights: &self.weights,
            scale,
            vocab: self.vocab,
        };
        let grad_logits = logits.apply_op1_no_bwd(&back)?;
        Ok(Some(grad_logits))
    }
}

/// d logits = scale · w · (softmax(row) − onehot(target)) per row.
struct CrossEntropyBackward<'a> {
    targets: &'a [u32],
    weights: &'a [f32],
    scale: f32,
    vocab: usize,
}

impl CustomOp1 for CrossEntropyBackward<'_> {
    fn name(&self) -> &'static str {
        "weighted-cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let logits = contiguous_f32(storage, layout, self.name())?;
        let mut out = vec![0f32; logits.len()];
        out.par_chunks_mut(self.vocab)
            .zip(logits.par_chunks(self.vocab))
            .zip(self.targets.par_iter().zip(self.weights.par_iter()))
            .for_each(|((o, row), (&target, &w))| {
                if w == 0.0 {
                    return;
                }
                let lse = log_sum_exp(row);
                let factor = self.scale * w;
                for (o, &x) in o.iter_mut().zip(row) {
                    *o = factor * (x - lse).exp();
                }
                o[target as usize] -= factor;
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension; `weight` is `(hidden,)`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let hidden = weight.dims1()?;
    if x.dim(D::Minus1)? != hidden {
        candle_core::bail!("rms_norm: x is {:?}, the weight ({hidden},)", x.dims());
    }
    if !x.device().is_cpu() || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        return x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(weight);
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    /// `1 / sqrt(mean(row²) + eps)`.
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ms = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout, self.name())?;
        let w = contiguous_f32(w, w_layout, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(w.len())
            .zip(x.par_chunks(w.len()))
            .for_each(|(y, x)| {
                let r = self.inv_rms(x);
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * r * w;
                }
            });
        Ok((CpuStorage::F32(y), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let hidden = w.dims1()?;
        let rows = x.elem_count() / hidden;
        let back = RmsNormBackward { eps: self.eps };
        // One output holds both gradients: rows of dx, then the row of dw.
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &back)?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(hidden)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Rows per block of the weight gradient's partial sums: fixed, so the sum is the same on any
/// number of threads.
const RMS_NORM_BLOCK: usize = 32;

/// With `u = g ⊙ w`, `r = 1 / rms(x)`: `dx = r·u − x·r³·mean(u ⊙ x)`, `dw = Σ_rows g ⊙ x·r`.
struct RmsNormBackward {
    eps: f32,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout, self.name())?;
        let w = contiguous_f32(w, w_layout, self.name())?;
        let g = contiguous_f32(g, g_layout, self.name())?;
        let h = w.len();
        if x.len() != g.len() || h == 0 || !x.len().is_multiple_of(h) {
            candle_core::bail!("{}: x {}, g {}, weight {h}", self.name(), x.len(), g.len());
        }
        let rows = x.len() / h;
        let norm = RmsNorm { eps: self.eps };
        let mut out = vec![0f32; (rows + 1) * h];
        let (dx, _) = out.split_at_mut(rows * h);
        let block = RMS_NORM_BLOCK * h;
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block).zip(g.par_chunks(block)))
            .map(|(dx, (x, g))| {
                let mut dw = vec![0f32; h];
                for ((dx, x), g) in dx.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                    let r = norm.inv_rms(x);
                    let mean_ux = g
                        .iter()
                        .zip(w)
                        .zip(x)
                        .map(|((g, w), x)| g * w * x)
                        .sum::<f32>()
                        / h as f32;
                    let r3 = r * r * r;
                    for j in 0..h {
                        dx[j] = r * g[j] * w[j] - x[j] * r3 * mean_ux;
                        dw[j] += g[j] * x[j] * r;
                    }
                }
                dw
            })
            .collect();
        let dw = &mut out[rows * h..];
        for partial in &partials {
            dw.iter_mut().zip(partial).for_each(|(d, p)| *d += p);
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[rows + 1, h])))
    }
}

/// Rotary position embedding, half-split as HF Llama (candle's `rope_slow`): for `x` of shape
/// `(b, heads, t, d)` and `cos`, `sin` of `(t, d / 2)`, the first and second halves of each
/// row become `x1·cos − x2·sin` and `x2·cos + x1·sin`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    if cos.dims() != [t, d / 2] || sin.dims() != [t, d / 2] || !d.is_multiple_of(2) {
        candle_core::bail!(
            "rope: x {:?} needs cos and sin of ({t}, {}), got {:?} and {:?}",
            x.dims(),
            d / 2,
            cos.dims(),
            sin.dims()
        );
    }
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return candle_nn::rotary_emb::rope_slow(x, cos, sin);
    }
    let table = |m: &Tensor| -> candle_core::Result<Vec<f32>> {
        m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    };
    x.contiguous()?.apply_op1(Rope {
        cos: table(cos)?,
        sin: table(sin)?,
        t,
        sin_sign: 1.0,
    })
}

struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    t: usize,
    /// −1 rotates the other way: the backward pass of the rotation (its transpose).
    sin_sign: f32,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let half = self.cos.len() / self.t;
        let d = 2 * half;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each(|(row, (y, x))| {
                let pos = row % self.t;
                let (cos, sin) = (
                    &self.cos[pos * half..][..half],
                    &self.sin[pos * half..][..half],
                );
                let (x1, x2) = x.split_at(half);
                let (y1, y2) = y.split_at_mut(half);
                for i in 0..half {
                    let s = self.sin_sign * sin[i];
                    y1[i] = x1[i] * cos[i] - x2[i] * s;
                    y2[i] = x2[i] * cos[i] + x1[i] * s;
                }
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            t: self.t,
            sin_sign: -self.sin_sign,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// The elements of an f32 storage in layout order, which must be contiguous.
fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expected f32, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "element {i}: {x} vs {y}"
            );
        }
    }

    /// The fused and composed outputs agree, and so do the gradients of `⟨output, upstream⟩`
    /// with respect to each of `vars` (values to 1e-6, gradients to `grad_tol`).
    fn same_values_and_gradients(
        fused: Tensor,
        composed: Tensor,
        upstream: &Tensor,
        vars: &[&Var],
        grad_tol: f32,
    ) {
        close(&fused, &composed, 1e-6);
        let grads = |y: Tensor| {
            (y * upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (g_fused, g_composed) = (grads(fused), grads(composed));
        for var in vars {
            close(
                g_fused.get(var.as_tensor()).unwrap(),
                g_composed.get(var.as_tensor()).unwrap(),
                grad_tol,
            );
        }
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        // A small LCG: the values only have to be varied, not good random numbers.
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// candle's composed ops: what the fused kernels replace.
    fn composed_softmax(scores: &Tensor, scale: f64) -> Tensor {
        let t = scores.dim(D::Minus1).unwrap();
        let mask = causal_mask(t, scores.device()).unwrap();
        softmax(
            &(scores * scale).unwrap().broadcast_add(&mask).unwrap(),
            D::Minus1,
        )
        .unwrap()
    }

    #[test]
    fn causal_softmax_and_its_gradient_match_the_composed_ops() {
        let scores = Var::from_tensor(&random(&[2, 3, 7, 7], 1)).unwrap();
        let upstream = random(&[2, 3, 7, 7], 2);
        let fused = causal_softmax(scores.as_tensor(), 0.35).unwrap();
        let composed = composed_softmax(scores.as_tensor(), 0.35);
        let row = fused.i((0, 0, 2)).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            row[3..].iter().all(|&p| p == 0.0),
            "keys after the query are seen: {row:?}"
        );

        same_values_and_gradients(fused, composed, &upstream, &[&scores], 1e-5);
    }

    #[test]
    fn cross_entropy_and_its_gradient_match_the_composed_ops() {
        let logits = Var::from_tensor(&random(&[6, 11], 3)).unwrap();
        let targets = Tensor::new(&[0u32, 10, 3, 3, 7, 1], &Device::Cpu).unwrap();
        let weights = Tensor::new(&[1f32, 0.0, 1.0, 2.0, 0.0, 1.0], &Device::Cpu).unwrap();
        let fused = weighted_cross_entropy(logits.as_tensor(), &targets, &weights).unwrap();

        let logp = log_softmax(logits.as_tensor(), D::Minus1).unwrap();
        let picked = logp
            .gather(&targets.reshape((6, 1)).unwrap(), 1)
            .unwrap()
            .reshape(6)
            .unwrap();
        let composed = ((picked * &weights).unwrap().sum_all().unwrap() * (-1.0 / 5.0)).unwrap();
        let upstream = Tensor::new(3f32, &Device::Cpu).unwrap();
        same_values_and_gradients(fused, composed, &upstream, &[&logits], 1e-6);
    }

    #[test]
    fn rms_norm_and_its_gradients_match_the_composed_ops() {
        let x = Var::from_tensor(&random(&[3, 70, 8], 6)).unwrap();
        let w = Var::from_tensor(&random(&[8], 7)).unwrap();
        let upstream = random(&[3, 70, 8], 8);
        let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let ms = x
            .as_tensor()
            .sqr()
            .unwrap()
            .mean_keepdim(D::Minus1)
            .unwrap();
        let composed = x
            .as_tensor()
            .broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(w.as_tensor())
            .unwrap();
        same_values_and_gradients(fused, composed, &upstream, &[&x, &w], 1e-5);
    }

    #[test]
    fn rope_and_its_gradient_match_candles_rope_slow() {
        let x = Var::from_tensor(&random(&[2, 3, 5, 8], 9)).unwrap();
        let cos = random(&[5, 4], 10);
        let sin = random(&[5, 4], 11);
        let upstream = random(&[2, 3, 5, 8], 12);
        let fused = rope(x.as_tensor(), &cos, &sin).unwrap();
        let composed = candle_nn::rotary_emb::rope_slow(x.as_tensor(), &cos, &sin).unwrap();
        same_values_and_gradients(fused, composed, &upstream, &[&x], 1e-6);
    }

    #[test]
    fn bad_shapes_and_targets_are_errors() {
        let scores = random(&[2, 3, 4], 4);
        let err = causal_softmax(&scores, 1.0).unwrap_err().to_string();
        assert!(err.contains("(.., t, t)"), "{err}");
        let logits = random(&[2, 5], 5);
        let weights = Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
        let err = weighted_cross_entropy(&logits, &targets, &weights)
            .unwrap_err()
            .to_string();
        assert!(err.contains("target id 5"), "{err}");
    }
}
