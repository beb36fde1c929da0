//! Attention of a few new tokens per row over a [`KvCache`](crate::KvCache), computed on the
//! CPU straight from the cache's memory: the kernel every decode step runs.

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::simd::{self, dot, fma, Simd};

/// Attention of a few new queries per row over the slots a
/// [`KvCache::append`](crate::KvCache::append) returned, on the CPU in f32, without a mask
/// tensor: row `r` attends to its slots `padding[r]..=slot` (a padding query only to itself,
/// as the model's mask does).
///
/// Why not two batched matrix products: for a decode step they are `batch x kv_heads` tiny
/// products (3 x len x 64 for SmolLM2), which candle runs one gemm call at a time, each
/// packing its operands; then softmax and mask work on padded score tensors (a decode step
/// at batch 32 took twice as long that way: 473 vs 228 ms, perf: most of it in gemm calls and
/// packing). This reads every key and value from memory once, in place in the cache, for all
/// the query heads that share it, and splits the work over rows and KV heads.
///
/// `q`: `(batch, kv_heads, group * t, head_dim)` (query head `g * group + i` of KV head `g`,
/// then position), not yet scaled; `k`, `v`: `(batch, kv_heads, len, head_dim)` with unit
/// stride in the last dimension (narrowed cache views). Returns the attention output in `q`'s
/// shape.
pub(crate) fn cached_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    padding: &[usize],
    t: usize,
) -> Result<Tensor> {
    let (b, _, rows, d) = q.dims4()?;
    if padding.len() != b || t == 0 || !rows.is_multiple_of(t) {
        return Err(ModelError::Generation(format!(
            "cached attention: {b} rows with {} paddings and {rows} query rows for {t} new \
             tokens",
            padding.len()
        )));
    }
    let op = CachedAttention {
        padding: padding.to_vec(),
        t,
        scale: 1.0 / (d as f32).sqrt(),
    };
    Ok(q.contiguous()?.apply_op3_no_bwd(k, v, &op)?)
}

struct CachedAttention {
    padding: Vec<usize>,
    /// New tokens per row: query row `i * t + j` sits at slot `len - t + j`.
    t: usize,
    scale: f32,
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "cached-attention"
    }

    fn cpu_fwd(
        &self,
        q_storage: &CpuStorage,
        q_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, cache) = match (q_storage, k_storage, v_storage) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                (q, CacheData::F32(k, v))
            }
            (CpuStorage::F32(q), CpuStorage::F16(k), CpuStorage::F16(v)) => {
                (q, CacheData::F16(k, v))
            }
            _ => candle_core::bail!(
                "cached attention runs on f32 queries over an f32 or f16 cache, got {:?} over {:?}",
                q_storage.dtype(),
                k_storage.dtype()
            ),
        };
        let [b, kv_heads, rows, d] = *q_layout.dims() else {
            candle_core::bail!("cached attention: q must be 4-d, got {:?}", q_layout.dims());
        };
        let [kb, kh, len, kd] = *k_layout.dims() else {
            candle_core::bail!("cached attention: k must be 4-d, got {:?}", k_layout.dims());
        };
        if (kb, kh, kd) != (b, kv_heads, d) || v_layout.dims() != k_layout.dims() {
            candle_core::bail!(
                "cached attention: q {:?}, k {:?} and v {:?} do not match",
                q_layout.dims(),
                k_layout.dims(),
                v_layout.dims()
            );
        }
        if !q_layout.is_contiguous() || k_layout.stride()[3] != 1 || v_layout.stride()[3] != 1 {
            candle_core::bail!("cached attention needs contiguous q and unit-stride head dims");
        }
        if len < self.t || self.padding.len() != b {
            candle_core::bail!(
                "cached attention: {} new tokens in {len} slots, {} paddings for {b} rows",
                self.t,
                self.padding.len()
            );
        }
        let q = &q[q_layout.start_offset()..];
        let group = rows / self.t;
        let offset = len - self.t;
        let simd = Simd::detect();
        let mut out = vec![0f32; b * kv_heads * rows * d];
        let task = |(index, out): (usize, &mut [f32])| {
            let (r, g) = (index / kv_heads, index % kv_heads);
            let pad = self.padding[r];
            // An f16 cache is widened one head at a time into f32 buffers that stay in L2
            // (one pair per thread, reused): memory is read at half width, and the kernel
            // below stays one f32 kernel.
            WIDENED.with_borrow_mut(|widened| {
                let heads = match &cache {
                    CacheData::F32(k, v) => {
                        let (keys, values) = (Strided::new(k, k_layout), Strided::new(v, v_layout));
                        Heads {
                            k: keys.head(r, g),
                            v: values.head(r, g),
                            k_stride: keys.row_stride,
                            v_stride: values.row_stride,
                            d,
                        }
                    }
                    CacheData::F16(k, v) => {
                        let (keys, values) = (Strided::new(k, k_layout), Strided::new(v, v_layout));
                        widen_head(simd, &keys, r, g, len, d, &mut widened.0);
                        widen_head(simd, &values, r, g, len, d, &mut widened.1);
                        Heads {
                            k: &widened.0,
                            v: &widened.1,
                            k_stride: d,
                            v_stride: d,
                            d,
                        }
                    }
                };
                let q = &q[index * rows * d..][..rows * d];
                let mut scores = vec![0f32; group * len];
                for i in 0..self.t {
                    let slot = offset + i;
                    let first = if slot < pad { slot } else { pad };
                    let query = Query {
                        q,
                        row0: i,
                        row_step: self.t,
                        group,
                        first,
                        n: slot + 1 - first,
                        scale: self.scale,
                    };
                    attend(simd, &heads, &query, &mut scores, out);
                }
            });
        };
        let chunk = rows * d;
        if rayon::current_num_threads() > 1 && b * kv_heads > 1 {
            out.par_chunks_mut(chunk).enumerate().for_each(task);
        } else {
            out.chunks_mut(chunk).enumerate().for_each(task);
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from_dims(&[b, kv_heads, rows, d]),
        ))
    }
}

/// The cache's keys and values as the kernel received them.
enum CacheData<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

thread_local! {
    /// The keys and values of the head a thread attends over, widened from an f16 cache.
    static WIDENED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Slots `0..len` of row `r`, head `g` of an f16 cache, as packed f32 rows of `d`, into
/// `out` (resized to `len · d`).
fn widen_head(
    simd: Simd,
    heads: &Strided<f16>,
    r: usize,
    g: usize,
    len: usize,
    d: usize,
    out: &mut Vec<f32>,
) {
    let src = heads.head(r, g);
    out.resize(len * d, 0.0);
    for (slot, out) in out.chunks_exact_mut(d).enumerate() {
        widen(simd, &src[slot * heads.row_stride..][..d], out);
    }
}

/// `out[i] = src[i]` as f32, 8 at a time with F16C where the CPU has it.
fn widen(simd: Simd, src: &[f16], out: &mut [f32]) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma { f16c: true } => {
            // SAFETY: `Simd::detect` found F16C (and AVX) on this CPU.
            unsafe { widen_f16c(src, out) }
        }
        _ => out.iter_mut().zip(src).for_each(|(o, s)| *o = s.to_f32()),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16c(src: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(out.len());
    let full = n - n % 8;
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 <= n, within both slices; the loads and stores are unaligned.
        unsafe {
            let halves = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(halves));
        }
    }
    for i in full..n {
        out[i] = src[i].to_f32();
    }
}

/// A (batch, heads, slots, head_dim) view with unit stride in the last dimension.
struct Strided<'a, T> {
    data: &'a [T],
    start: usize,
    batch_stride: usize,
    head_stride: usize,
    row_stride: usize,
}

impl<'a, T> Strided<'a, T> {
    fn new(data: &'a [T], layout: &Layout) -> Self {
        let stride = layout.stride();
        Self {
            data,
            start: layout.start_offset(),
            batch_stride: stride[0],
            head_stride: stride[1],
            row_stride: stride[2],
        }
    }

    /// The slots of row `r`, head `g`, from slot 0 on.
    fn head(&self, r: usize, g: usize) -> &'a [T] {
        &self.data[self.start + r * self.batch_stride + g * self.head_stride..]
    }
}

/// The keys and values of one row's KV head.
struct Heads<'a> {
    k: &'a [f32],
    v: &'a [f32],
    k_stride: usize,
    v_stride: usize,
    d: usize,
}

/// The `group` query rows `row0, row0 + row_step, ...` of `q` (each `d` wide) that see the
/// same slots, `first..first + n`.
struct Query<'a> {
    q: &'a [f32],
    row0: usize,
    row_step: usize,
    group: usize,
    first: usize,
    n: usize,
    scale: f32,
}

/// Runs [`attend_generic`] compiled for the best instructions the CPU has: the workspace
/// builds for baseline x86-64, where the loops below get 4-wide SSE without FMA.
fn attend(simd: Simd, heads: &Heads, query: &Query, scores: &mut [f32], out: &mut [f32]) {
    match simd {
        Simd::Baseline => attend_generic::<false>(heads, query, scores, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Simd::detect` found AVX2 and FMA on this CPU.
        Simd::Avx2Fma { .. } => unsafe { attend_avx2_fma(heads, query, scores, out) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2_fma(heads: &Heads, query: &Query, scores: &mut [f32], out: &mut [f32]) {
    attend_generic::<true>(heads, query, scores, out)
}

/// Softmax of the scaled dot products of each query with the keys, then the weighted sum of
/// the values, written to the query's rows of `out`; head sizes of 32, 64 and 128 get a copy
/// of the kernel compiled for that size (see [`attend_fixed`]).
#[inline(always)]
fn attend_generic<const FMA: bool>(
    heads: &Heads,
    query: &Query,
    scores: &mut [f32],
    out: &mut [f32],
) {
    match heads.d {
        32 => attend_fixed::<FMA, 32>(heads, query, scores, out),
        64 => attend_fixed::<FMA, 64>(heads, query, scores, out),
        128 => attend_fixed::<FMA, 128>(heads, query, scores, out),
        _ => attend_any::<FMA>(heads, query, scores, out),
    }
}

/// [`attend_generic`] for heads of `D` values. Knowing `D`, the compiler keeps a query's whole
/// output row in registers while it adds up the values (8 AVX registers for `D` = 64), where
/// the general kernel loads and stores it for every slot; and each row's softmax uses the
/// branch-free [`exp_nonpositive`], which vectorises, instead of a libm call per score.
#[inline(always)]
fn attend_fixed<const FMA: bool, const D: usize>(
    heads: &Heads,
    query: &Query,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (n, group) = (query.n, query.group);
    let row = |i: usize| (query.row0 + i * query.row_step) * D;
    let fixed = |s: &[f32], at: usize| -> [f32; D] {
        let mut a = [0f32; D];
        a.copy_from_slice(&s[at..][..D]);
        a
    };
    let scores = &mut scores[..group * n];
    // Query by query: the first pulls this head's keys into L2, the others find them there.
    for (i, scores) in scores.chunks_exact_mut(n).enumerate() {
        let q = fixed(query.q, row(i));
        let keys = &heads.k[query.first * heads.k_stride..];
        score_keys::<FMA, D>(&q, keys, heads.k_stride, query.scale, scores);
    }
    softmax_rows::<FMA>(scores, n);
    for (i, probs) in scores.chunks_exact(n).enumerate() {
        let mut acc = [0f32; D];
        for (j, &p) in probs.iter().enumerate() {
            let value = &heads.v[(query.first + j) * heads.v_stride..][..D];
            for (a, &v) in acc.iter_mut().zip(value) {
                *a = fma::<FMA>(p, v, *a);
            }
        }
        out[row(i)..][..D].copy_from_slice(&acc);
    }
}

/// `scores[j] = scale * q·keys[j * stride..][..D]` for every score; with `FMA` (which only
/// [`attend_avx2_fma`] instantiates) eight keys at a time (see [`simd::dots`]).
#[inline(always)]
fn score_keys<const FMA: bool, const D: usize>(
    q: &[f32; D],
    keys: &[f32],
    stride: usize,
    scale: f32,
    scores: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `attend_generic::<true>` runs only inside `attend_avx2_fma`, which
        // `Simd::detect` allows only where the CPU has AVX2 and FMA.
        unsafe { simd::dots_avx2_fma(q, keys, stride, scale, scores) };
        return;
    }
    simd::dots_generic::<FMA>(q, keys, stride, scale, scores);
}

/// [`attend_generic`] for any head size.
#[inline(always)]
fn attend_any<const FMA: bool>(heads: &Heads, query: &Query, scores: &mut [f32], out: &mut [f32]) {
    let (d, n, group) = (heads.d, query.n, query.group);
    let row = |i: usize| (query.row0 + i * query.row_step) * d;
    let scores = &mut scores[..group * n];
    for (i, scores) in scores.chunks_exact_mut(n).enumerate() {
        let q = &query.q[row(i)..][..d];
        for (j, score) in scores.iter_mut().enumerate() {
            let key = &heads.k[(query.first + j) * heads.k_stride..][..d];
            *score = dot::<FMA>(q, key) * query.scale;
        }
    }
    softmax_rows::<FMA>(scores, n);
    for i in 0..group {
        out[row(i)..][..d].fill(0.0);
    }
    for j in 0..n {
        let value = &heads.v[(query.first + j) * heads.v_stride..][..d];
        for i in 0..group {
            axpy::<FMA>(scores[i * n + j], value, &mut out[row(i)..][..d]);
        }
    }
}

/// Each row of `n` scores becomes its softmax, as a softmax followed by a product with the
/// values would use.
#[inline(always)]
fn softmax_rows<const FMA: bool>(scores: &mut [f32], n: usize) {
    for probs in scores.chunks_exact_mut(n) {
        let max = lanes8(probs, f32::NEG_INFINITY, f32::max);
        for p in probs.iter_mut() {
            *p = exp_nonpositive::<FMA>(*p - max);
        }
        let inv = 1.0 / lanes8(probs, 0.0, |a, b| a + b);
        for p in probs.iter_mut() {
            *p *= inv;
        }
    }
}

/// Folds `values` with `op` in eight independent lanes (one SIMD register), then the lanes.
#[inline(always)]
fn lanes8(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(init, |a, &v| op(a, v));
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = op(*a, v);
        }
    }
    let lanes = op(
        op(op(acc[0], acc[4]), op(acc[1], acc[5])),
        op(op(acc[2], acc[6]), op(acc[3], acc[7])),
    );
    op(lanes, tail)
}

/// `e^x` for `x <= 0` (a score minus its row's maximum), within ~2 ulp: Cody-Waite reduction
/// to `x = k·ln 2 + r`, Cephes' degree-6 polynomial for `e^r`, and `2^k` built from its
/// exponent bits. Branch-free, so a loop over a row vectorises; below -87 it returns
/// `e^-87` (~1.6e-38) instead of underflowing.
#[inline(always)]
fn exp_nonpositive<const FMA: bool>(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let k = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = fma::<FMA>(k, -LN2_LO, fma::<FMA>(k, -LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = fma::<FMA>(p, r, 1.398_199_9e-3);
    p = fma::<FMA>(p, r, 8.333_452e-3);
    p = fma::<FMA>(p, r, 4.166_579_6e-2);
    p = fma::<FMA>(p, r, 1.666_666_5e-1);
    p = fma::<FMA>(p, r, 0.5);
    let e_r = fma::<FMA>(p, r * r, r) + 1.0;
    // k is in [-126, 0] here: 2^k is a normal number.
    let two_k = f32::from_bits(((k as i32 + 127) as u32) << 23);
    e_r * two_k
}

/// `out += p * x`.
#[inline(always)]
fn axpy<const FMA: bool>(p: f32, x: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = fma::<FMA>(p, x, *o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The attention `cached_attention` computes, in f64, one query at a time.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: (usize, usize, usize, usize, usize),
        padding: &[usize],
        t: usize,
    ) -> Vec<f32> {
        let (b, heads, rows, len, d) = dims;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0f32; b * heads * rows * d];
        for r in 0..b {
            for g in 0..heads {
                let kv = |data: &[f32], slot: usize, x: usize| {
                    data[((r * heads + g) * len + slot) * d + x] as f64
                };
                for row in 0..rows {
                    let slot = len - t + row % t;
                    let first = slot.min(padding[r]);
                    let at = ((r * heads + g) * rows + row) * d;
                    let scores: Vec<f64> = (first..=slot)
                        .map(|s| (0..d).map(|x| q[at + x] as f64 * kv(k, s, x)).sum::<f64>())
                        .map(|dot| dot * scale)
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for x in 0..d {
                        let sum: f64 = (first..=slot)
                            .zip(&weights)
                            .map(|(s, w)| w * kv(v, s, x))
                            .sum();
                        out[at + x] = (sum / total) as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_plain_softmax_attention_for_every_kernel_shape() {
        // Head sizes with a kernel of their own and one without; slot counts below, at and
        // around multiples of the eight keys the AVX2 kernel scores at a time.
        for d in [32, 64, 128, 24] {
            for len in [1, 7, 8, 9, 23, 40] {
                for t in [1, 2] {
                    if t > len {
                        continue;
                    }
                    let (b, heads, group) = (2, 2, 3);
                    let rows = group * t;
                    let padding = [0, len / 3];
                    let dev = &Device::Cpu;
                    let q = Tensor::randn(0f32, 1., (b, heads, rows, d), dev).unwrap();
                    let k = Tensor::randn(0f32, 1., (b, heads, len, d), dev).unwrap();
                    let v = Tensor::randn(0f32, 1., (b, heads, len, d), dev).unwrap();
                    let ours = cached_attention(&q, &k, &v, &padding, t).unwrap();
                    let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let want = reference(
                        &flat(&q),
                        &flat(&k),
                        &flat(&v),
                        (b, heads, rows, len, d),
                        &padding,
                        t,
                    );
                    for (i, (a, w)) in flat(&ours).iter().zip(&want).enumerate() {
                        assert!(
                            (a - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "d {d}, len {len}, t {t}: element {i} is {a}, want {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp_nonpositive_is_within_a_few_ulp_of_libm() {
        let mut x = 0.0f32;
        while x > -100.0 {
            let (ours, libm) = (exp_nonpositive::<false>(x), x.exp());
            let want = libm.max((-87.0f32).exp());
            assert!(
                (ours - want).abs() <= 4.0 * f32::EPSILON * want,
                "e^{x}: {ours} vs {want}"
            );
            x -= 0.0137;
        }
        assert_eq!(exp_nonpositive::<true>(0.0), 1.0);
    }
}
