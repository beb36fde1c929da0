//! Timings of internal kernels for the crate's examples (`examples/product_kernel.rs`); not
//! a stable API, hidden from the docs.

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
