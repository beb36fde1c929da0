//! Products of a few f32 rows with weights in GGML's Q8_0 blocks, the decode step of a
//! `q8_0` model on the CPU, and the widening of such weights to f32 for larger batches.
//!
//! A Q8_0 weight row is a run of 34-byte blocks: one f16 scale `d` and 32 signed bytes `q`,
//! standing for the values `d · q`. As llama.cpp and candle do, the input rows are quantised
//! the same way (one scale per 32 values) so that each block's dot product is an integer sum
//! of 32 byte products, scaled once by `d_w · d_x`.
//!
//! Why our own kernel: candle's one-row Q8_0 path ran at half llama.cpp's speed on SmolLM2
//! (docs/performance.md): its dot product walks one weight row at a time, a chain of
//! dependent FMAs per row, and it widens each f16 scale through a function call (perf: 50%
//! of the step in its dot product, 6% in the f16 widening, 20% in its thread pool spinning).
//! Here the rows are cut into pieces that the model's thread pool shares as the f32
//! products do, and the scales are widened by one instruction.

use half::f16;

use crate::simd::Simd;

/// Values per block.
pub(crate) const BLOCK_VALUES: usize = 32;
/// Bytes per block: the f16 scale, then the 32 values.
pub(crate) const BLOCK_BYTES: usize = 2 + BLOCK_VALUES;

/// Input rows quantised to Q8_0 blocks: what a product with Q8_0 weights reads.
#[derive(Debug, Clone)]
pub(crate) struct QuantizedRows {
    rows: usize,
    blocks_per_row: usize,
    /// Per block (row-major), the scale already rounded to f16 as the weights' are.
    scales: Vec<f32>,
    /// Per block, 32 values in -127..=127.
    values: Vec<i8>,
}

impl QuantizedRows {
    /// Quantises `x` (`rows` rows of `in_dim` values, `in_dim` a multiple of 32) as GGML's
    /// `quantize_row_q8_0` does: scale `max |x| / 127`, values rounded half away from zero.
    pub(crate) fn quantize(x: &[f32], rows: usize, in_dim: usize) -> Self {
        debug_assert!(in_dim.is_multiple_of(BLOCK_VALUES) && x.len() >= rows * in_dim);
        let blocks_per_row = in_dim / BLOCK_VALUES;
        let mut scales = Vec::with_capacity(rows * blocks_per_row);
        let mut values = Vec::with_capacity(rows * in_dim);
        for block in x[..rows * in_dim].chunks_exact(BLOCK_VALUES) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max / 127.0;
            let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
            scales.push(f16::from_f32(d).to_f32());
            values.extend(block.iter().map(|v| (v * inverse).round() as i8));
        }
        Self {
            rows,
            blocks_per_row,
            scales,
            values,
        }
    }

    fn row(&self, r: usize) -> (&[f32], &[i8]) {
        let n = self.blocks_per_row;
        (
            &self.scales[r * n..(r + 1) * n],
            &self.values[r * n * BLOCK_VALUES..(r + 1) * n * BLOCK_VALUES],
        )
    }
}

/// `W xᵀ` for `weights`, `len` Q8_0 rows of `x`'s width (`len · blocks · 34` bytes, row
/// after row), and the quantised `x`: `len × rows` values, row-major (weight row `j`,
/// input row `r` at `j · rows + r`).
///
/// # Panics
/// If `weights` is shorter than `len` rows of `x`'s width.
pub(crate) fn products_t(simd: Simd, x: &QuantizedRows, weights: &[u8], len: usize) -> Vec<f32> {
    let row_bytes = x.blocks_per_row * BLOCK_BYTES;
    let weights = &weights[..len * row_bytes];
    let mut out = vec![0f32; len * x.rows];
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Simd::detect` found AVX2, FMA and F16C on this CPU; `weights` holds `len`
        // rows (sliced above) and `out` len x rows values.
        Simd::Avx2Fma { f16c: true } => unsafe { products_t_avx2(x, weights, len, &mut out) },
        _ => {
            for (j, w) in weights.chunks_exact(row_bytes).enumerate() {
                for r in 0..x.rows {
                    out[j * x.rows + r] = dot_generic(x.row(r), w);
                }
            }
        }
    }
    out
}

/// Q8_0 rows (`out.len() / 32` blocks, row after row) widened into `out`: `d · q`. The
/// caller sizes both alike; were `weights` shorter, the values of `out` past its blocks
/// would be left as they are.
pub(crate) fn dequantize(simd: Simd, weights: &[u8], out: &mut [f32]) {
    let blocks = weights
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK_VALUES));
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Simd::detect` found AVX2, FMA and F16C on this CPU.
        Simd::Avx2Fma { f16c: true } => unsafe { dequantize_avx2(blocks) },
        _ => {
            for (block, values) in blocks {
                let d = f16::from_bits(scale_bits(block)).to_f32();
                for (v, &q) in values.iter_mut().zip(&block[2..]) {
                    *v = d * f32::from(q as i8);
                }
            }
        }
    }
}

/// [`dequantize`] with the loop compiled for AVX2 (eight values per instruction) and the
/// scale widened by F16C.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_avx2<'a>(blocks: impl Iterator<Item = (&'a [u8], &'a mut [f32])>) {
    for (block, values) in blocks {
        let d = widen_scale_f16c(scale_bits(block));
        for (v, &q) in values.iter_mut().zip(&block[2..]) {
            *v = d * f32::from(q as i8);
        }
    }
}

/// The bits of a block's f16 scale (its first two bytes, little-endian).
#[inline(always)]
fn scale_bits(block: &[u8]) -> u16 {
    u16::from_le_bytes([block[0], block[1]])
}

/// An f16 scale as f32, in one F16C instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn widen_scale_f16c(bits: u16) -> f32 {
    use std::arch::x86_64::*;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// One Q8_0 weight row with one quantised input row, block by block.
fn dot_generic((scales, values): (&[f32], &[i8]), weight_row: &[u8]) -> f32 {
    let mut sum = 0f32;
    for ((block, &dx), xs) in weight_row
        .chunks_exact(BLOCK_BYTES)
        .zip(scales)
        .zip(values.chunks_exact(BLOCK_VALUES))
    {
        let dw = f16::from_bits(scale_bits(block)).to_f32();
        let integer: i32 = block[2..]
            .iter()
            .zip(xs)
            .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
            .sum();
        sum += integer as f32 * (dw * dx);
    }
    sum
}

/// [`products_t`] with AVX2: each weight row against every input row in turn (the row stays
/// in L1 for the input rows after the first).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `weights` must hold `len` rows of `x`'s width and
/// `out` `len · x.rows` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn products_t_avx2(x: &QuantizedRows, weights: &[u8], len: usize, out: &mut [f32]) {
    let row_bytes = x.blocks_per_row * BLOCK_BYTES;
    for (j, weight_row) in weights.chunks_exact(row_bytes).take(len).enumerate() {
        for r in 0..x.rows {
            // SAFETY: the caller's promise; `weight_row` holds as many blocks as `x`'s rows.
            out[j * x.rows + r] = unsafe { dot_avx2(x.row(r), weight_row) };
        }
    }
}

/// One Q8_0 weight row with one quantised input row (as many blocks).
///
/// Per block: for the weight's 32 bytes the signs of the input move onto the weight
/// (`sign`), so that the unsigned-by-signed byte product (`maddubs`, pairs summed to 16 bits:
/// at most 2 · 127 · 127, no saturation) gives `|x| · sign(x) · w`; `madd` with ones sums
/// pairs again into eight 32-bit lanes, which are converted and added into eight f32 sums
/// scaled by `d_w · d_x`.
///
/// Why one row at a time: reading four weight rows side by side (the input block loaded
/// once for all four, four independent sums) made a batch-1 decode step twice as slow on
/// the Zen 4 machine of docs/performance.md: one sequential stream per thread is what its
/// memory system serves fastest.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_avx2((scales, values): (&[f32], &[i8]), weight_row: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let mut sum = _mm256_setzero_ps();
    for ((block, &dx), xs) in weight_row
        .chunks_exact(BLOCK_BYTES)
        .zip(scales)
        .zip(values.chunks_exact(BLOCK_VALUES))
    {
        let dw = widen_scale_f16c(scale_bits(block));
        // SAFETY: `block` holds 2 + 32 bytes and `xs` 32 (chunks_exact); unaligned loads.
        let (wq, xq) = unsafe {
            (
                _mm256_loadu_si256(block.as_ptr().add(2) as *const __m256i),
                _mm256_loadu_si256(xs.as_ptr() as *const __m256i),
            )
        };
        let products = _mm256_maddubs_epi16(_mm256_sign_epi8(xq, xq), _mm256_sign_epi8(wq, xq));
        let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
        sum = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx), lanes, sum);
    }
    let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919) % 1013) as f32 / 1013.0 - 0.5)
            .collect()
    }

    /// The weights quantised by candle, and their bytes.
    fn quantized(out: usize, in_dim: usize) -> (QTensor, Vec<u8>) {
        let w = Tensor::from_vec(values(out * in_dim, 3), (out, in_dim), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let bytes = q.data().unwrap().into_owned();
        (q, bytes)
    }

    #[test]
    fn products_match_the_blocks_dot_products_exactly_computed() {
        for simd in [Simd::Baseline, Simd::detect()] {
            for (rows, out, in_dim) in [(1, 1, 32), (1, 7, 64), (3, 9, 576), (15, 16, 96)] {
                let (_, bytes) = quantized(out, in_dim);
                let x = QuantizedRows::quantize(&values(rows * in_dim, 11), rows, in_dim);
                let got = products_t(simd, &x, &bytes, out);
                for j in 0..out {
                    for r in 0..rows {
                        let (scales, xs) = x.row(r);
                        let w = &bytes[j * in_dim / 32 * BLOCK_BYTES..];
                        let want: f64 = (0..in_dim / 32)
                            .map(|b| {
                                let block = &w[b * BLOCK_BYTES..];
                                let dw = f16::from_bits(scale_bits(block));
                                let integer: i64 = (0..32)
                                    .map(|i| {
                                        i64::from(block[2 + i] as i8) * i64::from(xs[b * 32 + i])
                                    })
                                    .sum();
                                integer as f64 * f64::from(dw.to_f32()) * f64::from(scales[b])
                            })
                            .sum();
                        let got = got[j * rows + r] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{simd:?} rows {rows} out {out} in {in_dim}: ({j}, {r}) {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn products_match_candles_quantized_product() {
        let (rows, out, in_dim) = (5, 40, 576);
        let (q, bytes) = quantized(out, in_dim);
        let x = values(rows * in_dim, 29);
        let xt = Tensor::from_vec(x.clone(), (rows, in_dim), &Device::Cpu).unwrap();
        let want = QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap();
        let want: Vec<Vec<f32>> = want.to_vec2().unwrap();
        let got = products_t(
            Simd::detect(),
            &QuantizedRows::quantize(&x, rows, in_dim),
            &bytes,
            out,
        );
        for (r, want_row) in want.iter().enumerate() {
            for (j, w) in want_row.iter().enumerate() {
                let g = got[j * rows + r];
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "({r}, {j}): {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn zero_rows_quantise_to_zero() {
        let x = QuantizedRows::quantize(&[0.0; 64], 1, 64);
        assert!(x.scales.iter().all(|&d| d == 0.0) && x.values.iter().all(|&v| v == 0));
    }
}
