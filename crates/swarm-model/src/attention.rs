//! Attention of a few new tokens per row over a [`KvCache`](crate::KvCache), computed on the
//! CPU straight from the cache's memory: the kernel every decode step runs.

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::f32_kernel::Kernel;
use crate::lanes::Lanes;
#[cfg(target_arch = "x86_64")]
use crate::lanes::{Ymm, Zmm};
use crate::simd::{dot, fma, Simd};

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
/// the query heads that share it, and splits the work over rows and KV heads; where the CPU
/// has AVX2 or AVX-512, those query heads go through the keys and values together
/// ([`fused_attention`]).
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
        let fused = fused_kernel(&cache, d);
        let task = |(index, out): (usize, &mut [f32])| {
            let (r, g) = (index / kv_heads, index % kv_heads);
            let pad = self.padding[r];
            let q = &q[index * rows * d..][..rows * d];
            // The slots new token i sees: `first..first + n`.
            let seen = |i: usize| {
                let slot = offset + i;
                let first = if slot < pad { slot } else { pad };
                (first, slot + 1 - first)
            };
            if let Some(kernel) = fused {
                SCORES.with_borrow_mut(|scores| {
                    for i in 0..self.t {
                        let (first, n) = seen(i);
                        let queries = QueryRows {
                            first: i,
                            step: self.t,
                            count: group,
                        };
                        match &cache {
                            CacheData::F32(k, v) => {
                                let head = KvHead::new(k, k_layout, v, v_layout, r, g, first, n);
                                fused_attention(
                                    kernel, head, q, queries, d, self.scale, scores, out,
                                )
                            }
                            CacheData::F16(k, v) => {
                                let head = KvHead::new(k, k_layout, v, v_layout, r, g, first, n);
                                fused_attention(
                                    kernel, head, q, queries, d, self.scale, scores, out,
                                )
                            }
                        }
                    }
                });
                return;
            }
            // Without a fused kernel (no AVX2, or another head size), an f16 cache is widened
            // one head at a time into f32 buffers that stay in L2 (one pair per thread,
            // reused): memory is read at half width, and the kernel below stays one f32
            // kernel.
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
                let mut scores = vec![0f32; group * len];
                for i in 0..self.t {
                    let (first, n) = seen(i);
                    let query = Query {
                        q,
                        row0: i,
                        row_step: self.t,
                        group,
                        first,
                        n,
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
    /// The scores of the queries [`fused_attention`] runs at once, one buffer per thread.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The kernel [`fused_attention`] runs for this cache and head size, if this CPU has one.
fn fused_kernel(cache: &CacheData, d: usize) -> Option<Kernel> {
    if !FUSED_HEAD_SIZES.contains(&d) {
        return None;
    }
    let kernel = Kernel::detect()?;
    match cache {
        CacheData::F16(..) if !widens_f16(kernel) => None,
        _ => Some(kernel),
    }
}

/// Whether `kernel` can widen f16 values on this CPU (AVX2 needs F16C besides).
fn widens_f16(kernel: Kernel) -> bool {
    match kernel {
        Kernel::Avx512 => true,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => std::arch::is_x86_feature_detected!("f16c"),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2 => false,
    }
}

/// Head sizes [`fused_attention`] has a kernel for.
const FUSED_HEAD_SIZES: [usize; 3] = [32, 64, 128];

/// A value of the cache, as a kernel loads it: `LANES` at a time, widened to f32.
trait CacheElement: Copy {
    /// Whether loading widens f16 values (F16C with AVX2).
    const HALF: bool;
    /// # Safety
    /// As [`Lanes::load`].
    unsafe fn load<V: Lanes>(p: *const Self) -> V;
}

impl CacheElement for f32 {
    const HALF: bool = false;
    #[inline(always)]
    unsafe fn load<V: Lanes>(p: *const Self) -> V {
        // SAFETY: the caller's promise.
        unsafe { V::load(p) }
    }
}

impl CacheElement for f16 {
    const HALF: bool = true;
    #[inline(always)]
    unsafe fn load<V: Lanes>(p: *const Self) -> V {
        // SAFETY: the caller's promise.
        unsafe { V::load_f16(p) }
    }
}

/// The slots `first..first + n` of one row's KV head, in the cache's own element type.
struct KvHead<'a, E> {
    k: &'a [E],
    v: &'a [E],
    k_stride: usize,
    v_stride: usize,
    n: usize,
}

impl<'a, E> KvHead<'a, E> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        k: &'a [E],
        k_layout: &Layout,
        v: &'a [E],
        v_layout: &Layout,
        r: usize,
        g: usize,
        first: usize,
        n: usize,
    ) -> Self {
        let (keys, values) = (Strided::new(k, k_layout), Strided::new(v, v_layout));
        Self {
            k: &keys.head(r, g)[first * keys.row_stride..],
            v: &values.head(r, g)[first * values.row_stride..],
            k_stride: keys.row_stride,
            v_stride: values.row_stride,
            n,
        }
    }
}

/// The query rows `first, first + step, ...` (`count` of them) of a KV head's queries: the
/// query heads that share the head, for one new token.
#[derive(Clone, Copy)]
struct QueryRows {
    first: usize,
    step: usize,
    count: usize,
}

/// Attention of the query rows `rows` of `q` (each `d` wide) over `head`, into the same rows
/// of `out`: the queries that share a KV head go through its keys and values together, a
/// few at a time ([`attend_queries`]).
///
/// Why: at 500 slots of context a batch-32 step of SmolLM2 reads ~750 MB of f32 keys and
/// values, and attention took about a third of the step; one query after another re-read
/// every key and value from L2 for each query of the group and reduced every dot product on
/// its own. Here each key and value is loaded once per pass for up to 4 queries (3 with AVX2's
/// 16 registers), four keys' dot products share one reduction, and an f16 cache is widened
/// in registers as it is read, so that it costs half the memory traffic and no extra pass.
///
/// # Panics
/// If `head`, `q` or `out` is shorter than the rows need, or `d` is not one of
/// [`FUSED_HEAD_SIZES`], or this CPU lacks the kernel's instructions (take it from
/// [`fused_kernel`]).
#[allow(clippy::too_many_arguments)]
fn fused_attention<E: CacheElement>(
    kernel: Kernel,
    head: KvHead<E>,
    q: &[f32],
    rows: QueryRows,
    d: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let n = head.n;
    let last_row = rows.first + rows.count.saturating_sub(1) * rows.step;
    assert!(
        FUSED_HEAD_SIZES.contains(&d),
        "no fused kernel for heads of {d}"
    );
    assert!(
        kernel.runs_here() && (!E::HALF || widens_f16(kernel)),
        "this CPU lacks {kernel:?} or its f16 conversions"
    );
    assert!(
        n > 0
            && head.k.len() >= (n - 1) * head.k_stride + d
            && head.v.len() >= (n - 1) * head.v_stride + d
            && q.len() >= (last_row + 1) * d
            && out.len() >= (last_row + 1) * d,
        "fused attention: {n} slots or {} query rows out of bounds",
        rows.count
    );
    scores.resize(FUSED_MAX_QUERIES * n, 0.0);
    for start in (0..rows.count).step_by(kernel_queries(kernel)) {
        let count = (rows.count - start).min(kernel_queries(kernel));
        let row = |i: usize| (rows.first + (start + i) * rows.step) * d;
        // All pointers from one base each (rows checked against the lengths above), so that
        // no later borrow of `out` invalidates an earlier row's pointer.
        let (q_base, out_base) = (q.as_ptr(), out.as_mut_ptr());
        let queries: [*const f32; FUSED_MAX_QUERIES] =
            std::array::from_fn(|i| q_base.wrapping_add(row(i.min(count - 1))));
        let outs: [*mut f32; FUSED_MAX_QUERIES] =
            std::array::from_fn(|i| out_base.wrapping_add(row(i.min(count - 1))));
        let call = Queries {
            q: queries,
            out: outs,
            count,
            scale,
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the kernel's instructions, and F16C where an f16 cache with
        // AVX2 needs it; every pointer has `d` values behind it and `head` its `n` slots (all
        // asserted above); `scores` holds FUSED_MAX_QUERIES * n.
        unsafe {
            match kernel {
                Kernel::Avx512 => fused_avx512(&head, &call, d, scores),
                Kernel::Avx2 => fused_avx2(&head, &call, d, scores),
            }
        }
    }
}

/// Queries per pass with AVX-512 (32 registers: 4 queries x 4 keys of sums, then 4 queries x
/// 4 vectors of output).
const FUSED_MAX_QUERIES: usize = 4;

/// Queries per pass for `kernel`: with AVX2's 16 registers, 3 x 4 sums leave room for the key.
fn kernel_queries(kernel: Kernel) -> usize {
    match kernel {
        Kernel::Avx512 => FUSED_MAX_QUERIES,
        Kernel::Avx2 => 3,
    }
}

/// The first `count` of up to [`FUSED_MAX_QUERIES`] query rows and their output rows.
struct Queries {
    q: [*const f32; FUSED_MAX_QUERIES],
    out: [*mut f32; FUSED_MAX_QUERIES],
    count: usize,
    scale: f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn fused_avx512<E: CacheElement>(
    head: &KvHead<E>,
    queries: &Queries,
    d: usize,
    scores: &mut [f32],
) {
    // SAFETY: the caller's promise.
    unsafe { by_head_size::<Zmm, E>(head, queries, d, scores) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fused_avx2<E: CacheElement>(
    head: &KvHead<E>,
    queries: &Queries,
    d: usize,
    scores: &mut [f32],
) {
    // SAFETY: the caller's promise.
    unsafe { by_head_size::<Ymm, E>(head, queries, d, scores) }
}

/// [`attend_queries`] for the head size and the number of queries, which it takes as
/// constants: the compiler then keeps the sums in registers.
#[inline(always)]
unsafe fn by_head_size<V: Lanes, E: CacheElement>(
    head: &KvHead<E>,
    queries: &Queries,
    d: usize,
    scores: &mut [f32],
) {
    // SAFETY (all arms): the caller's promise.
    unsafe {
        match d {
            32 => by_count::<V, E, 32>(head, queries, scores),
            64 => by_count::<V, E, 64>(head, queries, scores),
            _ => by_count::<V, E, 128>(head, queries, scores),
        }
    }
}

#[inline(always)]
unsafe fn by_count<V: Lanes, E: CacheElement, const D: usize>(
    head: &KvHead<E>,
    queries: &Queries,
    scores: &mut [f32],
) {
    // SAFETY (all arms): the caller's promise.
    unsafe {
        match queries.count {
            1 => attend_queries::<V, E, D, 1>(head, queries, scores),
            2 => attend_queries::<V, E, D, 2>(head, queries, scores),
            3 => attend_queries::<V, E, D, 3>(head, queries, scores),
            _ => attend_queries::<V, E, D, 4>(head, queries, scores),
        }
    }
}

/// Vectors of each output row summed per pass over the values.
const VALUE_VECTORS: usize = 4;

/// Attention of `G` queries over the same slots: their scores in one pass over the keys
/// (four keys at a time, `G x 4` sums in registers), a softmax per query, then their outputs
/// in passes over the values (`G x` [`VALUE_VECTORS`] vectors of sums in registers, one pass
/// for heads up to that many vectors wide).
///
/// # Safety
/// The CPU has `V`'s instructions; the first `G` query and output pointers have `D` values
/// behind them, `head` has its `n` slots of `D` values, `scores` at least `G * n` values.
// Indexed loops over the register arrays: the indices pick a key, a query and a vector at
// once, which iterators would hide.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn attend_queries<V: Lanes, E: CacheElement, const D: usize, const G: usize>(
    head: &KvHead<E>,
    queries: &Queries,
    scores: &mut [f32],
) {
    let n = head.n;
    // Scaled once here, the dot products come out as scores.
    let mut q = [[0f32; D]; G];
    for (g, q) in q.iter_mut().enumerate() {
        // SAFETY: the caller's promise: D values behind each query pointer.
        let row = unsafe { std::slice::from_raw_parts(queries.q[g], D) };
        for (q, &x) in q.iter_mut().zip(row) {
            *q = x * queries.scale;
        }
    }
    let scores = &mut scores[..G * n];
    let (keys, values) = (head.k.as_ptr(), head.v.as_ptr());
    // SAFETY: every key and value read below is within slots 0..n of D values (the caller's
    // promise); scores are written at g * n + j < G * n.
    unsafe {
        let mut j = 0;
        while j + 4 <= n {
            let mut sums = [[V::zero(); 4]; G];
            for c in (0..D).step_by(V::LANES) {
                for k in 0..4 {
                    let key = E::load::<V>(keys.add((j + k) * head.k_stride + c));
                    for g in 0..G {
                        sums[g][k] = sums[g][k].fma(V::load(q[g].as_ptr().add(c)), key);
                    }
                }
            }
            for (g, sums) in sums.into_iter().enumerate() {
                V::sums4(sums, scores.as_mut_ptr().add(g * n + j));
            }
            j += 4;
        }
        while j < n {
            let mut sums = [V::zero(); G];
            for c in (0..D).step_by(V::LANES) {
                let key = E::load::<V>(keys.add(j * head.k_stride + c));
                for g in 0..G {
                    sums[g] = sums[g].fma(V::load(q[g].as_ptr().add(c)), key);
                }
            }
            for (g, sum) in sums.into_iter().enumerate() {
                scores[g * n + j] = sum.sum();
            }
            j += 1;
        }
    }
    softmax_rows::<true>(scores, n);
    let width = (VALUE_VECTORS * V::LANES).min(D);
    // SAFETY: as above; output columns c0 + i * LANES + LANES <= D.
    unsafe {
        for c0 in (0..D).step_by(width) {
            let mut sums = [[V::zero(); VALUE_VECTORS]; G];
            for j in 0..n {
                let row = values.add(j * head.v_stride + c0);
                let probs: [V; G] = std::array::from_fn(|g| V::splat(&scores[g * n + j]));
                for i in 0..VALUE_VECTORS {
                    if i * V::LANES < width {
                        let value = E::load::<V>(row.add(i * V::LANES));
                        for g in 0..G {
                            sums[g][i] = sums[g][i].fma(probs[g], value);
                        }
                    }
                }
            }
            for (g, sums) in sums.into_iter().enumerate() {
                for (i, sum) in sums.into_iter().enumerate() {
                    if i * V::LANES < width {
                        sum.store(queries.out[g].add(c0 + i * V::LANES));
                    }
                }
            }
        }
    }
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
/// the values, written to the query's rows of `out`: for head sizes and CPUs that
/// [`fused_attention`] has no kernel for.
#[inline(always)]
fn attend_generic<const FMA: bool>(
    heads: &Heads,
    query: &Query,
    scores: &mut [f32],
    out: &mut [f32],
) {
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
        // A compare and select, which vectorises; `f32::max`'s NaN rule kept it scalar (a
        // NaN score still gives NaN probabilities: `exp(NaN - max)`).
        let max = lanes8(probs, f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
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

    /// Softmax attention of one query over `n` slots (`stride` apart), in f64.
    fn one_query(q: &[f32], k: &[f32], v: &[f32], stride: usize, n: usize) -> Vec<f64> {
        let d = q.len();
        let scale = 1.0 / (d as f64).sqrt();
        let scores: Vec<f64> = (0..n)
            .map(|j| {
                (0..d)
                    .map(|x| q[x] as f64 * k[j * stride + x] as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..d)
            .map(|x| {
                (0..n)
                    .map(|j| weights[j] * v[j * stride + x] as f64)
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    #[test]
    fn fused_kernels_match_one_query_at_a_time_over_f32_and_f16_caches() {
        let mut seed = 12345u64;
        let mut random = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        let kernels: Vec<Kernel> = [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect();
        let mut scores = Vec::new();
        for &kernel in &kernels {
            for d in FUSED_HEAD_SIZES {
                // Groups of one pass and of several (4 + 1 with AVX-512, 3 + 2 with AVX2);
                // slot counts around multiples of the four keys scored at a time.
                for group in [1, 2, 3, 4, 5] {
                    for n in [1, 3, 4, 5, 9, 41] {
                        // Slots with a gap between them, query rows of one token of two.
                        let stride = d + 8;
                        let (step, first) = (2, 1);
                        let rows = QueryRows {
                            first,
                            step,
                            count: group,
                        };
                        let q: Vec<f32> = (0..group * step * d).map(|_| random()).collect();
                        let k: Vec<f32> = (0..n * stride).map(|_| random()).collect();
                        let v: Vec<f32> = (0..n * stride).map(|_| random()).collect();
                        let (k16, v16): (Vec<f16>, Vec<f16>) = (
                            k.iter().map(|&x| f16::from_f32(x)).collect(),
                            v.iter().map(|&x| f16::from_f32(x)).collect(),
                        );
                        let widened = |x: &[f16]| x.iter().map(|h| h.to_f32()).collect::<Vec<_>>();
                        let scale = 1.0 / (d as f32).sqrt();
                        let mut out32 = vec![f32::NAN; q.len()];
                        let mut out16 = vec![f32::NAN; q.len()];
                        let head = |k, v| KvHead {
                            k,
                            v,
                            k_stride: stride,
                            v_stride: stride,
                            n,
                        };
                        fused_attention(
                            kernel,
                            head(&k, &v),
                            &q,
                            rows,
                            d,
                            scale,
                            &mut scores,
                            &mut out32,
                        );
                        if fused_kernel(&CacheData::F16(&k16, &v16), d).is_some() {
                            let head16 = KvHead {
                                k: &k16[..],
                                v: &v16[..],
                                k_stride: stride,
                                v_stride: stride,
                                n,
                            };
                            fused_attention(
                                kernel,
                                head16,
                                &q,
                                rows,
                                d,
                                scale,
                                &mut scores,
                                &mut out16,
                            );
                        }
                        for i in 0..group {
                            let at = (first + i * step) * d;
                            let query = &q[at..][..d];
                            let mut cases = vec![(&out32, one_query(query, &k, &v, stride, n))];
                            if !out16[at].is_nan() {
                                let (k, v) = (widened(&k16), widened(&v16));
                                cases.push((&out16, one_query(query, &k, &v, stride, n)));
                            }
                            for (out, want) in cases {
                                for (x, w) in want.iter().enumerate() {
                                    let got = out[at + x] as f64;
                                    assert!(
                                        (got - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                        "{kernel:?}, d {d}, group {group}, {n} slots: query {i}, \
                                         value {x} is {got}, want {w}"
                                    );
                                }
                            }
                        }
                        // Rows that are not the group's queries stay untouched.
                        assert!(out32[..first * d].iter().all(|x| x.is_nan()));
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
