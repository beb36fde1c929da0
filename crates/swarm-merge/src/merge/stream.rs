//! One input tensor read as f32 in element ranges, so that a merge holds a few chunks of each
//! input rather than whole tensors.
//!
//! Safetensors inputs (HF dirs) are read chunk by chunk: f32 tensors as views of the mapped
//! file ([`TensorInput::view`], no copy), others with positioned reads into the chunk buffer;
//! other inputs (GGUF files, hub models, in-memory weights) are loaded whole
//! through swarm-model, which dequantises them, and served from that buffer.

use candle_core::{DType, Device};
use swarm_model::TensorSource;

use crate::error::{MergeError, Result};
use crate::reader::SafetensorsReader;

/// Elements per chunk: 256 KiB of f32, so the chunks of a few inputs stay in the L2/L3
/// caches while they are combined, and a read is big enough that the syscall is noise.
pub(crate) const CHUNK: usize = 1 << 16;

/// Elements of a mapped tensor dropped from the resident set at a time, once a pass has read
/// past them (see [`TensorInput::view`]): 4 MiB of f32. Dropping every window after use cost
/// 0.05-0.15 s of system time per merge (a TLB flush per window); keeping a whole tensor of
/// each input mapped made the peak memory grow with the number of inputs. If another
/// thread still reads a dropped window, it only maps it again.
const RELEASE_WINDOW: usize = 16 * CHUNK;

/// Views shorter than this are read with `pread` rather than mapped: a fault on a freshly
/// written file maps a whole large folio (up to MiBs), so TIES's scattered 2 KiB samples
/// (`trim.rs`) mapped most of the embedding of every input (332 MiB peak) before its pass.
const MAPPED_MIN: usize = 4096;

/// Buffers of one thread's reads in a parallel pass over a tensor: one chunk of values, the
/// buffers two views fall back on (see [`TensorInput::view`]) and raw bytes.
#[derive(Default)]
pub(crate) struct ReadScratch {
    pub(crate) values: Vec<f32>,
    pub(crate) a: Vec<f32>,
    pub(crate) b: Vec<f32>,
    pub(crate) bytes: Vec<u8>,
}

/// One tensor of one input model, readable in element ranges as f32.
pub(crate) enum TensorInput<'a> {
    File {
        reader: &'a SafetensorsReader,
        name: &'a str,
        round_to: Option<DType>,
    },
    Loaded {
        name: &'a str,
        values: Vec<f32>,
    },
}

impl<'a> TensorInput<'a> {
    /// Opens tensor `name`, to be read from `file` when there is one, else loaded from
    /// `source`. Values are rounded to `round_to` (mergekit's `dtype`) before use.
    pub(crate) fn open(
        file: Option<&'a SafetensorsReader>,
        source: &dyn TensorSource,
        name: &'a str,
        round_to: Option<DType>,
    ) -> Result<Self> {
        if let Some(reader) = file {
            return Ok(TensorInput::File {
                reader,
                name,
                round_to,
            });
        }
        let mut t = source.load(name, &Device::Cpu)?;
        if let Some(d) = round_to {
            t = t.to_dtype(d)?;
        }
        Ok(TensorInput::Loaded {
            name,
            values: t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        })
    }

    /// Elements `start..start + len`: a view of the mapped file where the tensor is stored as
    /// f32 and used as is and the view is not small, else read (or copied) into `buf`, through `bytes`.
    pub(crate) fn view<'s>(
        &'s self,
        start: usize,
        len: usize,
        buf: &'s mut Vec<f32>,
        bytes: &mut Vec<u8>,
    ) -> Result<&'s [f32]> {
        match self {
            TensorInput::File {
                reader,
                name,
                round_to,
            } if len >= MAPPED_MIN && !matches!(round_to, Some(DType::BF16 | DType::F16)) => {
                if let Some(view) = reader.f32_view(name, start, len)? {
                    // A pass reads a tensor from its start on (each thread its own run of
                    // chunks): the window two behind the one this view ends in is read.
                    let end = (start + len) / RELEASE_WINDOW;
                    if end > start / RELEASE_WINDOW && end >= 2 {
                        reader.release_range(name, (end - 2) * RELEASE_WINDOW, RELEASE_WINDOW);
                    }
                    return Ok(view);
                }
            }
            TensorInput::Loaded { name, values } => {
                let src = values.get(start..start + len).ok_or_else(|| {
                    MergeError::tensor(
                        *name,
                        format!(
                            "elements {start}..{} requested from a tensor of {}",
                            start + len,
                            values.len()
                        ),
                    )
                })?;
                return Ok(src);
            }
            _ => {}
        }
        buf.resize(len, 0.0);
        self.read_shared(start, buf, bytes)?;
        Ok(buf)
    }

    /// Fills `dst` with elements `start..start + dst.len()`, through a shared reference and
    /// with the caller's byte scratch (kept from tensor to tensor), so that several threads
    /// can read pieces of the same tensor at once (the reads are positioned, with no shared
    /// file offset).
    pub(crate) fn read_shared(
        &self,
        start: usize,
        dst: &mut [f32],
        bytes: &mut Vec<u8>,
    ) -> Result<()> {
        match self {
            TensorInput::File {
                reader,
                name,
                round_to,
            } => {
                reader.read_f32(name, start, dst, bytes)?;
                round(dst, *round_to);
                Ok(())
            }
            TensorInput::Loaded { name, values } => {
                let src = values.get(start..start + dst.len()).ok_or_else(|| {
                    MergeError::tensor(
                        *name,
                        format!(
                            "elements {start}..{} requested from a tensor of {}",
                            start + dst.len(),
                            values.len()
                        ),
                    )
                })?;
                dst.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

impl Drop for TensorInput<'_> {
    /// The tensor's mapped pages leave the resident set (see `mapping.rs`): it is merged.
    fn drop(&mut self) {
        if let TensorInput::File { reader, name, .. } = self {
            reader.release(name);
        }
    }
}

/// Rounds f32 values to a 16-bit float type and back, as converting the input tensor to that
/// dtype would (round to nearest even).
fn round(values: &mut [f32], to: Option<DType>) {
    match to {
        Some(DType::BF16) => values
            .iter_mut()
            .for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        Some(DType::F16) => values
            .iter_mut()
            .for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        _ => {}
    }
}
