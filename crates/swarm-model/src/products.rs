//! Dense f32 products of a small batch on the CPU: several weights against one input in a
//! single parallel region, with the result's transpose and (for the MLP) the gate's SiLU
//! done by the thread that computed each piece.
//!
//! Why: a decode step at batch 32 is ~240 products, each a separate gemm call that wakes the
//! thread pool and lets it fall asleep again, plus a transpose and an element-wise pass run
//! on one thread between them. In a profile of that step ~10% of the CPU went to threads
//! parking and waking (`__schedule`), 4.5% to the single-threaded transpose. Here the
//! products that read the same input (q, k and v; gate and up) are cut into pieces of
//! output rows that the pool's threads take in one region; each piece is one single-threaded
//! gemm call with the weight read in place, and its result is written, transposed, straight
//! into the output. The weights keep their own storage (no concatenated copy), so a model
//! built from in-memory weights still shares them with the caller.

use candle_core::{CpuStorage, DType, Device, Storage, StorageRef, Tensor};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::simd::{self, Simd};

/// Up to this many rows (a decode step's batch, a short prompt), dense CPU products run here.
/// From one row on: candle runs a one-row product (batch-1 decode) on one thread, and one
/// thread cannot read SmolLM2's 540 MB of weights as fast as two (batch-1 step 57 -> 31 ms
/// on 2 cores, docs/performance.md).
///
/// Why not more: gemm computes into a column-major destination, so `y = x Wᵀ` with a
/// row-major `y` makes the weight gemm's left operand with the wrong stride, and gemm copies
/// ("packs") the whole weight on every call: for SmolLM2 at batch 32 that was ~23% of a
/// decode step (perf). Computing `yᵀ = W xᵀ` instead reads the weight in place as the right
/// operand (gemm packs a right operand only beyond 128 x 16 rows on x86) at the cost of
/// transposing `yᵀ`, `rows x out` copies; beyond a few hundred rows (prefill) gemm's own
/// blocking of `x Wᵀ` wins.
pub(crate) const SMALL_BATCH_MAX_ROWS: usize = 256;

/// Output rows per piece, at least: smaller pieces spend more on packing `x` (once per gemm
/// call) than they gain in balance.
const MIN_PIECE_ROWS: usize = 32;

/// Whether [`products`] and [`gated_product`] take `x` and these weights.
pub(crate) fn applies(x: &Tensor, weights: &[&Tensor]) -> bool {
    let rows = x.dims().iter().rev().skip(1).product::<usize>();
    (1..=SMALL_BATCH_MAX_ROWS).contains(&rows)
        && x.rank() == 2
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && weights
            .iter()
            .all(|w| w.dtype() == DType::F32 && w.rank() == 2 && w.device().is_cpu())
}

/// `x` (rows, in) times the transpose of each weight (out_i, in): one (rows, out_i) result
/// per weight.
pub(crate) fn products(x: &Tensor, weights: &[&Tensor]) -> Result<Vec<Tensor>> {
    let (rows, in_dim) = x.dims2()?;
    let outs = output_widths(weights, in_dim)?;
    let x = x.contiguous()?;
    let x_data = F32Slice::of(&x)?;
    let w_data: Vec<F32Slice> = weights
        .iter()
        .map(|w| F32Slice::of(w))
        .collect::<Result<_>>()?;
    let mut results: Vec<Vec<f32>> = outs.iter().map(|&o| vec![0f32; rows * o]).collect();
    {
        let targets: Vec<SharedOut> = results
            .iter_mut()
            .map(|r| SharedOut(r.as_mut_ptr()))
            .collect();
        let pieces = pieces(&outs);
        run_pieces(&pieces, |piece| {
            let w = &w_data[piece.weight].get()[piece.start * in_dim..][..piece.len * in_dim];
            let part = product_t(x_data.get(), w, rows, in_dim, piece.len);
            // SAFETY: pieces cover disjoint column ranges of their weight's result, which
            // outlives the region; every write below stays inside `start..start + len` of a
            // row of `rows x out` values.
            unsafe {
                write_transposed(
                    &part,
                    targets[piece.weight],
                    rows,
                    outs[piece.weight],
                    piece,
                )
            };
        });
    }
    results
        .into_iter()
        .zip(&outs)
        .map(|(r, &o)| Ok(Tensor::from_vec(r, (rows, o), &Device::Cpu)?))
        .collect()
}

/// `silu(x Gᵀ) ⊙ (x Uᵀ)`, the gated MLP's hidden activations, for `x` (rows, in) and the
/// gate and up weights (inter, in): each piece of output columns is computed for both
/// weights by the same thread and combined there.
pub(crate) fn gated_product(x: &Tensor, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (rows, in_dim) = x.dims2()?;
    let outs = output_widths(&[gate, up], in_dim)?;
    if outs[0] != outs[1] {
        return Err(ModelError::Generation(format!(
            "gated product: gate has {} outputs, up {}",
            outs[0], outs[1]
        )));
    }
    let inter = outs[0];
    let x = x.contiguous()?;
    let x_data = F32Slice::of(&x)?;
    let (g_data, u_data) = (F32Slice::of(gate)?, F32Slice::of(up)?);
    let mut result = vec![0f32; rows * inter];
    {
        let target = SharedOut(result.as_mut_ptr());
        let pieces = pieces(&[inter]);
        run_pieces(&pieces, |piece| {
            let range = piece.start * in_dim..(piece.start + piece.len) * in_dim;
            let g = product_t(
                x_data.get(),
                &g_data.get()[range.clone()],
                rows,
                in_dim,
                piece.len,
            );
            let u = product_t(x_data.get(), &u_data.get()[range], rows, in_dim, piece.len);
            // Same formula as candle's `silu`, so the model's numbers do not depend on the path.
            let hidden: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            // SAFETY: as in `products`: disjoint column ranges of a live `rows x inter` buffer.
            unsafe { write_transposed(&hidden, target, rows, inter, piece) };
        });
    }
    Ok(Tensor::from_vec(result, (rows, inter), &Device::Cpu)?)
}

/// Each weight's output width, after checking it reads `in_dim` inputs.
fn output_widths(weights: &[&Tensor], in_dim: usize) -> Result<Vec<usize>> {
    weights
        .iter()
        .map(|w| {
            let (out, inner) = w.dims2()?;
            if inner != in_dim {
                return Err(ModelError::Generation(format!(
                    "product of an input of width {in_dim} with a ({out}, {inner}) weight"
                )));
            }
            Ok(out)
        })
        .collect()
}

/// Output rows `start..start + len` of weight `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    weight: usize,
    start: usize,
    len: usize,
}

/// Cuts the weights' output rows into pieces: about four per thread over all weights, so
/// that a thread that finishes early finds work, none under [`MIN_PIECE_ROWS`] rows unless
/// its weight is smaller, and multiples of 16 rows (gemm's tile).
fn pieces(outs: &[usize]) -> Vec<Piece> {
    let threads = rayon::current_num_threads().max(1);
    let total: usize = outs.iter().sum();
    let target = (total / (4 * threads)).max(MIN_PIECE_ROWS).div_ceil(16) * 16;
    let mut pieces = Vec::new();
    for (weight, &out) in outs.iter().enumerate() {
        let count = out.div_ceil(target).max(1);
        let len = out.div_ceil(count).div_ceil(16) * 16;
        let mut start = 0;
        while start < out {
            let n = len.min(out - start);
            pieces.push(Piece {
                weight,
                start,
                len: n,
            });
            start += n;
        }
    }
    pieces
}

/// Runs `task` on every piece: in one parallel region when the pool has threads to share.
fn run_pieces(pieces: &[Piece], task: impl Fn(Piece) + Sync) {
    if rayon::current_num_threads() > 1 && pieces.len() > 1 {
        pieces.par_iter().for_each(|&p| task(p));
    } else {
        pieces.iter().for_each(|&p| task(p));
    }
}

/// `W xᵀ` for `w` (len, in) and `x` (rows, in), both row-major: (len, rows), row-major.
/// Single-threaded: the caller runs pieces side by side.
///
/// One row (batch-1 decode) is `len` dot products of weight rows with `x`, which
/// [`simd::dots`] streams through: gemm's path for it ran at ~60% of the speed at which
/// llama.cpp reads the same f32 weights (docs/performance.md).
fn product_t(x: &[f32], w: &[f32], rows: usize, in_dim: usize, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len * rows];
    if rows == 1 {
        simd::dots(Simd::detect(), &x[..in_dim], w, in_dim, 1.0, &mut out);
        return out;
    }
    debug_assert!(x.len() >= rows * in_dim && w.len() >= len * in_dim);
    // SAFETY: `out` holds len x rows values (row stride `rows`), `w` len x in (row stride
    // `in_dim`), `x` rows x in read as xᵀ (element (i, r) at r * in_dim + i); the asserted
    // lengths cover every index gemm reads or writes.
    unsafe {
        gemm::gemm(
            len,
            rows,
            in_dim,
            out.as_mut_ptr(),
            1,
            rows as isize,
            false,
            w.as_ptr(),
            1,
            in_dim as isize,
            x.as_ptr(),
            in_dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    out
}

/// A raw pointer to an output buffer that the pieces of one region write disjoint parts of.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the pieces of a region write disjoint column ranges of the buffer; the region ends
// before the buffer is read or freed.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Writes `part` ((len, rows), row-major) into columns `start..start + len` of the
/// (rows, width) row-major buffer at `target`, in tiles that keep reads and writes in L1.
///
/// # Safety
/// `target` must point to `rows * width` live f32 values that no one else reads or writes in
/// columns `piece.start..piece.start + piece.len` while this runs.
unsafe fn write_transposed(
    part: &[f32],
    target: SharedOut,
    rows: usize,
    width: usize,
    piece: Piece,
) {
    const TILE: usize = 16;
    for j0 in (0..piece.len).step_by(TILE) {
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                // SAFETY: row `r` < rows, columns start..start + len < width (the caller's
                // contract).
                let row = unsafe { target.0.add(r * width + piece.start) };
                for j in j0..(j0 + TILE).min(piece.len) {
                    unsafe { *row.add(j) = part[j * rows + r] };
                }
            }
        }
    }
}

/// The f32 values of a contiguous CPU tensor, borrowed from its storage.
struct F32Slice<'a> {
    storage: StorageRef<'a>,
    from: usize,
    to: usize,
}

impl<'a> F32Slice<'a> {
    fn of(t: &'a Tensor) -> Result<Self> {
        let (storage, layout) = t.storage_and_layout();
        let offsets = layout.contiguous_offsets();
        let ok = matches!(&*storage, Storage::Cpu(CpuStorage::F32(_)));
        match (ok, offsets) {
            (true, Some((from, to))) => Ok(Self { storage, from, to }),
            _ => Err(ModelError::Generation(
                "small-batch products take contiguous f32 CPU tensors".to_string(),
            )),
        }
    }

    fn get(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.from..self.to],
            // `of` only builds this from f32 CPU storage.
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        // A small LCG: the test needs varied values, not good randomness.
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap();
        diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-12)
    }

    #[test]
    fn products_match_candle_for_uneven_widths() {
        // One row (batch-1 decode) takes gemm's other path: dst is then a single column.
        for rows in [1, 7] {
            let x = random((rows, 40), 1);
            let ws = [random((96, 40), 2), random((33, 40), 3), random((1, 40), 4)];
            let refs: Vec<&Tensor> = ws.iter().collect();
            assert!(applies(&x, &refs));
            let ys = products(&x, &refs).unwrap();
            for (y, w) in ys.iter().zip(&ws) {
                let expected = x.matmul(&w.t().unwrap()).unwrap();
                assert_eq!(y.dims(), expected.dims());
                assert!(max_rel_diff(y, &expected) < 1e-5);
            }
        }
    }

    #[test]
    fn gated_product_is_silu_of_gate_times_up() {
        let x = random((32, 64), 5);
        let (g, u) = (random((200, 64), 6), random((200, 64), 7));
        let got = gated_product(&x, &g, &u).unwrap();
        let gate = x.matmul(&g.t().unwrap()).unwrap().silu().unwrap();
        let up = x.matmul(&u.t().unwrap()).unwrap();
        assert!(max_rel_diff(&got, &(gate * up).unwrap()) < 1e-5);
    }

    #[test]
    fn pieces_cover_every_row_once() {
        for outs in [
            vec![576, 192, 192],
            vec![1536, 1536],
            vec![49152],
            vec![5, 17],
        ] {
            let pieces = pieces(&outs);
            for (w, &out) in outs.iter().enumerate() {
                let mut next = 0;
                for p in pieces.iter().filter(|p| p.weight == w) {
                    assert_eq!(p.start, next);
                    assert!(p.len > 0);
                    next += p.len;
                }
                assert_eq!(next, out);
            }
        }
    }

    #[test]
    fn mismatched_widths_are_refused() {
        let x = random((4, 8), 8);
        let w = random((6, 9), 9);
        let err = products(&x, &[&w]).unwrap_err().to_string();
        assert!(err.contains("width 8"), "{err}");
        let err = gated_product(&x, &random((6, 8), 1), &random((5, 8), 2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gate has 6 outputs, up 5"), "{err}");
    }
}
