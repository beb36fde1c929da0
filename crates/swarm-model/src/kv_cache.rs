//! The key/value cache of a batch of sequences, kept outside the model.
//!
//! One [`KvCache`] holds, per layer, keys and values of shape
//! `(batch, kv_heads, capacity, head_dim)`, pre-allocated and written in place
//! (`slice_set`), so a decode step copies only the new token's keys and values and attention
//! reads a strided view of the first `len` slots; nothing is concatenated per step.
//!
//! Sequences of different lengths share one cache by **left padding**: row `r` has
//! `padding[r]` empty slots before its first token. Its next token sits in slot `len` and has
//! position `len - padding[r]`, and the model masks slots `< padding[r]`.
//!
//! Why one batch cache rather than one cache per sequence stacked at every step: stacking
//! copies the whole cache per token (for SmolLM2 at batch 32 and 600 tokens, ~0.9 GB per step,
//! more than the step itself), while rows change rarely. A continuous-batching server changes
//! the batch with two operations that copy once: [`KvCache::select_rows`] drops finished rows
//! and [`KvCache::concat`] joins the caches of newly prefilled requests, left-padding the
//! shorter ones so every row ends at the same slot.
//!
//! Keys and values are stored in the model's activation dtype unless
//! [`KvCache::with_dtype`] asks for another: an f16 cache of an f32 model halves the cache's
//! memory and the bytes a decode step reads from it, which at long contexts and large batches
//! is most of what the step reads.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Keys and values of a batch of sequences for every layer of one model.
///
/// Not `Clone`: tensors share storage and the cache is written in place.
#[derive(Debug)]
pub struct KvCache {
    /// Per layer `(k, v)`, each `(batch, kv_heads, capacity, head_dim)`; `None` until written.
    layers: Vec<Option<(Tensor, Tensor)>>,
    batch: usize,
    len: usize,
    capacity: usize,
    padding: Vec<usize>,
    /// The dtype keys and values are stored in (`None`: the dtype they arrive in).
    storage: Option<DType>,
}

/// Slots are allocated in multiples of this when the cache grows.
const GROWTH_QUANTUM: usize = 128;

impl KvCache {
    /// An empty cache for `batch` sequences of a model with `num_layers` layers.
    /// `capacity` slots are allocated on the first write (more when needed).
    pub fn new(num_layers: usize, batch: usize, capacity: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            batch,
            len: 0,
            capacity,
            padding: vec![0; batch],
            storage: None,
        }
    }

    /// Stores keys and values in `dtype` whatever the model computes them in. On the CPU,
    /// `DType::F16` with an f32 model halves the cache and the bytes each decode step reads
    /// from it; the logits then differ from an f32 cache's by about 1e-3 relative (f16 keeps
    /// 11 significant bits), so exact-reference checks use the default.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.storage = Some(dtype);
        self
    }

    /// The dtype keys and values are stored in, when set by [`KvCache::with_dtype`].
    pub fn dtype(&self) -> Option<DType> {
        self.storage
    }

    /// Number of rows (sequences).
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Slots used, padding included (the same for every row).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated per row.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Left-padding slots of each row.
    pub fn padding(&self) -> &[usize] {
        &self.padding
    }

    /// Tokens held by each row (its next position).
    pub fn seq_lens(&self) -> Vec<usize> {
        self.padding.iter().map(|p| self.len - p).collect()
    }

    /// Bytes allocated by the cache.
    pub fn size_in_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// Sets the left padding of an empty cache (the batched prefill does this).
    pub(crate) fn set_padding(&mut self, padding: Vec<usize>) -> Result<()> {
        if !self.is_empty() {
            return Err(ModelError::Generation(
                "left padding can only be set on an empty cache".to_string(),
            ));
        }
        if padding.len() != self.batch {
            return Err(ModelError::Generation(format!(
                "padding for {} rows given to a cache of {} rows",
                padding.len(),
                self.batch
            )));
        }
        self.padding = padding;
        Ok(())
    }

    /// Writes `t` new slots of `layer` (`k`, `v`: `(batch, kv_heads, t, head_dim)`) after the
    /// current `len` and returns views of slots `0..len + t`. [`KvCache::advance`] commits
    /// the slots once every layer has written them.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, kv_heads, t, head_dim) = k.dims4()?;
        let (k, v) = match self.storage {
            Some(dtype) if dtype != k.dtype() => (k.to_dtype(dtype)?, v.to_dtype(dtype)?),
            _ => (k.clone(), v.clone()),
        };
        if b != self.batch {
            return Err(ModelError::Generation(format!(
                "a batch of {b} rows given to a cache of {} rows",
                self.batch
            )));
        }
        let needed = self.len + t;
        if needed > self.capacity || self.layers.get(layer).is_some_and(|l| l.is_none()) {
            let capacity = if needed > self.capacity {
                needed
                    .max(self.capacity + self.capacity / 2)
                    .div_ceil(GROWTH_QUANTUM)
                    * GROWTH_QUANTUM
            } else {
                self.capacity
            };
            self.grow(
                layer,
                (b, kv_heads, capacity, head_dim),
                k.dtype(),
                k.device(),
            )?;
        }
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| ModelError::Generation(format!("layer {layer} is outside the cache")))?;
        let Some((kc, vc)) = slot.as_ref() else {
            return Err(ModelError::Generation(format!(
                "layer {layer} of the cache was not allocated"
            )));
        };
        kc.slice_set(&k.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((kc.narrow(2, 0, needed)?, vc.narrow(2, 0, needed)?))
    }

    /// (Re)allocates `layer` with `dims = (batch, kv_heads, capacity, head_dim)`, keeping the
    /// first `len` slots; every other allocated layer is grown to the same capacity.
    fn grow(
        &mut self,
        layer: usize,
        dims: (usize, usize, usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<()> {
        let capacity = dims.2;
        let len = self.len;
        let resize = |t: &Tensor| -> Result<Tensor> {
            let fresh = Tensor::zeros(dims, dtype, device)?;
            if len > 0 {
                fresh.slice_set(&t.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            Ok(fresh)
        };
        for (i, entry) in self.layers.iter_mut().enumerate() {
            match entry {
                Some((k, v)) if k.dim(2)? != capacity => {
                    *entry = Some((resize(k)?, resize(v)?));
                }
                None if i == layer => {
                    let k = Tensor::zeros(dims, dtype, device)?;
                    let v = Tensor::zeros(dims, dtype, device)?;
                    *entry = Some((k, v));
                }
                _ => {}
            }
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Commits `t` slots written by [`KvCache::append`] in every layer.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Keeps only `rows` (in that order), e.g. to drop finished sequences from a batch.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.batch) {
            return Err(ModelError::Generation(format!(
                "row {bad} selected from a cache of {} rows",
                self.batch
            )));
        }
        let padding: Vec<usize> = rows.iter().map(|&r| self.padding[r]).collect();
        for (k, v) in self.layers.iter_mut().flatten() {
            let index = Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                rows.len(),
                k.device(),
            )?;
            *k = k.index_select(&index, 0)?;
            *v = v.index_select(&index, 0)?;
        }
        self.batch = rows.len();
        self.padding = padding;
        // Slots that every remaining row pads are dead weight: drop them.
        let common = self.padding.iter().copied().min().unwrap_or(0);
        if common > 0 && self.batch > 0 {
            self.trim_front(common)?;
        }
        Ok(())
    }

    /// Removes the first `n` slots of every row (all of which must be padding).
    fn trim_front(&mut self, n: usize) -> Result<()> {
        let keep = self.len - n;
        for (k, v) in self.layers.iter_mut().flatten() {
            let dims = k.dims4()?;
            let shift = |t: &Tensor| -> Result<Tensor> {
                let fresh = Tensor::zeros(dims, t.dtype(), t.device())?;
                if keep > 0 {
                    fresh.slice_set(&t.narrow(2, n, keep)?.contiguous()?, 2, 0)?;
                }
                Ok(fresh)
            };
            *k = shift(k)?;
            *v = shift(v)?;
        }
        self.len = keep;
        for p in &mut self.padding {
            *p -= n;
        }
        Ok(())
    }

    /// Joins caches of the same model into one batch, rows in order. Rows of shorter caches
    /// get extra left padding so that all rows end at the same slot.
    pub fn concat(caches: &[KvCache]) -> Result<KvCache> {
        let Some(first) = caches.first() else {
            return Err(ModelError::Generation("no caches to join".to_string()));
        };
        let num_layers = first.layers.len();
        if caches.iter().any(|c| c.layers.len() != num_layers) {
            return Err(ModelError::Generation(
                "caches of models with different layer counts cannot be joined".to_string(),
            ));
        }
        if caches.iter().any(|c| c.storage != first.storage) {
            return Err(ModelError::Generation(
                "caches stored in different dtypes cannot be joined".to_string(),
            ));
        }
        let len = caches.iter().map(|c| c.len).max().unwrap_or(0);
        let capacity = caches
            .iter()
            .map(|c| len + c.capacity.saturating_sub(c.len))
            .max()
            .unwrap_or(len);
        let mut padding = Vec::new();
        for c in caches {
            padding.extend(c.padding.iter().map(|p| p + len - c.len));
        }
        let batch = padding.len();
        let mut layers = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            let template = caches.iter().find_map(|c| c.layers[layer].as_ref());
            let Some((tk, _)) = template else {
                layers.push(None);
                continue;
            };
            let (_, kv_heads, _, head_dim) = tk.dims4()?;
            for c in caches {
                let dims = (c.batch, kv_heads, capacity, head_dim);
                let k = Tensor::zeros(dims, tk.dtype(), tk.device())?;
                let v = Tensor::zeros(dims, tk.dtype(), tk.device())?;
                if let Some((ck, cv)) = &c.layers[layer] {
                    if c.len > 0 {
                        let offset = len - c.len;
                        k.slice_set(&ck.narrow(2, 0, c.len)?.contiguous()?, 2, offset)?;
                        v.slice_set(&cv.narrow(2, 0, c.len)?.contiguous()?, 2, offset)?;
                    }
                }
                ks.push(k);
                vs.push(v);
            }
            layers.push(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)));
        }
        Ok(KvCache {
            layers,
            batch,
            len,
            capacity,
            padding,
            storage: first.storage,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Attention over the filled slots, straight from the cache

/// Attention of a few new queries per row over the slots a [`KvCache::append`] returned, on
/// the CPU in f32, without a mask tensor: row `r` attends to its slots `padding[r]..=slot`
/// (a padding query only to itself, as the model's mask does).
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
            // An f16 cache is widened one head at a time into f32 buffers that stay in L2:
            // memory is read at half width, and the kernel below stays one f32 kernel.
            let mut widened = (Vec::new(), Vec::new());
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
                    widened.0 = widen_head(simd, &keys, r, g, len, d);
                    widened.1 = widen_head(simd, &values, r, g, len, d);
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

/// Slots `0..len` of row `r`, head `g` of an f16 cache, as packed f32 rows of `d`.
fn widen_head(
    simd: Simd,
    heads: &Strided<f16>,
    r: usize,
    g: usize,
    len: usize,
    d: usize,
) -> Vec<f32> {
    let src = heads.head(r, g);
    let mut out = vec![0f32; len * d];
    for (slot, out) in out.chunks_exact_mut(d).enumerate() {
        widen(simd, &src[slot * heads.row_stride..][..d], out);
    }
    out
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

/// Which instructions the kernel may use, checked once per call.
#[derive(Clone, Copy)]
enum Simd {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma {
        /// Also F16C, to widen an f16 cache.
        f16c: bool,
    },
}

impl Simd {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Simd::Avx2Fma {
                f16c: std::arch::is_x86_feature_detected!("f16c"),
            };
        }
        Simd::Baseline
    }
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
        for (j, score) in scores.iter_mut().enumerate() {
            let key = &heads.k[(query.first + j) * heads.k_stride..][..D];
            *score = dot::<FMA>(&q, key) * query.scale;
        }
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

#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Dot product with eight independent partial sums, which the compiler turns into one SIMD
/// register (the chunks are arrays so that it knows their length).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .fold(0f32, |s, (x, y)| fma::<FMA>(*x, *y, s));
    for (x, y) in a_chunks.zip(b_chunks) {
        let (Ok(x), Ok(y)) = (<&[f32; 8]>::try_from(x), <&[f32; 8]>::try_from(y)) else {
            continue; // unreachable: chunks_exact yields 8 values
        };
        for l in 0..8 {
            acc[l] = fma::<FMA>(x[l], y[l], acc[l]);
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
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

    fn kv(b: usize, t: usize, fill: f32) -> Tensor {
        (Tensor::ones((b, 2, t, 4), DType::F32, &Device::Cpu).unwrap() * fill as f64).unwrap()
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

    #[test]
    fn appends_in_place_and_grows() {
        let mut c = KvCache::new(2, 1, 2);
        for step in 0..5 {
            for layer in 0..2 {
                let (k, v) = c
                    .append(layer, &kv(1, 1, step as f32), &kv(1, 1, 0.))
                    .unwrap();
                assert_eq!(k.dims(), &[1, 2, step + 1, 4]);
                assert_eq!(v.dims(), &[1, 2, step + 1, 4]);
            }
            c.advance(1);
        }
        assert_eq!(c.len(), 5);
        assert!(c.capacity() >= 5);
        let (k, _) = c.append(0, &kv(1, 1, 9.), &kv(1, 1, 9.)).unwrap();
        let col: Vec<f32> = k
            .narrow(1, 0, 1)
            .unwrap()
            .narrow(3, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(col, vec![0., 1., 2., 3., 4., 9.]);
    }

    #[test]
    fn select_and_concat_keep_rows_aligned() {
        let mut a = KvCache::new(1, 2, 8);
        a.append(0, &kv(2, 3, 1.), &kv(2, 3, 1.)).unwrap();
        a.advance(3);
        let mut b = KvCache::new(1, 1, 8);
        b.append(0, &kv(1, 1, 2.), &kv(1, 1, 2.)).unwrap();
        b.advance(1);
        let mut j = KvCache::concat(&[a, b]).unwrap();
        assert_eq!(j.batch_size(), 3);
        assert_eq!(j.len(), 3);
        assert_eq!(j.padding(), &[0, 0, 2]);
        assert_eq!(j.seq_lens(), vec![3, 3, 1]);
        j.select_rows(&[2]).unwrap();
        // The two padding slots every remaining row shares are dropped.
        assert_eq!(j.len(), 1);
        assert_eq!(j.padding(), &[0]);
        let (k, _) = j.append(0, &kv(1, 1, 5.), &kv(1, 1, 5.)).unwrap();
        let first: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(first[0], 2.);
        assert!(j.select_rows(&[4]).is_err());
    }
}
