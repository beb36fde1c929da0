//! Streaming output: a safetensors file written one tensor at a time, and an HF model dir
//! that appears all at once or not at all.
//!
//! A safetensors header lists every tensor's dtype, shape and byte range before the data, so
//! a writer that never holds the whole model needs the shapes first. Every producer here knows
//! them in advance (from the inputs' shapes), writes the header, then each tensor's bytes as it
//! is computed. Everything goes to a temporary path that is renamed into place at the end;
//! dropping a writer before [`HfDirWriter::finish`] removes what it wrote.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use candle_core::{DType, Device, Tensor};

use crate::error::{MergeError, Result};
use crate::sink::Sink;

/// The name, shape and stored dtype of one tensor of an output file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, dtype: DType) -> Self {
        Self {
            name: name.into(),
            shape,
            dtype,
        }
    }
    fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// safetensors' name for a dtype; the dtypes we write.
pub(crate) fn dtype_code(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        _ => return None,
    })
}

/// Parses a dtype as written in configs: `float32`/`fp32`/`F32`, `bfloat16`, `float16`.
pub fn parse_dtype(text: &str) -> Option<DType> {
    Some(match text.to_ascii_lowercase().as_str() {
        "float32" | "fp32" | "f32" => DType::F32,
        "bfloat16" | "bf16" => DType::BF16,
        "float16" | "fp16" | "f16" | "half" => DType::F16,
        "float64" | "f64" => DType::F64,
        _ => return None,
    })
}

/// HF's `torch_dtype` spelling of a dtype.
pub fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// A safetensors file written tensor by tensor, in the order of its specs.
pub struct SafetensorsStreamWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<Output>,
    specs: Vec<TensorSpec>,
    next: usize,
}

impl SafetensorsStreamWriter {
    /// Writes the header of `path` (to a temporary sibling); tensors must then be written in
    /// the order of `specs`. `metadata` goes into the header's `__metadata__`.
    pub fn create(
        path: &Path,
        specs: Vec<TensorSpec>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".to_string(), serde_json::json!(metadata));
        }
        let mut offset = 0usize;
        for spec in &specs {
            let code = dtype_code(spec.dtype).ok_or_else(|| {
                MergeError::tensor(&spec.name, format!("cannot write dtype {:?}", spec.dtype))
            })?;
            let end = offset + spec.byte_len();
            let entry = serde_json::json!({
                "dtype": code, "shape": spec.shape, "data_offsets": [offset, end]
            });
            if header.insert(spec.name.clone(), entry).is_some() {
                return Err(MergeError::tensor(
                    &spec.name,
                    "appears twice in the output",
                ));
            }
            offset = end;
        }
        let mut json = serde_json::Value::Object(header).to_string().into_bytes();
        // Pad the header with spaces so the data starts 8-byte aligned, as the reference
        // implementation does.
        while json.len() & 7 != 0 {
            json.push(b' ');
        }
        let tmp = temp_sibling(path);
        let sink = Sink::create(&tmp).map_err(|e| MergeError::io(&tmp, e))?;
        let header = Output::new(sink).and_then(|mut out| {
            out.write_all(&(json.len() as u64).to_le_bytes())?;
            out.write_all(&json)?;
            Ok(out)
        });
        let out = match header {
            Ok(out) => out,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(MergeError::io(&tmp, e));
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            specs,
            next: 0,
        })
    }

    /// The specs still to be written, in order.
    pub fn remaining(&self) -> &[TensorSpec] {
        &self.specs[self.next..]
    }

    /// Checks that `name` with `shape` is the next spec and returns that spec's dtype and the
    /// output stream.
    fn next_spec(&mut self, name: &str, shape: &[usize]) -> Result<(DType, &mut Output)> {
        let spec = self.specs.get(self.next).ok_or_else(|| {
            MergeError::tensor(name, "written after every tensor of the file was written")
        })?;
        if spec.name != name {
            return Err(MergeError::tensor(
                name,
                format!("written out of order: expected `{}` next", spec.name),
            ));
        }
        if shape != spec.shape.as_slice() {
            return Err(MergeError::tensor(
                name,
                format!(
                    "has shape {shape:?}, the output header says {:?}",
                    spec.shape
                ),
            ));
        }
        let dtype = spec.dtype;
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| MergeError::tensor(name, "writer already closed"))?;
        Ok((dtype, out))
    }

    /// Writes the next tensor; its name and shape must be the next spec's. It is converted to
    /// the spec's dtype.
    pub fn write(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        let candle_err = |e: candle_core::Error| MergeError::tensor(name, e.to_string());
        let t = tensor.to_device(&Device::Cpu).map_err(candle_err)?;
        let tmp = self.tmp.clone();
        let (dtype, out) = self.next_spec(name, t.dims())?;
        if dtype == DType::F64 {
            // Through f32 would round f64 values (a rare path: no copy saving needed).
            let values = t
                .to_dtype(DType::F64)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f64>())
                .map_err(candle_err)?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.write_all(&bytes).map_err(|e| MergeError::io(&tmp, e))?;
        } else {
            let t = t
                .to_dtype(DType::F32)
                .and_then(|t| t.contiguous())
                .map_err(candle_err)?;
            let (storage, layout) = t.storage_and_layout();
            let values = match (&*storage, layout.contiguous_offsets()) {
                (candle_core::Storage::Cpu(cpu), Some((from, to))) => {
                    // The tensor's own buffer: no copy before encoding.
                    &cpu.as_slice::<f32>().map_err(candle_err)?[from..to]
                }
                _ => {
                    return Err(MergeError::tensor(
                        name,
                        "is not a contiguous CPU tensor after conversion",
                    ))
                }
            };
            out.encode_f32(values, dtype)
                .map_err(|e| MergeError::io(&tmp, e))?;
        }
        self.next += 1;
        Ok(())
    }

    /// Writes the next tensor from f32 values (row-major), converted to the spec's dtype.
    pub fn write_f32(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(MergeError::tensor(
                name,
                format!("{} values given for shape {shape:?}", values.len()),
            ));
        }
        let tmp = self.tmp.clone();
        let (dtype, out) = self.next_spec(name, shape)?;
        out.encode_f32(values, dtype)
            .map_err(|e| MergeError::io(&tmp, e))?;
        self.next += 1;
        Ok(())
    }

    /// Writes the next tensor chunk by chunk, never holding it whole: `fill(start, chunk)`
    /// must put elements `start..start + chunk.len()` (row-major) into `chunk`; each filled
    /// chunk goes to the writer thread, which converts it to the spec's dtype and writes it
    /// while the next is filled (at most a few chunks are in flight).
    pub fn write_f32_chunks(
        &mut self,
        name: &str,
        chunk_len: usize,
        mut fill: impl FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        let shape = self
            .specs
            .get(self.next)
            .map(|s| s.shape.clone())
            .unwrap_or_default();
        let n: usize = shape.iter().product();
        let tmp = self.tmp.clone();
        let (dtype, out) = self.next_spec(name, &shape)?;
        let io_err = |e| MergeError::io(&tmp, e);
        // Each chunk is filled in a buffer of its own and handed to the writer thread, which
        // encodes and writes it while the next one is filled.
        let chunk_len = chunk_len.clamp(1, n.max(1));
        let mut start = 0;
        while start < n {
            let len = chunk_len.min(n - start);
            let mut chunk = out.values_buffer(len);
            fill(start, &mut chunk)?;
            out.send_values(chunk, dtype).map_err(io_err)?;
            start += len;
        }
        self.next += 1;
        Ok(())
    }

    /// Flushes, syncs and renames the file into place. Fails if a tensor was not written.
    pub fn finish(mut self) -> Result<()> {
        if let Some(missing) = self.specs.get(self.next) {
            return Err(MergeError::tensor(
                &missing.name,
                "never written: the output would be incomplete",
            ));
        }
        let out = self.out.take();
        let tmp = self.tmp.clone();
        let done = || -> std::io::Result<()> {
            if let Some(out) = out {
                out.finish()?.sync_all()?;
            }
            std::fs::rename(&tmp, &self.path)
        };
        done().map_err(|e| MergeError::io(&self.path, e))
    }
}

impl Drop for SafetensorsStreamWriter {
    fn drop(&mut self) {
        // Stop the writer thread first, so that nothing writes to the file once it is gone.
        self.out.take();
        // After a successful finish the temp file has been renamed and this is a no-op.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// What the writer thread is sent: bytes ready to write, or f32 values to encode as the
/// dtype first (so that a merge's encoding, too, runs beside its next block's mixing).
enum Block {
    Bytes(Vec<u8>),
    Values(Vec<f32>, DType),
}

/// Blocks queued for the writer thread at most: with ~1 MiB blocks the extra memory stays a
/// few MiB, while a slow write (a 4 MiB O_DIRECT write, a preempted writer thread) has a few
/// blocks of slack before the mixing waits. Not tuned: 4 was not compared with other depths.
const QUEUE_DEPTH: usize = 4;

/// The output file, written by a thread of its own: blocks are queued on a bounded channel
/// and the caller goes on computing the next one while the writer thread encodes and writes
/// (a merge used to encode and write each block on its one thread between two parallel
/// blocks). Emptied buffers come back on two return channels, so that the steady state
/// allocates nothing. Small writes (the header, tensors given as slices) are gathered in
/// `pending` on the caller's thread and sent at [`Output::FLUSH_AT`] bytes.
struct Output {
    pending: Vec<u8>,
    /// `None` once closed.
    queue: Option<SyncSender<Block>>,
    spare_bytes: Receiver<Vec<u8>>,
    spare_values: Receiver<Vec<f32>>,
    thread: Option<JoinHandle<std::io::Result<File>>>,
}

impl Output {
    const FLUSH_AT: usize = 1 << 20;
    /// Values encoded per step: 256 KiB of f32, so the buffer stays in cache.
    const PIECE: usize = 1 << 16;

    fn new(sink: Sink) -> std::io::Result<Self> {
        let (queue, blocks) = sync_channel(QUEUE_DEPTH);
        let (bytes_back, spare_bytes) = channel();
        let (values_back, spare_values) = channel();
        let thread = std::thread::Builder::new()
            .name("swarm-merge-writer".to_string())
            .spawn(move || write_blocks(sink, blocks, bytes_back, values_back))?;
        Ok(Self {
            pending: Vec::with_capacity(Self::FLUSH_AT + Self::PIECE * 8),
            queue: Some(queue),
            spare_bytes,
            spare_values,
            thread: Some(thread),
        })
    }

    /// Queues a block; fails with the writer thread's error if it has stopped.
    fn send(&mut self, block: Block) -> std::io::Result<()> {
        let sent = match &self.queue {
            Some(queue) => queue.send(block).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The writer thread only drops its end when it stops, after an error.
            Err(match self.close() {
                Err(e) => e,
                Ok(_) => std::io::Error::other("the writer thread is closed"),
            })
        }
    }

    /// Sends what `pending` holds, continuing in a recycled buffer.
    fn flush_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut next = self
            .spare_bytes
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(Self::FLUSH_AT + Self::PIECE * 8));
        next.clear();
        let full = std::mem::replace(&mut self.pending, next);
        self.send(Block::Bytes(full))
    }

    fn flush_if_full(&mut self) -> std::io::Result<()> {
        if self.pending.len() >= Self::FLUSH_AT {
            self.flush_pending()?;
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(bytes);
        self.flush_if_full()
    }

    /// Appends f32 values as little-endian `dtype` (f32, f16, bf16 or f64; the header
    /// refuses others), encoded on this thread.
    fn encode_f32(&mut self, values: &[f32], dtype: DType) -> std::io::Result<()> {
        for piece in values.chunks(Self::PIECE) {
            encode(piece, dtype, &mut self.pending);
            self.flush_if_full()?;
        }
        Ok(())
    }

    /// A buffer of `len` values to fill and hand to [`send_values`](Self::send_values):
    /// one the writer thread is done with when there is one. Its contents are stale.
    fn values_buffer(&mut self, len: usize) -> Vec<f32> {
        match self.spare_values.try_recv() {
            Ok(mut values) if values.capacity() >= len => {
                values.resize(len, 0.0);
                values
            }
            // Not `resize` of a smaller one: that would copy it and zero the rest on this
            // thread, where a fresh zeroed allocation of a large buffer is pages the kernel
            // zeroes when first written, by whichever thread fills them (the fill may run
            // on several: materialising a 113 MB embedding, the serial zeroing took 0.09 s).
            _ => vec![0.0; len],
        }
    }

    /// Queues f32 values for the writer thread to encode as `dtype` and write, after
    /// everything given before.
    fn send_values(&mut self, values: Vec<f32>, dtype: DType) -> std::io::Result<()> {
        self.flush_pending()?;
        self.send(Block::Values(values, dtype))
    }

    /// Stops the writer thread once it has written everything queued, and hands back the
    /// file, or the first error it met.
    fn close(&mut self) -> std::io::Result<File> {
        self.queue.take();
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| std::io::Error::other("the writer thread panicked"))?,
            None => Err(std::io::Error::other("the writer thread is closed")),
        }
    }

    /// Writes what is pending and hands back the file.
    fn finish(mut self) -> std::io::Result<File> {
        self.flush_pending()?;
        self.close()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // An unfinished output (an error elsewhere): let the thread end before the caller
        // removes the file, so nothing writes to it afterwards.
        let _ = self.close();
    }
}

/// The writer thread: writes the blocks in order until the channel closes, returning each
/// buffer for reuse. Stops at the first error, which [`Output::close`] hands on.
fn write_blocks(
    mut sink: Sink,
    blocks: Receiver<Block>,
    bytes_back: Sender<Vec<u8>>,
    values_back: Sender<Vec<f32>>,
) -> std::io::Result<File> {
    let mut encoded = Vec::new();
    for block in blocks {
        match block {
            Block::Bytes(bytes) => {
                sink.write(&bytes)?;
                // The caller may have finished: a buffer nobody takes back is just dropped.
                let _ = bytes_back.send(bytes);
            }
            Block::Values(values, dtype) => {
                if dtype == DType::F32 && cfg!(target_endian = "little") {
                    // The encoding is the values' own bytes: no copy (and no zeroing of the
                    // copy's buffer) on the way to the sink.
                    sink.write(f32s_as_bytes(&values))?;
                } else {
                    encoded.clear();
                    encode(&values, dtype, &mut encoded);
                    sink.write(&encoded)?;
                }
                let _ = values_back.send(values);
            }
        }
    }
    sink.finish()
}

/// The bytes of `values` (their little-endian encoding on a little-endian machine).
fn f32s_as_bytes(values: &[f32]) -> &[u8] {
    let len = std::mem::size_of_val(values);
    // SAFETY: the pointer and length come from a live slice of initialised f32s, u8 has no
    // alignment or validity requirements, and the lifetime is tied to the borrow.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), len) }
}

/// Appends f32 values to `out` as little-endian `dtype` (f32, f16, bf16 or f64).
fn encode(values: &[f32], dtype: DType, out: &mut Vec<u8>) {
    let width = match dtype {
        DType::BF16 | DType::F16 => 2,
        DType::F64 => 8,
        _ => 4,
    };
    let at = out.len();
    out.resize(at + values.len() * width, 0);
    let bytes = &mut out[at..];
    match dtype {
        DType::BF16 => {
            for (b, v) in bytes.chunks_exact_mut(2).zip(values) {
                b.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
        DType::F16 => {
            for (b, v) in bytes.chunks_exact_mut(2).zip(values) {
                b.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        DType::F64 => {
            for (b, v) in bytes.chunks_exact_mut(8).zip(values) {
                b.copy_from_slice(&(*v as f64).to_le_bytes());
            }
        }
        _ => {
            for (b, v) in bytes.chunks_exact_mut(4).zip(values) {
                b.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `dir/.name.tmp-<pid>-<n>`: a sibling path for write-then-rename, unique within the process.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// An HF model dir built in a temporary sibling dir and renamed into place by
/// [`finish`](Self::finish); dropped unfinished, it removes the temporary dir, so a
/// half-written output dir never remains.
pub struct HfDirWriter {
    out_dir: PathBuf,
    staging: PathBuf,
    weights: Option<SafetensorsStreamWriter>,
    overwrite: bool,
    finished: bool,
}

impl HfDirWriter {
    /// Starts `out_dir` with `model.safetensors` holding `specs`. An existing `out_dir` is
    /// refused unless `overwrite`, in which case it is replaced only once the new one is
    /// complete.
    pub fn create(out_dir: &Path, specs: Vec<TensorSpec>, overwrite: bool) -> Result<Self> {
        if out_dir.exists() && !overwrite {
            return Err(MergeError::file(
                out_dir,
                "already exists; remove it or ask to overwrite it",
            ));
        }
        if let Some(parent) = out_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| MergeError::io(parent, e))?;
        }
        let staging = temp_sibling(out_dir);
        std::fs::create_dir(&staging).map_err(|e| MergeError::io(&staging, e))?;
        let metadata: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let weights =
            SafetensorsStreamWriter::create(&staging.join("model.safetensors"), specs, &metadata);
        let weights = match weights {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        Ok(Self {
            out_dir: out_dir.to_path_buf(),
            staging,
            weights: Some(weights),
            overwrite,
            finished: false,
        })
    }

    /// The temporary dir: put `config.json`, tokenizer files and the like here.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// The tensors still to be written, in order.
    pub fn remaining(&self) -> &[TensorSpec] {
        self.weights.as_ref().map(|w| w.remaining()).unwrap_or(&[])
    }

    /// Writes the next tensor of `model.safetensors`.
    pub fn write_tensor(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        match self.weights.as_mut() {
            Some(w) => w.write(name, tensor),
            None => Err(MergeError::tensor(name, "writer already closed")),
        }
    }

    /// Writes the next tensor of `model.safetensors` from f32 values.
    pub fn write_f32(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        match self.weights.as_mut() {
            Some(w) => w.write_f32(name, shape, values),
            None => Err(MergeError::tensor(name, "writer already closed")),
        }
    }

    /// Writes the next tensor of `model.safetensors` chunk by chunk (see
    /// [`SafetensorsStreamWriter::write_f32_chunks`]).
    pub fn write_f32_chunks(
        &mut self,
        name: &str,
        chunk_len: usize,
        fill: impl FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        match self.weights.as_mut() {
            Some(w) => w.write_f32_chunks(name, chunk_len, fill),
            None => Err(MergeError::tensor(name, "writer already closed")),
        }
    }

    /// Completes the weights file and moves the dir into place.
    pub fn finish(mut self) -> Result<()> {
        if let Some(w) = self.weights.take() {
            w.finish()?;
        }
        if self.out_dir.exists() {
            if !self.overwrite {
                return Err(MergeError::file(&self.out_dir, "appeared while writing"));
            }
            let old = temp_sibling(&self.out_dir);
            std::fs::rename(&self.out_dir, &old).map_err(|e| MergeError::io(&self.out_dir, e))?;
            if let Err(e) = std::fs::rename(&self.staging, &self.out_dir) {
                // Put the old dir back rather than leave nothing.
                let _ = std::fs::rename(&old, &self.out_dir);
                return Err(MergeError::io(&self.out_dir, e));
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.staging, &self.out_dir)
                .map_err(|e| MergeError::io(&self.out_dir, e))?;
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for HfDirWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.weights.take();
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Writes a whole safetensors file from tensors produced in the order of `specs`.
pub(crate) fn write_streaming(
    path: &Path,
    specs: Vec<TensorSpec>,
    metadata: &BTreeMap<String, String>,
    mut produce: impl FnMut(&TensorSpec) -> Result<Tensor>,
) -> Result<()> {
    let mut w = SafetensorsStreamWriter::create(path, specs.clone(), metadata)?;
    for spec in &specs {
        let t = produce(spec)?;
        w.write(&spec.name, &t)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_model::{SafetensorsFiles, TensorSource};

    fn specs() -> Vec<TensorSpec> {
        vec![
            TensorSpec::new("b", vec![2, 3], DType::F32),
            TensorSpec::new("a", vec![5], DType::BF16),
        ]
    }

    #[test]
    fn streamed_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let mut w = SafetensorsStreamWriter::create(&path, specs(), &BTreeMap::new()).unwrap();
        let b = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        w.write("b", &b).unwrap();
        assert!(!path.exists(), "file must not appear before finish");
        w.write("a", &Tensor::ones(5, DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        w.finish().unwrap();
        let files = SafetensorsFiles::open_dir(dir.path()).unwrap();
        let back = files.load("b", &Device::Cpu).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap()[1], vec![3., 4., 5.]);
        let a = files.load("a", &Device::Cpu).unwrap();
        assert_eq!(a.dtype(), DType::BF16);
    }

    #[test]
    fn chunked_and_slice_writes_convert_to_the_spec_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let specs = vec![
            TensorSpec::new("b", vec![2, 3], DType::F32),
            TensorSpec::new("a", vec![5], DType::BF16),
            TensorSpec::new("c", vec![3], DType::F64),
        ];
        let mut w = SafetensorsStreamWriter::create(&path, specs, &BTreeMap::new()).unwrap();
        // Chunks of 4 over 6 elements: the second call gets the last 2.
        let mut starts = Vec::new();
        w.write_f32_chunks("b", 4, |start, chunk| {
            starts.push((start, chunk.len()));
            for (i, v) in chunk.iter_mut().enumerate() {
                *v = (start + i) as f32;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(starts, vec![(0, 4), (4, 2)]);
        assert!(w.write_f32("a", &[5], &[1.0; 4]).is_err());
        w.write_f32("a", &[5], &[1.5, 2.0, -3.0, 0.0, 4.0]).unwrap();
        w.write_f32("c", &[3], &[0.5, 1.0, 2.0]).unwrap();
        w.finish().unwrap();
        let files = SafetensorsFiles::open_dir(dir.path()).unwrap();
        let b = files.load("b", &Device::Cpu).unwrap();
        assert_eq!(b.to_vec2::<f32>().unwrap()[1], vec![3., 4., 5.]);
        let a = files.load("a", &Device::Cpu).unwrap();
        assert_eq!(a.dtype(), DType::BF16);
        let a = a.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, vec![1.5, 2.0, -3.0, 0.0, 4.0]);
        let c = files.load("c", &Device::Cpu).unwrap();
        assert_eq!(c.to_vec1::<f64>().unwrap(), vec![0.5, 1.0, 2.0]);
    }

    #[test]
    fn out_of_order_and_wrong_shape_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut w = SafetensorsStreamWriter::create(&path, specs(), &BTreeMap::new()).unwrap();
        let one = Tensor::ones(5, DType::F32, &Device::Cpu).unwrap();
        assert!(w.write("a", &one).unwrap_err().to_string().contains("`b`"));
        assert!(w.write("b", &one).is_err());
    }

    #[test]
    fn dropped_dir_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        {
            let mut w = HfDirWriter::create(&out, specs(), false).unwrap();
            let b = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
            w.write_tensor("b", &b).unwrap();
            // an error happens here; the writer is dropped
        }
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A write that fails on the writer thread comes back to the caller as an error (here
    /// ENOSPC from /dev/full), not as a panic or a silently short file.
    #[cfg(target_os = "linux")]
    #[test]
    fn writer_thread_errors_reach_the_caller() {
        let Ok(full) = File::options().write(true).open("/dev/full") else {
            return;
        };
        let mut out = Output::new(Sink::buffered(full, Path::new("/dev/full"))).unwrap();
        let mut failed = None;
        for _ in 0..64 {
            let values = out.values_buffer(1 << 16);
            if let Err(e) = out.send_values(values, DType::F32) {
                failed = Some(e);
                break;
            }
        }
        let err = match failed {
            Some(e) => e,
            None => out.finish().err().unwrap(),
        };
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
    }

    #[test]
    fn unfinished_file_cannot_be_finished() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        let w = HfDirWriter::create(&out, specs(), false).unwrap();
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("`b`"), "{err}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
