//! ggml tensor types and their dequantisation to f32.
//!
//! The types SmolLM2 ships (F32, Q8_0, Q4_1) and the common ones (F16, BF16, Q4_0, Q4_K,
//! Q6_K) are decoded here, in safe Rust from little-endian bytes, following ggml's
//! `dequantize_row_*` (ggml-quants.c) block by block: no alignment requirement on the data and
//! no `unsafe`. The rarer types candle can decode (Q5_0, Q5_1, Q2_K, Q3_K, Q5_K) go through
//! `candle_core::quantized`. Blocks are decoded in parallel.

use half::{bf16, f16};
use rayon::prelude::*;

/// The ggml type ids GGUF files use (`enum ggml_type` in ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

/// ggml's super-block size for the k-quants.
const QK_K: usize = 256;

impl GgmlType {
    pub(crate) const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::BF16,
    ];

    /// The type with ggml id `id`, if we can decode it.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// ggml's name for the type (`Q4_K`, not `Q4K`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// "F32 (0), F16 (1), ..." for error messages.
    pub fn known_list() -> String {
        Self::ALL
            .iter()
            .map(|t| format!("{} ({})", t.name(), t.id()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K,
        }
    }

    /// Bytes per block (`sizeof(block_*)` in ggml-common.h).
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 2 + 16,
            GgmlType::Q4_1 => 2 + 2 + 16,
            GgmlType::Q5_0 => 2 + 4 + 16,
            GgmlType::Q5_1 => 2 + 2 + 4 + 16,
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q2K => QK_K / 16 + QK_K / 4 + 2 + 2,
            GgmlType::Q3K => QK_K / 8 + QK_K / 4 + 12 + 2,
            GgmlType::Q4K => 2 + 2 + 12 + QK_K / 2,
            GgmlType::Q5K => 2 + 2 + 12 + QK_K / 8 + QK_K / 2,
            GgmlType::Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// The matching candle type, for the types we hand to candle and for tests.
    pub fn to_candle(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType as C;
        match self {
            GgmlType::F32 => C::F32,
            GgmlType::F16 => C::F16,
            GgmlType::BF16 => C::BF16,
            GgmlType::Q4_0 => C::Q4_0,
            GgmlType::Q4_1 => C::Q4_1,
            GgmlType::Q5_0 => C::Q5_0,
            GgmlType::Q5_1 => C::Q5_1,
            GgmlType::Q8_0 => C::Q8_0,
            GgmlType::Q2K => C::Q2K,
            GgmlType::Q3K => C::Q3K,
            GgmlType::Q4K => C::Q4K,
            GgmlType::Q5K => C::Q5K,
            GgmlType::Q6K => C::Q6K,
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes `bytes` (whole blocks of `ty`) to `elems` f32 values, or says why it cannot.
///
/// `bytes.len()` must equal `elems / block_size * block_bytes`; the reader guarantees it, and
/// it is checked again here because the decoders index by it.
pub fn dequantize(ty: GgmlType, bytes: &[u8], elems: usize) -> Result<Vec<f32>, String> {
    let (block, size) = (ty.block_size(), ty.block_bytes());
    if !elems.is_multiple_of(block) || elems / block * size != bytes.len() {
        return Err(format!(
            "{} data of {} bytes does not hold {elems} elements",
            ty.name(),
            bytes.len()
        ));
    }
    let decode: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        GgmlType::BF16 => |b, y| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4K => q4_k,
        GgmlType::Q6K => q6_k,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q5K => {
            return dequantize_with_candle(ty, bytes, elems);
        }
    };
    let mut out = vec![0f32; elems];
    // Chunks of many blocks keep rayon's per-task overhead small for the 1-element types.
    let per_task = (65_536 / block).max(1);
    out.par_chunks_mut(block * per_task)
        .zip(bytes.par_chunks(size * per_task))
        .for_each(|(ys, bs)| {
            for (y, b) in ys.chunks_exact_mut(block).zip(bs.chunks_exact(size)) {
                decode(b, y);
            }
        });
    Ok(out)
}

/// `block_q4_0`: f16 scale `d`, 16 bytes of 4-bit quants; low nibbles are elements 0-15,
/// high nibbles 16-31; value = (q - 8) * d.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1`: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles; value = q * d + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// `block_q8_0`: f16 scale `d`, 32 signed bytes; value = q * d.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = (q as i8) as f32 * d;
    }
}

/// The 6-bit scale and minimum of sub-block `j` from the 12 packed bytes of a Q4_K/Q5_K
/// block (`get_scale_min_k4` in ggml).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K`: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales/mins for 8 sub-blocks
/// of 32, then 128 bytes of nibbles; each 64 elements use 32 bytes, low nibbles first.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..16 + QK_K / 2];
    for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `block_q6_K`: 128 bytes of low nibbles `ql`, 64 bytes of high 2-bit pairs `qh`, 16 signed
/// 8-bit scales, f16 `d`; each half of 128 elements uses 64 `ql`, 32 `qh` and 8 scales.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &ql_all[64 * half..64 * half + 64];
        let qh = &qh_all[32 * half..32 * half + 32];
        let sc = &sc_all[8 * half..8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
}

/// The types we do not decode ourselves go through candle, which casts the bytes to its
/// block structs: give it a copy in a buffer aligned for them (their fields are at most
/// 4-byte aligned) so the cast is sound whatever the file's alignment.
fn dequantize_with_candle(ty: GgmlType, bytes: &[u8], elems: usize) -> Result<Vec<f32>, String> {
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(4)) {
        let mut le = [0u8; 4];
        le[..chunk.len()].copy_from_slice(chunk);
        *w = u32::from_ne_bytes(le);
    }
    // Viewed as bytes again in native order, so they are the file's bytes.
    let view: &[u8] = u32s_as_bytes(&words, bytes.len());
    let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
        ty.to_candle(),
        view,
        vec![elems],
        &candle_core::Device::Cpu,
    )
    .map_err(|e| format!("cannot decode {}: {e}", ty.name()))?;
    q.dequantize(&candle_core::Device::Cpu)
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| format!("cannot decode {}: {e}", ty.name()))
}

/// The first `len` bytes of a u32 buffer, as bytes.
fn u32s_as_bytes(words: &[u32], len: usize) -> &[u8] {
    assert!(len <= words.len() * 4, "caller sized the buffer");
    // SAFETY: u8 has no alignment or validity requirements, the pointer comes from a live
    // slice of `words.len() * 4 >= len` initialised bytes, and the lifetime is tied to it.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len) }
}
