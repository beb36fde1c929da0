//! Timings of internal kernels for the crate's examples (`examples/product_kernel.rs`,
//! `examples/attention_kernel.rs`); not a stable API, hidden from the docs.

use crate::f32_kernel::{products_t, Kernel, TransposedRows};

/// The fastest of `repeats` runs of the product of a `len` x `in_dim` weight with `rows`
/// input rows on this CPU's best kernel, in seconds, with the kernel's name; `None` where
/// the CPU has neither AVX2 nor AVX-512. With `from_memory`, each run takes the next of
/// enough copies of the weight to fill 256 MiB, so that it reads the weight from memory, as
/// a decode step does, rather than from cache.
pub fn best_products_time(
    len: usize,
    in_dim: usize,
    rows: usize,
    from_memory: bool,
    repeats: usize,
) -> Option<(&'static str, f64)> {
    let kernel = Kernel::detect()?;
    let value = |i: usize| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5;
    let x: Vec<f32> = (0..rows * in_dim).map(value).collect();
    let transposed = TransposedRows::of(&x, rows, in_dim);
    let size = (len * in_dim).max(1);
    let copies = if from_memory {
        (256 << 20) / (4 * size) + 1
    } else {
        1
    };
    let w: Vec<f32> = (0..copies * size).map(|i| value(i + 11)).collect();
    let mut best = f64::INFINITY;
    for run in 0..repeats.max(1) {
        let weight = &w[(run % copies) * size..][..size];
        let start = std::time::Instant::now();
        let out = products_t(kernel, &transposed, weight, len);
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(out);
    }
    let name = match kernel {
        Kernel::Avx512 => "AVX-512",
        Kernel::Avx2 => "AVX2",
    };
    Some((name, best))
}

/// The fastest of `repeats` transpositions of `rows` input rows of `in_dim` values (what
/// every product of the kernel does first, on one thread while the others wait), in seconds.
pub fn best_transpose_time(rows: usize, in_dim: usize, repeats: usize) -> f64 {
    let x: Vec<f32> = (0..rows * in_dim).map(|i| i as f32).collect();
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let start = std::time::Instant::now();
        let transposed = TransposedRows::of(&x, rows, in_dim);
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(transposed);
    }
    best
}

/// The median time of one decode step's attention over a cache of `layers` layers (each
/// its own keys and values, so that a step reads them from memory as the model does), for
/// `batch` rows of `slots` slots, `kv_heads` KV heads of `group` query heads each, head size
/// `head_dim`, the cache in `dtype` (f32 or f16), in seconds, over `repeats` steps. Runs on
/// the calling thread's rayon pool, as a decode step does.
#[allow(clippy::too_many_arguments)]
pub fn median_attention_time(
    batch: usize,
    kv_heads: usize,
    group: usize,
    head_dim: usize,
    slots: usize,
    layers: usize,
    dtype: candle_core::DType,
    repeats: usize,
) -> crate::Result<f64> {
    use candle_core::{Device, Tensor};
    let device = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (batch, kv_heads, group, head_dim), &device)?;
    let cache = (0..layers)
        .map(|_| {
            let k = Tensor::randn(0f32, 1.0, (batch, kv_heads, slots, head_dim), &device)?;
            let v = Tensor::randn(0f32, 1.0, (batch, kv_heads, slots, head_dim), &device)?;
            Ok((k.to_dtype(dtype)?, v.to_dtype(dtype)?))
        })
        .collect::<crate::Result<Vec<_>>>()?;
    let padding = vec![0; batch];
    let mut times = Vec::with_capacity(repeats.max(1));
    // On a thread of the pool, as the model's forward pass runs (see `in_cpu_pool` in
    // llama.rs): the parallel regions are then fork-joins rather than hand-offs.
    rayon::scope(|_| -> crate::Result<()> {
        for _ in 0..repeats.max(1) {
            let start = std::time::Instant::now();
            for (k, v) in &cache {
                let out = crate::attention::cached_attention(&q, k, v, &padding, 1)?;
                std::hint::black_box(out);
            }
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(())
    })?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
