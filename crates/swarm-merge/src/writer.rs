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
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::error::{MergeError, Result};

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
    out: Option<BufWriter<File>>,
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
        let file = File::create(&tmp).map_err(|e| MergeError::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let write = |out: &mut BufWriter<File>| -> std::io::Result<()> {
            out.write_all(&(json.len() as u64).to_le_bytes())?;
            out.write_all(&json)
        };
        if let Err(e) = write(&mut out) {
            let _ = std::fs::remove_file(&tmp);
            return Err(MergeError::io(&tmp, e));
        }
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

    /// Writes the next tensor; its name and shape must be the next spec's. It is converted to
    /// the spec's dtype.
    pub fn write(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        let spec = self.specs.get(self.next).ok_or_else(|| {
            MergeError::tensor(name, "written after every tensor of the file was written")
        })?;
        if spec.name != name {
            return Err(MergeError::tensor(
                name,
                format!("written out of order: expected `{}` next", spec.name),
            ));
        }
        if tensor.dims() != spec.shape.as_slice() {
            return Err(MergeError::tensor(
                name,
                format!(
                    "has shape {:?}, the output header says {:?}",
                    tensor.dims(),
                    spec.shape
                ),
            ));
        }
        let dtype = spec.dtype;
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| MergeError::tensor(name, "writer already closed"))?;
        write_tensor_bytes(out, tensor, dtype).map_err(|e| match e {
            WriteErr::Io(e) => MergeError::io(&self.tmp, e),
            WriteErr::Candle(e) => MergeError::tensor(name, e.to_string()),
        })?;
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
                let file = out.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
            }
            std::fs::rename(&tmp, &self.path)
        };
        done().map_err(|e| MergeError::io(&self.path, e))
    }
}

impl Drop for SafetensorsStreamWriter {
    fn drop(&mut self) {
        // After a successful finish the temp file has been renamed and this is a no-op.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

enum WriteErr {
    Io(std::io::Error),
    Candle(candle_core::Error),
}

/// Writes `tensor`'s values as little-endian `dtype`, converting in chunks so that no second
/// copy of a big tensor is made.
fn write_tensor_bytes(
    out: &mut impl Write,
    tensor: &Tensor,
    dtype: DType,
) -> std::result::Result<(), WriteErr> {
    let t = tensor
        .to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .and_then(|t| t.flatten_all())
        .map_err(WriteErr::Candle)?;
    const CHUNK: usize = 1 << 16;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 8);
    macro_rules! emit {
        ($ty:ty) => {{
            let values = t.to_vec1::<$ty>().map_err(WriteErr::Candle)?;
            for chunk in values.chunks(CHUNK) {
                buf.clear();
                for v in chunk {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                out.write_all(&buf).map_err(WriteErr::Io)?;
            }
        }};
    }
    match dtype {
        DType::F32 => emit!(f32),
        DType::F16 => emit!(half::f16),
        DType::BF16 => emit!(half::bf16),
        DType::F64 => emit!(f64),
        other => {
            return Err(WriteErr::Candle(candle_core::Error::Msg(format!(
                "cannot write dtype {other:?}"
            ))))
        }
    }
    Ok(())
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
