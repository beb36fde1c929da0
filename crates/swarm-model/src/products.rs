//! Products of a small batch on the CPU with dense f32 or Q8_0 weights: several weights
//! against one input in a single parallel region, with the result's transpose and (for the
//! MLP) the gate's SiLU done by the thread that computed each piece.
//!
//! Why: a decode step at batch 32 is ~240 products, each a separate gemm call that wakes the
//! thread pool and lets it fall asleep again, plus a transpose and an element-wise pass run
//! on one thread between them. In a profile of that step ~10% of the CPU went to threads
//! parking and waking (`__schedule`), 4.5% to the single-threaded transpose. Here the
//! products that read the same input (q, k and v; gate and up) are cut into pieces of
//! output rows that the pool's threads take in one region; each piece is one single-threaded
//! kernel call with the weight read in place (our own f32 kernel, [`crate::f32_kernel`],
//! where the CPU has AVX2 or AVX-512, else gemm), and its result is written, transposed,
//! straight into the output. The weights keep their own storage (no concatenated copy), so
//! a model built from in-memory weights still shares them with the caller.

use std::borrow::Cow;
use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, DType, Device, Storage, StorageRef, Tensor};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::f32_kernel::{self, TransposedRows};
use crate::q8_0::{self, QuantizedRows};
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
/// blocking of `x Wᵀ` wins, also over our own kernel (prefill of 32 x 500 tokens through it:
/// 132-172 against 190-205 tok/s, docs/performance.md).
pub(crate) const SMALL_BATCH_MAX_ROWS: usize = 256;

/// Output rows per piece, at least: smaller pieces spend more on packing `x` (once per gemm
/// call) than they gain in balance.
const MIN_PIECE_ROWS: usize = 32;

/// Up to this many rows, a product with Q8_0 weights quantises the input to Q8_0 too and
/// runs on integers ([`q8_0::products_t`]): the fastest where the step is bound by reading
/// the weights (decode at small batches). Beyond, each thread widens its piece of the weight
/// to f32, [`DEQUANTIZED_ROWS`] rows at a time (they stay in cache), and runs the f32 kernel
/// on them: one byte-product instruction per 32 products does not keep up with an f32 GEMM
/// once the weights are reused across many rows (decode_step q8_0, 2026-12-03, Zen 4: batch
/// 8 37-44 ms per step on integers vs 51-58 ms widened, batch 16 even, batch 32 145-164 vs
/// 122-125 ms).
const INTEGER_MAX_ROWS: usize = 15;

/// Weight rows widened at a time beyond [`INTEGER_MAX_ROWS`]: 256 x 576 f32 (SmolLM2's
/// hidden width) is 576 KiB, within a Zen 4 core's L2 (1 MiB). Fewer rows per chunk cost
/// more in packing the input once per chunk (64 rows: batch-32 step ~130 vs ~120 ms).
const DEQUANTIZED_ROWS: usize = 256;

thread_local! {
    /// The rows of a Q8_0 weight a thread has widened to f32 (see [`INTEGER_MAX_ROWS`]).
    static WIDENED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A weight (out, in) as the products here read it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ProductWeight<'a> {
    F32(&'a Tensor),
    /// In GGML's Q8_0 blocks, row after row.
    Q8_0(&'a QTensor),
}

impl ProductWeight<'_> {
    fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            ProductWeight::F32(w) => Ok(w.dims2()?),
            ProductWeight::Q8_0(q) => Ok(q.shape().dims2()?),
        }
    }

    /// Whether the products here read this weight.
    fn runs(&self) -> bool {
        match self {
            ProductWeight::F32(w) => {
                w.dtype() == DType::F32 && w.rank() == 2 && w.device().is_cpu()
            }
            ProductWeight::Q8_0(q) => {
                q.dtype() == GgmlDType::Q8_0
                    && q.rank() == 2
                    && q.device().is_cpu()
                    && q.shape().dims()[1].is_multiple_of(q8_0::BLOCK_VALUES)
            }
        }
    }
}

/// Whether [`products`] and [`gated_product`] take `x` and these weights.
pub(crate) fn applies(x: &Tensor, weights: &[ProductWeight]) -> bool {
    let rows = x.dims().iter().rev().skip(1).product::<usize>();
    (1..=SMALL_BATCH_MAX_ROWS).contains(&rows)
        && x.rank() == 2
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && weights.iter().all(ProductWeight::runs)
}

/// `x` (rows, in) times the transpose of each weight (out_i, in): one (rows, out_i) result
/// per weight.
pub(crate) fn products(x: &Tensor, weights: &[ProductWeight]) -> Result<Vec<Tensor>> {
    let (rows, in_dim) = x.dims2()?;
    let outs = output_widths(weights, in_dim)?;
    let x = x.contiguous()?;
    let input = Input::of(&x)?;
    let w_data: Vec<Operand> = weights.iter().map(Operand::of).collect::<Result<_>>()?;
    let mut results: Vec<Vec<f32>> = outs.iter().map(|&o| vec![0f32; rows * o]).collect();
    {
        let targets: Vec<SharedOut> = results
            .iter_mut()
            .map(|r| SharedOut(r.as_mut_ptr()))
            .collect();
        let pieces = pieces(&outs);
        run_pieces(&pieces, |piece| {
            let part = w_data[piece.weight].product_t(&input, piece);
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
pub(crate) fn gated_product(x: &Tensor, gate: ProductWeight, up: ProductWeight) -> Result<Tensor> {
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
    let input = Input::of(&x)?;
    let (g_data, u_data) = (Operand::of(&gate)?, Operand::of(&up)?);
    let mut result = vec![0f32; rows * inter];
    {
        let target = SharedOut(result.as_mut_ptr());
        let pieces = pieces(&[inter]);
        run_pieces(&pieces, |piece| {
            let g = g_data.product_t(&input, piece);
            let u = u_data.product_t(&input, piece);
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
fn output_widths(weights: &[ProductWeight], in_dim: usize) -> Result<Vec<usize>> {
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

/// The input rows as the weights of one call read them: f32, and quantised to Q8_0 blocks
/// once for all pieces when a Q8_0 weight runs on integers.
struct Input<'a> {
    values: F32Slice<'a>,
    /// Quantised by the first piece that needs it, then shared by all.
    quantized: OnceLock<QuantizedRows>,
    /// Transposed by the first piece that needs it, then shared by all.
    transposed: OnceLock<TransposedRows>,
    rows: usize,
    in_dim: usize,
}

impl<'a> Input<'a> {
    fn of(x: &'a Tensor) -> Result<Self> {
        let (rows, in_dim) = x.dims2()?;
        Ok(Self {
            values: F32Slice::of(x)?,
            quantized: OnceLock::new(),
            transposed: OnceLock::new(),
            rows,
            in_dim,
        })
    }

    fn quantized(&self) -> &QuantizedRows {
        self.quantized
            .get_or_init(|| QuantizedRows::quantize(self.values.get(), self.rows, self.in_dim))
    }

    fn transposed(&self) -> &TransposedRows {
        self.transposed
            .get_or_init(|| TransposedRows::of(self.values.get(), self.rows, self.in_dim))
    }
}

/// A weight's values, borrowed from its storage.
enum Operand<'a> {
    F32(F32Slice<'a>),
    /// Q8_0 blocks, row after row.
    Q8_0(Cow<'a, [u8]>),
}

impl<'a> Operand<'a> {
    fn of(w: &ProductWeight<'a>) -> Result<Self> {
        match *w {
            ProductWeight::F32(w) => Ok(Operand::F32(F32Slice::of(w)?)),
            ProductWeight::Q8_0(q) => Ok(Operand::Q8_0(q.data()?)),
        }
    }

    /// `W xᵀ` for the piece's output rows of this weight: (len, rows), row-major.
    fn product_t(&self, x: &Input, piece: Piece) -> Vec<f32> {
        let (rows, in_dim) = (x.rows, x.in_dim);
        match self {
            Operand::Q8_0(bytes) => {
                let row_bytes = in_dim / q8_0::BLOCK_VALUES * q8_0::BLOCK_BYTES;
                let w = &bytes[piece.start * row_bytes..][..piece.len * row_bytes];
                if rows <= INTEGER_MAX_ROWS {
                    return q8_0::products_t(Simd::detect(), x.quantized(), w, piece.len);
                }
                let mut out = Vec::with_capacity(piece.len * rows);
                WIDENED.with_borrow_mut(|dense| {
                    // Kept per thread: a fresh buffer per piece spent ~10% of a batch-32
                    // step in the kernel clearing new pages (perf).
                    dense.resize(dense.len().max(DEQUANTIZED_ROWS * in_dim), 0.0);
                    for chunk in w.chunks(DEQUANTIZED_ROWS * row_bytes) {
                        let dense = &mut dense[..chunk.len() / row_bytes * in_dim];
                        q8_0::dequantize(Simd::detect(), chunk, dense);
                        out.extend(dense_product_t(x, dense, chunk.len() / row_bytes));
                    }
                });
                out
            }
            Operand::F32(w) => {
                let w = &w.get()[piece.start * in_dim..][..piece.len * in_dim];
                dense_product_t(x, w, piece.len)
            }
        }
    }
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

/// `W xᵀ` for `w` (len, in) f32 row-major: (len, rows), row-major. Single-threaded: the
/// caller runs pieces side by side. Several rows run in our own kernel where the CPU has
/// AVX2 or AVX-512 ([`f32_kernel`]), else in gemm; one row in [`product_t`].
fn dense_product_t(x: &Input, w: &[f32], len: usize) -> Vec<f32> {
    if x.rows > 1 {
        if let Some(kernel) = f32_kernel::Kernel::detect() {
            let values = x.values.get();
            if let Some(out) =
                f32_kernel::narrow_products_t(kernel, values, x.rows, x.in_dim, w, len)
            {
                return out;
            }
            return f32_kernel::products_t(kernel, x.transposed(), w, len);
        }
    }
    product_t(x.values.get(), w, x.rows, x.in_dim, len)
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
            let refs: Vec<ProductWeight> = ws.iter().map(ProductWeight::F32).collect();
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
        let got = gated_product(&x, ProductWeight::F32(&g), ProductWeight::F32(&u)).unwrap();
        let gate = x.matmul(&g.t().unwrap()).unwrap().silu().unwrap();
        let up = x.matmul(&u.t().unwrap()).unwrap();
        assert!(max_rel_diff(&got, &(gate * up).unwrap()) < 1e-5);
    }

    #[test]
    fn q8_0_products_match_candles_quantized_product() {
        use candle_core::quantized::QMatMul;
        use candle_core::Module;
        let quantize =
            |w: &Tensor| std::sync::Arc::new(QTensor::quantize(w, GgmlDType::Q8_0).unwrap());
        for rows in [1, 4, INTEGER_MAX_ROWS, INTEGER_MAX_ROWS + 1, 80] {
            let x = random((rows, 96), 10);
            let ws = [
                random((96, 96), 11),
                random((33, 96), 12),
                random((200, 96), 13),
            ];
            let qs: Vec<_> = ws.iter().map(quantize).collect();
            // A Q8_0 weight beside an f32 one in the same call.
            let weights = [
                ProductWeight::Q8_0(&qs[0]),
                ProductWeight::F32(&ws[1]),
                ProductWeight::Q8_0(&qs[2]),
            ];
            assert!(applies(&x, &weights));
            let ys = products(&x, &weights).unwrap();
            for (i, y) in ys.iter().enumerate() {
                // Up to INTEGER_MAX_ROWS the input is quantised as candle's kernel does it;
                // beyond, the weight is widened and the product is exact in f32.
                let expected = match i {
                    1 => x.matmul(&ws[1].t().unwrap()).unwrap(),
                    _ if rows > INTEGER_MAX_ROWS => {
                        let w = qs[i].dequantize(&Device::Cpu).unwrap();
                        x.matmul(&w.t().unwrap()).unwrap()
                    }
                    _ => QMatMul::from_arc(qs[i].clone())
                        .unwrap()
                        .forward(&x)
                        .unwrap(),
                };
                assert!(max_rel_diff(y, &expected) < 1e-5, "rows {rows}, weight {i}");
            }
            let got = gated_product(&x, weights[2], ProductWeight::Q8_0(&qs[2])).unwrap();
            let dense = qs[2].dequantize(&Device::Cpu).unwrap();
            let h = x.matmul(&dense.t().unwrap()).unwrap();
            let want = (h.silu().unwrap() * &h).unwrap();
            // Against the dequantised weight: the input's own quantisation differs a little.
            assert!(max_rel_diff(&got, &want) < 2e-2, "rows {rows}");
        }
        // Beyond SMALL_BATCH_MAX_ROWS (prefill) the caller dequantises.
        let q = quantize(&random((32, 96), 14));
        let x = random((SMALL_BATCH_MAX_ROWS + 1, 96), 15);
        assert!(!applies(&x, &[ProductWeight::Q8_0(&q)]));
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
        let err = products(&x, &[ProductWeight::F32(&w)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("width 8"), "{err}");
        let (g, u) = (random((6, 8), 1), random((5, 8), 2));
        let err = gated_product(&x, ProductWeight::F32(&g), ProductWeight::F32(&u))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gate has 6 outputs, up 5"), "{err}");
    }
}
