//! A safetensors [`TensorSource`] that reads each tensor's bytes with a positioned read, or,
//! for a merge, straight from the mapped file.
//!
//! Memory-mapped reading of whole tensors (swarm-model's `SafetensorsFiles`) is fastest for a
//! forward pass, but every page it touches counts towards the process's resident memory
//! until the kernel reclaims it, so a merge that streamed three models through a plain mmap
//! would look (and, under pressure, be) as big as the three models. So reads here are either
//! positioned (`pread`), through a cache-sized byte buffer decoded into the destination f32
//! buffer, or (f32 tensors, once [`SafetensorsReader::map_files`] has mapped the files)
//! windows of the map, released tensor by tensor (see `mapping.rs`). Either
//! way several threads can read one file at once, any element range, which is what lets a
//! merge stream a tensor in chunks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use swarm_model::{ModelError, TensorSource};

use crate::error::{MergeError, Result};
use crate::mapping::{f32_window, FileMap};

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// One or more safetensors files (an HF dir's shards) read tensor by tensor.
pub struct SafetensorsReader {
    description: String,
    files: Vec<(PathBuf, File)>,
    /// Each file mapped, after [`map_files`](Self::map_files) (where mapping works).
    maps: Vec<Option<FileMap>>,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

fn parse_dtype_code(code: &str) -> Option<DType> {
    Some(match code {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        _ => return None,
    })
}

impl SafetensorsReader {
    /// Opens one or more safetensors files (their tensor names must be disjoint).
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let description = match paths {
            [one] => one.display().to_string(),
            many => format!("{} safetensors shards", many.len()),
        };
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (index, path) in paths.iter().enumerate() {
            let mut file = File::open(path).map_err(|e| MergeError::io(path, e))?;
            let file_len = file.metadata().map_err(|e| MergeError::io(path, e))?.len();
            let bad = |m: String| MergeError::file(path, format!("invalid safetensors file: {m}"));
            let mut len_bytes = [0u8; 8];
            file.read_exact(&mut len_bytes)
                .map_err(|e| bad(format!("cannot read header length: {e}")))?;
            let header_len = u64::from_le_bytes(len_bytes);
            if header_len > 100_000_000 || 8 + header_len > file_len {
                return Err(bad(format!("header length {header_len} is out of range")));
            }
            let mut header = vec![0u8; header_len as usize];
            file.read_exact(&mut header)
                .map_err(|e| bad(format!("cannot read header: {e}")))?;
            let header: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
            let data_start = 8 + header_len;
            for (name, value) in header {
                if name == "__metadata__" {
                    if let Some(map) = value.as_object() {
                        for (k, v) in map {
                            if let Some(s) = v.as_str() {
                                metadata.insert(k.clone(), s.to_string());
                            }
                        }
                    }
                    continue;
                }
                let code = value.get("dtype").and_then(|v| v.as_str()).unwrap_or("");
                let dtype = parse_dtype_code(code)
                    .ok_or_else(|| bad(format!("tensor `{name}`: unsupported dtype {code:?}")))?;
                let shape: Vec<usize> = value
                    .get("shape")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .ok_or_else(|| bad(format!("tensor `{name}`: bad shape")))?;
                let offsets: [u64; 2] = value
                    .get("data_offsets")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .ok_or_else(|| bad(format!("tensor `{name}`: bad data_offsets")))?;
                let expected = shape.iter().product::<usize>() * dtype.size_in_bytes();
                let (start, end) = (data_start + offsets[0], data_start + offsets[1]);
                if offsets[1] < offsets[0] || end - start != expected as u64 || end > file_len {
                    return Err(bad(format!(
                        "tensor `{name}`: byte range {offsets:?} does not fit shape {shape:?} \
                         {dtype:?} in a file of {file_len} bytes"
                    )));
                }
                let entry = Entry {
                    file: index,
                    dtype,
                    shape,
                    start,
                    end,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(bad(format!(
                        "tensor `{name}` appears in more than one shard"
                    )));
                }
            }
            files.push((path.clone(), file));
        }
        Ok(Self {
            description,
            files,
            maps: Vec::new(),
            entries,
            metadata,
        })
    }

    /// Opens an HF dir's weights: `model.safetensors` or the shards named by
    /// `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| MergeError::io(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| MergeError::file(&index, format!("invalid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| MergeError::file(&index, "missing object `weight_map`"))?;
            let mut shards: Vec<PathBuf> = Vec::new();
            for file in map.values() {
                let file = file
                    .as_str()
                    .ok_or_else(|| MergeError::file(&index, "`weight_map` values must be names"))?;
                let p = dir.join(file);
                if !shards.contains(&p) {
                    shards.push(p);
                }
            }
            shards.sort();
            let mut reader = Self::open(&shards)?;
            reader.description = dir.display().to_string();
            return Ok(reader);
        }
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(MergeError::file(
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ));
        }
        let mut reader = Self::open(&[single])?;
        reader.description = dir.display().to_string();
        Ok(reader)
    }

    /// Maps the files, so that [`f32_view`](Self::f32_view) can read f32 tensors without a
    /// copy (see `mapping.rs`). A file that cannot be mapped is read as before.
    pub(crate) fn map_files(mut self) -> Self {
        self.maps = self
            .files
            .iter()
            .map(|(_, f)| FileMap::new(f, f.metadata().ok()?.len()))
            .collect();
        self
    }

    /// Elements `start..start + len` of tensor `name` straight from the mapped file, when it
    /// is mapped and stored as aligned little-endian f32; `Ok(None)` otherwise (read them with
    /// [`read_f32`](Self::read_f32)).
    pub(crate) fn f32_view(&self, name: &str, start: usize, len: usize) -> Result<Option<&[f32]>> {
        let entry = self.entry(name)?;
        let Some(Some(map)) = self.maps.get(entry.file) else {
            return Ok(None);
        };
        if entry.dtype != DType::F32 {
            return Ok(None);
        }
        let n: usize = entry.shape.iter().product();
        if start + len > n {
            return Err(MergeError::tensor(
                name,
                format!(
                    "elements {start}..{} requested from a tensor of {n}",
                    start + len
                ),
            ));
        }
        let at = entry.start as usize + start * 4;
        Ok(f32_window(map, at..at + len * 4))
    }

    /// Drops elements `start..start + len` of tensor `name` from the resident set (see
    /// `mapping.rs`); a thread still reading them maps them again.
    pub(crate) fn release_range(&self, name: &str, start: usize, len: usize) {
        if let Some(entry) = self.entries.get(name) {
            if let (Some(Some(map)), DType::F32) = (self.maps.get(entry.file), entry.dtype) {
                let at = entry.start as usize + start * 4;
                map.release(&(at..(at + len * 4).min(entry.end as usize)));
            }
        }
    }

    /// Drops tensor `name`'s mapped pages from the resident set, once no thread reads it.
    pub(crate) fn release(&self, name: &str) {
        if let Some(entry) = self.entries.get(name) {
            if let Some(Some(map)) = self.maps.get(entry.file) {
                map.release(&(entry.start as usize..entry.end as usize));
            }
        }
    }

    /// The header's `__metadata__` (all files merged).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The stored dtype of a tensor.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.entries.get(name).map(|e| e.dtype)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| MergeError::tensor(name, format!("not found in {}", self.description)))
    }

    /// Reads `bytes.len()` bytes of `entry` starting `skip` bytes into it.
    fn read_bytes(&self, entry: &Entry, skip: u64, bytes: &mut [u8]) -> Result<()> {
        let (path, file) = &self.files[entry.file];
        let at = entry.start + skip;
        if at + bytes.len() as u64 > entry.end {
            return Err(MergeError::file(
                path,
                format!(
                    "read of {} bytes at {at} runs past the tensor's end ({})",
                    bytes.len(),
                    entry.end
                ),
            ));
        }
        read_exact_at(file, bytes, at).map_err(|e| MergeError::io(path, e))
    }

    /// Reads elements `start..start + dst.len()` of tensor `name` (row-major, flattened) into
    /// `dst`, converted to f32 from the stored dtype. `scratch` holds raw bytes, at most
    /// 64 Ki elements' worth; pass the same one to every call so it is allocated once.
    pub fn read_f32(
        &self,
        name: &str,
        start: usize,
        dst: &mut [f32],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        let entry = self.entry(name)?;
        let n: usize = entry.shape.iter().product();
        if start + dst.len() > n {
            return Err(MergeError::tensor(
                name,
                format!(
                    "elements {start}..{} requested from a tensor of {n}",
                    start + dst.len()
                ),
            ));
        }
        if !matches!(
            entry.dtype,
            DType::F32 | DType::BF16 | DType::F16 | DType::F64
        ) {
            return Err(MergeError::tensor(
                name,
                format!("is stored as {:?}, which is not a float type", entry.dtype),
            ));
        }
        let size = entry.dtype.size_in_bytes();
        if entry.dtype == DType::F32 && cfg!(target_endian = "little") {
            // Stored as the f32s wanted: read straight into them, with no decoding copy (a
            // merge reads each input several times; the copy was ~6% of a TIES merge).
            return self.read_bytes(entry, (start * size) as u64, f32s_as_bytes_mut(dst));
        }
        // Bytes are read and decoded a cache-sized piece at a time.
        const PIECE: usize = 1 << 16;
        let mut done = 0;
        while done < dst.len() {
            let len = PIECE.min(dst.len() - done);
            scratch.resize(len * size, 0);
            self.read_bytes(entry, ((start + done) * size) as u64, scratch)?;
            swarm_model::decode_le_to_f32(entry.dtype, scratch, &mut dst[done..done + len]);
            done += len;
        }
        Ok(())
    }

    /// Reads the whole tensor `name` as f32 (see [`read_f32`](Self::read_f32)).
    pub fn read_f32_vec(&self, name: &str) -> Result<Vec<f32>> {
        let n: usize = self.entry(name)?.shape.iter().product();
        let mut values = vec![0f32; n];
        self.read_f32(name, 0, &mut values, &mut Vec::new())?;
        Ok(values)
    }
}

/// The bytes of `values`, to read f32s into (valid for little-endian files on a little-endian
/// machine only).
fn f32s_as_bytes_mut(values: &mut [f32]) -> &mut [u8] {
    let len = std::mem::size_of_val(values);
    // SAFETY: the pointer and length come from a live, exclusively borrowed slice of
    // initialised f32s; u8 has no alignment requirement, every bit pattern is a valid f32
    // (whatever is written through the bytes), and the borrow's lifetime carries over.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len) }
}

/// `pread` until `buf` is full: no shared file position, so threads need no lock.
#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl TensorSource for SafetensorsReader {
    fn describe(&self) -> String {
        self.description.clone()
    }
    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> swarm_model::Result<Vec<usize>> {
        self.entries
            .get(name)
            .map(|e| e.shape.clone())
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: self.description.clone(),
            })
    }
    fn load(&self, name: &str, device: &Device) -> swarm_model::Result<Tensor> {
        let as_model_error = |e: MergeError| ModelError::Tensor {
            name: name.to_string(),
            message: e.to_string(),
        };
        let entry = self.entry(name).map_err(as_model_error)?;
        if entry.dtype == DType::F32 {
            // Into the f32 buffer the tensor then owns: the whole tensor is not held twice.
            let values = self.read_f32_vec(name).map_err(as_model_error)?;
            return Ok(Tensor::from_vec(values, entry.shape.as_slice(), device)?);
        }
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        self.read_bytes(entry, 0, &mut bytes)
            .map_err(as_model_error)?;
        Ok(Tensor::from_raw_buffer(
            &bytes,
            entry.dtype,
            &entry.shape,
            device,
        )?)
    }

    fn read_f32_into(&self, name: &str, dst: &mut [f32]) -> swarm_model::Result<()> {
        let as_model_error = |e: MergeError| ModelError::Tensor {
            name: name.to_string(),
            message: e.to_string(),
        };
        let n: usize = self
            .entry(name)
            .map_err(as_model_error)?
            .shape
            .iter()
            .product();
        if n != dst.len() {
            return Err(ModelError::Tensor {
                name: name.to_string(),
                message: format!("has {n} elements, read into a buffer of {}", dst.len()),
            });
        }
        // In pieces on the rayon threads: a read from the page cache is a copy, and two
        // threads copy twice as fast as one (materialising reads each base tensor this way).
        const PIECE: usize = 1 << 18;
        dst.par_chunks_mut(PIECE)
            .enumerate()
            .try_for_each_init(Vec::new, |scratch, (i, piece)| {
                self.read_f32(name, i * PIECE, piece, scratch)
            })
            .map_err(as_model_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_model::Weights;

    #[test]
    fn reads_what_swarm_model_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Weights::new();
        let a = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        w.insert("a", a);
        w.insert("b", Tensor::ones(3, DType::BF16, &Device::Cpu).unwrap());
        w.save_safetensors(&dir.path().join("model.safetensors"))
            .unwrap();
        let r = SafetensorsReader::open_dir(dir.path()).unwrap();
        assert_eq!(r.names(), vec!["a", "b"]);
        assert_eq!(r.metadata().get("format").map(|s| s.as_str()), Some("pt"));
        let a = r.load("a", &Device::Cpu).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap()[2], vec![8., 9., 10., 11.]);
        assert_eq!(r.dtype("b"), Some(DType::BF16));
        assert!(r.load("zzz", &Device::Cpu).is_err());
        // Element ranges, from f32 and converted from bf16.
        let mut scratch = Vec::new();
        let mut part = [0f32; 3];
        r.read_f32("a", 5, &mut part, &mut scratch).unwrap();
        assert_eq!(part, [5., 6., 7.]);
        r.read_f32("b", 1, &mut part[..2], &mut scratch).unwrap();
        assert_eq!(part[..2], [1., 1.]);
        let err = r.read_f32("a", 10, &mut part, &mut scratch).unwrap_err();
        assert!(err.to_string().contains("`a`"), "{err}");
    }

    #[test]
    fn read_f32_into_reads_whole_tensors_in_pieces() {
        // 300,001 values: two 2^18-value pieces and a short last one, f32 and bf16.
        let dir = tempfile::tempdir().unwrap();
        let n = 300_001;
        let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 - 500.0).collect();
        let mut w = Weights::new();
        let big = Tensor::from_vec(values.clone(), n, &Device::Cpu).unwrap();
        w.insert("f32", big.clone());
        w.insert("bf16", big.to_dtype(DType::BF16).unwrap());
        w.save_safetensors(&dir.path().join("model.safetensors"))
            .unwrap();
        let r = SafetensorsReader::open_dir(dir.path()).unwrap();
        for name in ["f32", "bf16"] {
            let mut got = vec![f32::NAN; n];
            r.read_f32_into(name, &mut got).unwrap();
            // Integers up to 500 are exact in bf16 only up to 256: compare with its rounding.
            let want = w.get(name).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(got, want.to_vec1::<f32>().unwrap(), "{name}");
        }
        let err = r.read_f32_into("f32", &mut [0.0; 3]).unwrap_err();
        assert!(err.to_string().contains("`f32`"), "{err}");
        assert!(err.to_string().contains("300001"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        std::fs::write(&p, b"\x10\0\0\0\0\0\0\0{not json}      ").unwrap();
        let err = SafetensorsReader::open_dir(dir.path()).err().unwrap();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}
