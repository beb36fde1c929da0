//! The CPU's vector instructions, found at run time, and the small f32 kernels that the hot
//! loops of the forward pass share: dot products, many at a time.
//!
//! The workspace builds for baseline x86-64 (SSE2, no FMA) so that one binary runs on any
//! x86-64 CPU. A kernel that matters is compiled once more inside a function marked
//! `#[target_feature(enable = "avx2,fma")]` and chosen after [`Simd::detect`] has checked the
//! CPU. Generic helpers take a `const FMA: bool`: `true` only where they are inlined into
//! such a function (elsewhere `f32::mul_add` would be a library call, not an instruction).

/// Which instructions a kernel may use, checked once per call.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Simd {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma {
        /// Also F16C, to widen f16 values.
        f16c: bool,
    },
}

impl Simd {
    /// The best of the above that this CPU has.
    pub(crate) fn detect() -> Self {
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

/// `a * b + c`, fused where `FMA`.
#[inline(always)]
pub(crate) fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Dot product with eight independent partial sums, which the compiler turns into one SIMD
/// register (the chunks are arrays so that it knows their length).
#[inline(always)]
pub(crate) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
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

/// `out[j] = scale * x·rows[j * stride..][..x.len()]` for every `j` of `out`: a matrix
/// (row-major, rows `stride` apart) times a vector, as a one-row linear layer needs it.
///
/// # Panics
/// If `rows` is shorter than `(out.len() - 1) * stride + x.len()`.
pub(crate) fn dots(
    simd: Simd,
    x: &[f32],
    rows: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Simd::detect` found AVX2 and FMA on this CPU.
        Simd::Avx2Fma { .. } => unsafe { dots_avx2_fma(x, rows, stride, scale, out) },
        Simd::Baseline => dots_generic::<false>(x, rows, stride, scale, out),
    }
}

/// [`dots`] one row at a time, compiled for whatever the caller is compiled for.
#[inline(always)]
fn dots_generic<const FMA: bool>(
    x: &[f32],
    rows: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot::<FMA>(x, &rows[j * stride..][..x.len()]) * scale;
    }
}

/// [`dots`] with AVX2 and FMA: rows eight at a time, then the rest one by one.
///
/// Why eight: one dot product alone is a chain of dependent FMAs (each waits ~4 cycles for
/// the one before) and then a horizontal sum, so the FMA units idle most of the time (~40
/// cycles for a 64-wide dot). With eight rows in flight, eight running sums take turns on
/// the units, the vector `x` is loaded once for all eight, and one tree of `hadd`s turns the
/// eight sums into eight results (~5 cycles a row of 64).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2_fma(x: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: the caller's promise; widths and lengths are checked inside.
    let done = unsafe { dots_by_eight_avx2(x, rows, stride, scale, out) };
    if done < out.len() {
        dots_generic::<true>(x, &rows[done * stride..], stride, scale, &mut out[done..]);
    }
}

/// The first `out.len() / 8 * 8` results of [`dots`], for `x.len()` a multiple of 8;
/// returns how many it wrote (none if `rows` is too short for them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_by_eight_avx2(
    x: &[f32],
    rows: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let (n, blocks) = (x.len(), out.len() / 8);
    // The last row read starts at (8 * blocks - 1) * stride: checked once here, not per load.
    if blocks == 0 || !n.is_multiple_of(8) || rows.len() < (8 * blocks - 1) * stride + n {
        return 0;
    }
    let scale = _mm256_set1_ps(scale);
    for block in 0..blocks {
        let mut sums = [_mm256_setzero_ps(); 8];
        for c in (0..n).step_by(8) {
            // SAFETY: c + 8 <= n = x.len(); row (8 * block + k) starts at most at
            // (8 * blocks - 1) * stride and its lanes c..c + 8 end within `rows` (checked
            // above).
            unsafe {
                let x = _mm256_loadu_ps(x.as_ptr().add(c));
                for (k, sum) in sums.iter_mut().enumerate() {
                    let row = rows.as_ptr().add((8 * block + k) * stride + c);
                    *sum = _mm256_fmadd_ps(x, _mm256_loadu_ps(row), *sum);
                }
            }
        }
        // Eight sums of eight lanes each into one register of eight dot products.
        let pairs = [
            _mm256_hadd_ps(sums[0], sums[1]),
            _mm256_hadd_ps(sums[2], sums[3]),
            _mm256_hadd_ps(sums[4], sums[5]),
            _mm256_hadd_ps(sums[6], sums[7]),
        ];
        let (low, high) = (
            _mm256_hadd_ps(pairs[0], pairs[1]),
            _mm256_hadd_ps(pairs[2], pairs[3]),
        );
        let dots = _mm256_add_ps(
            _mm256_permute2f128_ps(low, high, 0x20),
            _mm256_permute2f128_ps(low, high, 0x31),
        );
        // SAFETY: 8 * block + 8 <= 8 * blocks <= out.len().
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * block), _mm256_mul_ps(dots, scale)) };
    }
    8 * blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_match_one_dot_at_a_time_for_any_shape() {
        let value = |i: usize| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5;
        // Widths with and without a multiple of 8, row counts around multiples of 8, rows
        // with a gap between them (stride > width).
        for (width, stride) in [(64, 64), (576, 576), (24, 40), (13, 13), (8, 9)] {
            for count in [0, 1, 7, 8, 9, 16, 23] {
                let x: Vec<f32> = (0..width).map(value).collect();
                let rows: Vec<f32> = (0..count * stride).map(|i| value(i + 5)).collect();
                let mut out = vec![f32::NAN; count];
                dots(Simd::detect(), &x, &rows, stride, 0.5, &mut out);
                for (j, got) in out.iter().enumerate() {
                    let want: f64 = (0..width)
                        .map(|i| x[i] as f64 * rows[j * stride + i] as f64)
                        .sum::<f64>()
                        * 0.5;
                    assert!(
                        (*got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "width {width}, stride {stride}, row {j} of {count}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
