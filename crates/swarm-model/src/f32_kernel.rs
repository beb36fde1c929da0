//! Our own f32 kernel for `W xᵀ` at small batches (2 to 256 input rows): the weight is read
//! in place, in one pass, and each of its values is used for many input rows while it sits
//! in a register.
//!
//! Why not gemm: its AVX2 micro-kernel (16 x 6 outputs) packs the weight into panels on
//! every call, and in a batch-32 decode step on a Zen 4 it ran at ~55% of the CPU's FMA peak
//! (~30 of 55 GMAC/s a core, perf; docs/performance.md). Here the input is transposed once
//! per call (`in` x `rows`, a few hundred KiB at most) so that one input position's values
//! for all rows are contiguous, and a tile of weight rows x input rows keeps its sums in
//! registers: per input position, a few vector loads of the input and one broadcast per
//! weight row feed `weight rows x input rows / lanes` fused multiply-adds. With AVX-512 (32
//! registers) a tile is 12 weight rows x 32 input rows (24 sums of 16 lanes), 24 x 16 for a
//! block of 9-16 input rows; with AVX2 (16 registers) 6 x 16 (12 sums of 8 lanes); blocks of
//! up to 8 input rows take 12 x 8 on both.
//!
//! Two to four input rows run as dot products instead ([`narrow_products_t`]).

use crate::lanes::Lanes;
#[cfg(target_arch = "x86_64")]
use crate::lanes::{Ymm, Zmm};

/// Input rows, transposed and padded with zeros to whole tiles, so that the values of one
/// input position for all rows are contiguous.
pub(crate) struct TransposedRows {
    values: Vec<f32>,
    /// Columns of `values`: `rows` rounded up to [`COLUMN_PADDING`].
    cols: usize,
    rows: usize,
    in_dim: usize,
}

/// Every tile's columns lie within `rows` rounded up to this, so tiles load whole vectors.
const COLUMN_PADDING: usize = 32;

impl TransposedRows {
    /// `x` (rows, in_dim) row-major, transposed. `x` must hold `rows * in_dim` values.
    pub(crate) fn of(x: &[f32], rows: usize, in_dim: usize) -> Self {
        let cols = rows.div_ceil(COLUMN_PADDING) * COLUMN_PADDING;
        let mut values = vec![0f32; in_dim * cols];
        // In squares of TILE x TILE, so that both the rows read and the columns written stay
        // in L1: row by row, every write went to a new cache line (a stride of `cols`), and
        // this runs once per product while the other threads wait for it.
        const TILE: usize = 16;
        let x = &x[..rows * in_dim];
        for r0 in (0..rows).step_by(TILE) {
            for k0 in (0..in_dim).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    let row = &x[r * in_dim..][k0..(k0 + TILE).min(in_dim)];
                    for (k, &v) in (k0..).zip(row) {
                        values[k * cols + r] = v;
                    }
                }
            }
        }
        Self {
            values,
            cols,
            rows,
            in_dim,
        }
    }
}

/// Which vector instructions run the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Avx512,
    Avx2,
}

impl Kernel {
    /// The best kernel this CPU runs, if any.
    pub(crate) fn detect() -> Option<Self> {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|k| k.runs_here())
    }

    /// Whether this CPU has the kernel's instructions.
    pub(crate) fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Kernel::Avx512 => has!("avx512f") && has!("avx512vl"),
                Kernel::Avx2 => has!("avx2") && has!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// `W xᵀ` for `w` (len, in) row-major: (len, rows), row-major.
///
/// # Panics
/// If `w` holds fewer than `len * in` values, or this CPU lacks the kernel's instructions
/// (take it from [`Kernel::detect`]).
pub(crate) fn products_t(kernel: Kernel, x: &TransposedRows, w: &[f32], len: usize) -> Vec<f32> {
    assert!(w.len() >= len * x.in_dim, "weight shorter than {len} rows");
    assert!(kernel.runs_here(), "this CPU lacks {kernel:?}");
    let mut out = vec![0f32; len * x.rows];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the kernel's instructions (asserted above); `w` holds len x in
    // values and `out` len x rows.
    unsafe {
        match kernel {
            Kernel::Avx512 => products_t_avx512(x, w, len, &mut out),
            Kernel::Avx2 => products_t_avx2(x, w, len, &mut out),
        }
    }
    out
}

/// Input rows at a time in one pass over the weight, with AVX-512.
const AVX512_BLOCK: usize = 32;
/// Input rows at a time in one pass over the weight, with AVX2.
const AVX2_BLOCK: usize = 16;

/// Tiles by the width of each block of input rows: as many weight rows as leave room in the
/// registers for their sums (32 registers with AVX-512, 16 with AVX2), and for narrow blocks
/// (a batch of 8) the narrowest vectors that hold them, so that no lanes are spent on
/// padding.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn products_t_avx512(x: &TransposedRows, w: &[f32], len: usize, out: &mut [f32]) {
    for (w, len, out) in bands(x, w, len, out) {
        for c0 in (0..x.rows).step_by(AVX512_BLOCK) {
            let width = (x.rows - c0).min(AVX512_BLOCK);
            // SAFETY: the caller's promise; each block's columns lie within the padding.
            unsafe {
                match width {
                    17.. => column_block::<Zmm, 2, 12>(x, w, len, c0, width, out),
                    9..=16 => column_block::<Zmm, 1, 24>(x, w, len, c0, width, out),
                    _ => column_block::<Ymm, 1, 12>(x, w, len, c0, width, out),
                }
            }
        }
    }
}

/// As [`products_t_avx512`], with 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn products_t_avx2(x: &TransposedRows, w: &[f32], len: usize, out: &mut [f32]) {
    for (w, len, out) in bands(x, w, len, out) {
        for c0 in (0..x.rows).step_by(AVX2_BLOCK) {
            let width = (x.rows - c0).min(AVX2_BLOCK);
            // SAFETY: as above.
            unsafe {
                if width > 8 {
                    column_block::<Ymm, 2, 6>(x, w, len, c0, width, out);
                } else {
                    column_block::<Ymm, 1, 12>(x, w, len, c0, width, out);
                }
            }
        }
    }
}

/// Bytes of weight rows that one band holds: what stays in a core's L2 (512 KiB on Zen 3,
/// 1 MiB on Zen 4, 1-2 MiB on recent Intel) beside the transposed input.
const BAND_BYTES: usize = 192 << 10;

/// The weight cut into bands of whole rows, each with its rows of the output, so that the
/// blocks of input rows after the first read a band's weights from L2 rather than from L3
/// or memory (a batch of 32 is two blocks with AVX2). Bands are multiples of 24 rows, which
/// every tile height divides.
fn bands<'a>(
    x: &TransposedRows,
    w: &'a [f32],
    len: usize,
    out: &'a mut [f32],
) -> impl Iterator<Item = (&'a [f32], usize, &'a mut [f32])> {
    let k = x.in_dim.max(1);
    let band = (BAND_BYTES / (4 * k)).max(24) / 24 * 24;
    let rows = x.rows.max(1);
    w.chunks(band * k)
        .zip(out[..len * x.rows].chunks_mut(band * rows))
        .map(move |(w, out)| (w, out.len() / rows, out))
}

/// Up to this many input rows, [`narrow_products_t`] runs the product as dot products along
/// the input positions instead: each loaded vector of a weight row then feeds one FMA per
/// input row on full vectors, where a tile of [`products_t`] would fill a few lanes of each
/// and spend a broadcast on every weight value. Why not more: at 8 rows the tiles were as
/// fast or faster (decode_step f32, Zen 4, CPU time per step: batch 2 61-71 ms narrow vs
/// 76-86 tiled, batch 4 67-88 vs 83-88, batch 8 97-105 vs 88-94).
pub(crate) const NARROW_MAX_ROWS: usize = 4;

/// `W xᵀ` for `x` (rows, in) and `w` (len, in), both row-major: (len, rows), row-major, as
/// dot products along `in`, for 2 to [`NARROW_MAX_ROWS`] rows and `in` a multiple of 16;
/// `None` for other shapes.
///
/// # Panics
/// As [`products_t`].
pub(crate) fn narrow_products_t(
    kernel: Kernel,
    x: &[f32],
    rows: usize,
    in_dim: usize,
    w: &[f32],
    len: usize,
) -> Option<Vec<f32>> {
    if !(2..=NARROW_MAX_ROWS).contains(&rows)
        || !in_dim.is_multiple_of(16)
        || x.len() < rows * in_dim
    {
        return None;
    }
    assert!(w.len() >= len * in_dim, "weight shorter than {len} rows");
    assert!(kernel.runs_here(), "this CPU lacks {kernel:?}");
    let mut out = vec![0f32; len * rows];
    let shape = Narrow { x, in_dim, w, len };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the kernel's instructions (asserted above); `x` holds rows x in
    // values, `w` len x in, `out` len x rows, and `in` is a multiple of both kernels' lanes.
    unsafe {
        match kernel {
            Kernel::Avx512 => narrow_avx512(&shape, rows, &mut out),
            Kernel::Avx2 => narrow_avx2(&shape, rows, &mut out),
        }
    }
    Some(out)
}

/// The operands of [`narrow_products_t`].
struct Narrow<'a> {
    x: &'a [f32],
    in_dim: usize,
    w: &'a [f32],
    len: usize,
}

/// Weight rows per tile for each number of input rows: as many as leave room in the
/// registers for `weight rows x input rows` sums, the weight rows' vectors and one input
/// vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn narrow_avx512(p: &Narrow, rows: usize, out: &mut [f32]) {
    // SAFETY: the caller's promise.
    unsafe {
        match rows {
            2 => dot_tiles::<Zmm, 2, 8>(p, out),
            3 => dot_tiles::<Zmm, 3, 6>(p, out),
            _ => dot_tiles::<Zmm, 4, 6>(p, out),
        }
    }
}

/// As [`narrow_avx512`], with 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn narrow_avx2(p: &Narrow, rows: usize, out: &mut [f32]) {
    // SAFETY: the caller's promise.
    unsafe {
        match rows {
            2 => dot_tiles::<Ymm, 2, 4>(p, out),
            3 => dot_tiles::<Ymm, 3, 3>(p, out),
            _ => dot_tiles::<Ymm, 4, 3>(p, out),
        }
    }
}

/// The outputs of input rows `c0..c0 + width` for all weight rows, `MR` at a time (then one
/// at a time).
///
/// # Safety
/// The CPU has `V`'s instructions; `w` holds len x in values, `out` len x rows; `c0` is a
/// multiple of `NV * LANES`, which divides [`COLUMN_PADDING`], and `width` is at most
/// `NV * LANES`.
#[inline(always)]
unsafe fn column_block<V: Lanes, const NV: usize, const MR: usize>(
    x: &TransposedRows,
    w: &[f32],
    len: usize,
    c0: usize,
    width: usize,
    out: &mut [f32],
) {
    let mut i0 = 0;
    // SAFETY: the caller's promise; a tile of MR rows runs only where they all exist.
    unsafe {
        while i0 + MR <= len {
            tile::<V, NV, MR>(x, w, i0, c0, width, out);
            i0 += MR;
        }
        while i0 < len {
            tile::<V, NV, 1>(x, w, i0, c0, width, out);
            i0 += 1;
        }
    }
}

/// Outputs of weight rows `i0..i0 + MR` for input rows `c0..c0 + width` (width at most
/// `NV * LANES`).
///
/// # Safety
/// As [`column_block`], and rows `i0..i0 + MR` of `w` exist.
#[inline(always)]
unsafe fn tile<V: Lanes, const NV: usize, const MR: usize>(
    x: &TransposedRows,
    w: &[f32],
    i0: usize,
    c0: usize,
    width: usize,
    out: &mut [f32],
) {
    let (k, cols) = (x.in_dim, x.cols);
    // SAFETY: weight rows i0..i0 + MR (k values each) lie in `w`; the input's columns
    // c0..c0 + NV * LANES lie within the padded `cols` (c0 is a multiple of NV * LANES, which
    // divides the padding); the stores write columns c0..c0 + width <= rows of rows
    // i0..i0 + MR of `out`.
    unsafe {
        let mut acc = [[V::zero(); NV]; MR];
        let xp = x.values.as_ptr().add(c0);
        let wp = w.as_ptr().add(i0 * k);
        for kk in 0..k {
            let mut xv = [V::zero(); NV];
            for (v, xv) in xv.iter_mut().enumerate() {
                *xv = V::load(xp.add(kk * cols + v * V::LANES));
            }
            for (m, acc) in acc.iter_mut().enumerate() {
                let b = V::splat(wp.add(m * k + kk));
                for v in 0..NV {
                    acc[v] = acc[v].fma(b, xv[v]);
                }
            }
        }
        for (m, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                let lanes = width.saturating_sub(v * V::LANES).min(V::LANES);
                if lanes > 0 {
                    let dst = out.as_mut_ptr().add((i0 + m) * x.rows + c0 + v * V::LANES);
                    acc.store_first(dst, lanes);
                }
            }
        }
    }
}

/// All of [`narrow_products_t`]'s outputs: weight rows `R` at a time (then one at a time),
/// each with all `B` input rows.
///
/// # Safety
/// The CPU has `V`'s instructions; `p.x` holds B x in values, `p.w` len x in, `out` len x B;
/// `in` is a multiple of `LANES`.
#[inline(always)]
unsafe fn dot_tiles<V: Lanes, const B: usize, const R: usize>(p: &Narrow, out: &mut [f32]) {
    let mut j0 = 0;
    // SAFETY: the caller's promise; a tile of R rows runs only where they all exist.
    unsafe {
        while j0 + R <= p.len {
            dot_tile::<V, B, R>(p, j0, out);
            j0 += R;
        }
        while j0 < p.len {
            dot_tile::<V, B, 1>(p, j0, out);
            j0 += 1;
        }
    }
}

/// Weight rows `j0..j0 + R` with all `B` input rows: `R x B` running sums of `LANES` lanes
/// over the input positions, summed across lanes at the end.
///
/// # Safety
/// As [`dot_tiles`], and rows `j0..j0 + R` of `p.w` exist.
#[inline(always)]
unsafe fn dot_tile<V: Lanes, const B: usize, const R: usize>(
    p: &Narrow,
    j0: usize,
    out: &mut [f32],
) {
    let k = p.in_dim;
    // SAFETY: every load reads LANES values at position c < k (a multiple of LANES) of an
    // input row < B or of a weight row j0 + m < len; the results go to rows j0..j0 + R of
    // `out` (len x B).
    unsafe {
        let mut acc = [[V::zero(); B]; R];
        let (xp, wp) = (p.x.as_ptr(), p.w.as_ptr().add(j0 * k));
        for c in (0..k).step_by(V::LANES) {
            let mut wv = [V::zero(); R];
            for (m, wv) in wv.iter_mut().enumerate() {
                *wv = V::load(wp.add(m * k + c));
            }
            for b in 0..B {
                let xv = V::load(xp.add(b * k + c));
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    acc[b] = acc[b].fma(*wv, xv);
                }
            }
        }
        for (m, acc) in acc.iter().enumerate() {
            for (b, acc) in acc.iter().enumerate() {
                *out.get_unchecked_mut((j0 + m) * B + b) = acc.sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU has, tiled and (where it applies) narrow, against sums in f64,
    /// for row counts around the tiles' widths and weight heights around their heights.
    #[test]
    fn products_match_sums_in_f64() {
        let value = |i: usize| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5;
        let kernels: Vec<Kernel> = [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect();
        if kernels.is_empty() {
            eprintln!("no AVX2 or AVX-512 on this CPU: the kernel does not run here");
        }
        for kernel in kernels {
            for in_dim in [1, 5, 64, 576] {
                for rows in [2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 31, 32, 33, 64, 100] {
                    for len in [1, 5, 6, 7, 11, 12, 13, 25, 100] {
                        let x: Vec<f32> = (0..rows * in_dim).map(value).collect();
                        let w: Vec<f32> = (0..len * in_dim).map(|i| value(i + 11)).collect();
                        let transposed = TransposedRows::of(&x, rows, in_dim);
                        let tiled = products_t(kernel, &transposed, &w, len);
                        let narrow = narrow_products_t(kernel, &x, rows, in_dim, &w, len);
                        let narrow_applies = rows <= NARROW_MAX_ROWS && in_dim % 16 == 0;
                        assert_eq!(narrow.is_some(), narrow_applies, "in {in_dim}, rows {rows}");
                        for (path, got) in [("tiled", Some(tiled)), ("narrow", narrow)] {
                            let Some(got) = got else { continue };
                            assert_eq!(got.len(), len * rows);
                            for j in 0..len {
                                for r in 0..rows {
                                    let want: f64 = (0..in_dim)
                                        .map(|i| {
                                            x[r * in_dim + i] as f64 * w[j * in_dim + i] as f64
                                        })
                                        .sum();
                                    let got = got[j * rows + r] as f64;
                                    assert!(
                                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                        "{kernel:?} {path}, in {in_dim}, rows {rows}, len \
                                         {len}: ({j}, {r}) = {got}, want {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
