//! Named tensors: where a model's weights come from and how they are written back.
//!
//! A [`TensorSource`] hands out tensors one at a time by their HF name, so that code which
//! streams over a model (merging, factorising, materialising) never holds more than it needs.
//! Implementations: [`SafetensorsFiles`] (memory-mapped, single or sharded), the GGUF reader
//! (dequantising on demand), and [`Weights`], a plain in-memory map.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Something that hands out named tensors in HF layout.
pub trait TensorSource: Send + Sync {
    /// A short human description (a path, "in-memory"), used in error messages.
    fn describe(&self) -> String;
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
    /// The shape of one tensor without loading it.
    fn shape(&self, name: &str) -> Result<Vec<usize>>;
    /// Loads one tensor onto `device`, in the dtype it is stored in (f32 for dequantised GGUF).
    fn load(&self, name: &str, device: &Device) -> Result<Tensor>;

    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_ok()
    }

    /// Reads one tensor's values, converted to f32 and flattened row-major, into `dst`, whose
    /// length must be the tensor's element count.
    ///
    /// For code that computes on plain buffers (materialising a genome): the default loads
    /// the tensor and copies it out; a source that can decode straight into the caller's
    /// buffer (a safetensors file) overrides it, saving an allocation and a copy per tensor.
    fn read_f32_into(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        read_f32_via_load(self, name, dst)
    }
}

/// [`TensorSource::read_f32_into`] by way of [`TensorSource::load`] and a copy.
fn read_f32_via_load<S: TensorSource + ?Sized>(
    source: &S,
    name: &str,
    dst: &mut [f32],
) -> Result<()> {
    let values = source
        .load(name, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    check_read_len(name, values.len(), dst.len())?;
    dst.copy_from_slice(&values);
    Ok(())
}

fn check_read_len(name: &str, elements: usize, buffer: usize) -> Result<()> {
    if elements != buffer {
        return Err(ModelError::tensor(
            name,
            format!("has {elements} elements, read into a buffer of {buffer}"),
        ));
    }
    Ok(())
}

/// An in-memory map from HF tensor name to tensor.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    /// An empty set of weights.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every tensor of `source` onto `device`, converted to `dtype`.
    pub fn from_source(source: &dyn TensorSource, device: &Device, dtype: DType) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for name in source.names() {
            let t = source.load(&name, device)?.to_dtype(dtype)?;
            tensors.insert(name, t);
        }
        Ok(Self { tensors })
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: "in-memory weights".to_string(),
            })
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Converts every tensor to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (name, t) in &self.tensors {
            tensors.insert(name.clone(), t.to_dtype(dtype)?);
        }
        Ok(Self { tensors })
    }

    /// Writes all tensors to one safetensors file, atomically (temp file, then rename).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        write_safetensors(path, self.tensors.iter().map(|(n, t)| (n.as_str(), t)))
    }
}

impl TensorSource for Weights {
    fn describe(&self) -> String {
        "in-memory weights".to_string()
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.get(name)?.dims().to_vec())
    }
    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        Ok(self.get(name)?.to_device(device)?)
    }

    fn read_f32_into(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        let t = self.get(name)?;
        check_read_len(name, t.elem_count(), dst.len())?;
        if t.dtype() == DType::F32 {
            let (storage, layout) = t.storage_and_layout();
            if let (candle_core::Storage::Cpu(cpu), Some((from, to))) =
                (&*storage, layout.contiguous_offsets())
            {
                // Straight from the tensor's own buffer: one copy, no allocation.
                dst.copy_from_slice(&cpu.as_slice::<f32>()?[from..to]);
                return Ok(());
            }
        }
        read_f32_via_load(self, name, dst)
    }
}

/// Writes named tensors to a safetensors file that HF tools read (`format: pt` metadata),
/// through a temporary file renamed into place so a crash never leaves half a file.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<()> {
    let tensors: Vec<(&str, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.contiguous()?.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let tmp = temp_path_beside(path);
    safetensors::serialize_to_file(tensors, Some(metadata), &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::Safetensors {
            path: path.to_path_buf(),
            message: format!("cannot write: {e}"),
        }
    })?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

/// `dir/.name.tmp-<pid>`: a sibling path for write-then-rename.
pub(crate) fn temp_path_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Memory-mapped safetensors files: one `model.safetensors`, or the shards listed by a
/// `model.safetensors.index.json`.
pub struct SafetensorsFiles {
    description: String,
    files: candle_core::safetensors::MmapedSafetensors,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl SafetensorsFiles {
    /// Maps one or more `.safetensors` files.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let description = match paths {
            [one] => one.display().to_string(),
            many => format!(
                "{} safetensors shards in {}",
                many.len(),
                parent_of(&many[0])
            ),
        };
        let mut shapes = BTreeMap::new();
        for path in paths {
            // Validate each file on its own first, so the error names the broken shard.
            let bytes = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the file is opened read-only; as with every mmap, another process
            // truncating it while we read is outside what we can defend against.
            let mmap =
                unsafe { memmap2::Mmap::map(&bytes) }.map_err(|e| ModelError::io(path, e))?;
            let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| {
                ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            for (name, view) in st.tensors() {
                if shapes.insert(name.clone(), view.shape().to_vec()).is_some() {
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` appears in more than one shard"),
                    });
                }
            }
        }
        // SAFETY: as above; the files were just validated.
        let files =
            unsafe { candle_core::safetensors::MmapedSafetensors::multi(paths) }.map_err(|e| {
                ModelError::Safetensors {
                    path: paths.first().cloned().unwrap_or_default(),
                    message: e.to_string(),
                }
            })?;
        Ok(Self {
            description,
            files,
            shapes,
        })
    }

    /// Opens the weights of an HF model dir: `model.safetensors`, or the shards named in
    /// `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: index.clone(),
                    source,
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::config(&index, "missing object `weight_map`"))?;
            let mut shards: Vec<PathBuf> = Vec::new();
            for file in map.values() {
                let file = file.as_str().ok_or_else(|| {
                    ModelError::config(&index, "`weight_map` values must be file names")
                })?;
                let p = dir.join(file);
                if !shards.contains(&p) {
                    shards.push(p);
                }
            }
            shards.sort();
            return Self::open(&shards);
        }
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Self::open(&[single]);
        }
        Err(ModelError::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json",
            ),
        ))
    }
}

fn parent_of(p: &Path) -> String {
    p.parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

impl TensorSource for SafetensorsFiles {
    fn describe(&self) -> String {
        self.description.clone()
    }
    fn names(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.shapes
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: self.description.clone(),
            })
    }
    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.shape(name)?;
        self.files
            .load(name, device)
            .map_err(|e| ModelError::tensor(name, format!("{} ({})", e, self.description)))
    }

    fn read_f32_into(&self, name: &str, dst: &mut [f32]) -> Result<()> {
        use safetensors::Dtype;
        self.shape(name)?;
        let view = self
            .files
            .get(name)
            .map_err(|e| ModelError::tensor(name, format!("{} ({})", e, self.description)))?;
        let elements: usize = view.shape().iter().product();
        check_read_len(name, elements, dst.len())?;
        let (dtype, width) = match view.dtype() {
            Dtype::F32 => (DType::F32, 4),
            Dtype::BF16 => (DType::BF16, 2),
            Dtype::F16 => (DType::F16, 2),
            Dtype::F64 => (DType::F64, 8),
            _ => return read_f32_via_load(self, name, dst),
        };
        let bytes = view.data();
        if bytes.len() != elements * width {
            return Err(ModelError::tensor(
                name,
                format!(
                    "holds {} bytes for {elements} {dtype:?} values ({})",
                    bytes.len(),
                    self.description
                ),
            ));
        }
        // Decoded from the map in pieces on the rayon threads (the copy out of the page
        // cache is the cost, and two threads do it twice as fast as one).
        const PIECE: usize = 1 << 18;
        dst.par_chunks_mut(PIECE)
            .zip(bytes.par_chunks(PIECE * width))
            .for_each(|(values, bytes)| decode_le_to_f32(dtype, bytes, values));
        Ok(())
    }
}

/// Little-endian f32, bf16, f16 or f64 bytes (as safetensors stores them) to f32 values;
/// `bytes.len()` must be `dst.len()` times the dtype's size. Any other dtype is read as f64.
pub fn decode_le_to_f32(dtype: DType, bytes: &[u8], dst: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::BF16 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::F16 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut le = [0u8; 8];
                le.copy_from_slice(b);
                *d = f64::from_le_bytes(le) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Weights {
        let mut w = Weights::new();
        let a = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        w.insert("a.weight", a);
        w.insert(
            "b.bias",
            Tensor::ones(5, DType::BF16, &Device::Cpu).unwrap(),
        );
        w
    }

    #[test]
    fn safetensors_files_read_f32_into_decodes_in_pieces() {
        // 300,001 values: two 2^18-value pieces and a short last one, f32, bf16 and f16.
        let dir = tempfile::tempdir().unwrap();
        let n = 300_001;
        let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.25 - 100.0).collect();
        let big = Tensor::from_vec(values, n, &Device::Cpu).unwrap();
        let mut w = Weights::new();
        for (name, dtype) in [
            ("f32", DType::F32),
            ("bf16", DType::BF16),
            ("f16", DType::F16),
        ] {
            w.insert(name, big.to_dtype(dtype).unwrap());
        }
        let path = dir.path().join("model.safetensors");
        w.save_safetensors(&path).unwrap();
        let files = SafetensorsFiles::open(&[path]).unwrap();
        for name in ["f32", "bf16", "f16"] {
            let mut got = vec![f32::NAN; n];
            files.read_f32_into(name, &mut got).unwrap();
            let want = w.get(name).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(got, want.to_vec1::<f32>().unwrap(), "{name}");
        }
        let err = files.read_f32_into("f32", &mut [0.0; 2]).unwrap_err();
        assert!(err.to_string().contains("300001"), "{err}");
        assert!(files.read_f32_into("missing", &mut [0.0; 2]).is_err());
    }

    #[test]
    fn read_f32_into_copies_converting_and_checks_the_length() {
        let w = sample();
        let mut a = [0f32; 12];
        w.read_f32_into("a.weight", &mut a).unwrap();
        assert_eq!(a[11], 11.0);
        let mut b = [0f32; 5];
        w.read_f32_into("b.bias", &mut b).unwrap();
        assert_eq!(b, [1.0; 5]);
        let err = w.read_f32_into("a.weight", &mut b).unwrap_err();
        assert!(err.to_string().contains("a.weight"), "{err}");
        assert!(w.read_f32_into("missing", &mut b).is_err());
        // A view that is not contiguous is converted, not misread.
        let mut t = Weights::new();
        t.insert("t", w.get("a.weight").unwrap().t().unwrap());
        t.read_f32_into("t", &mut a).unwrap();
        assert_eq!(a[..4], [0.0, 4.0, 8.0, 1.0]);
    }
    #[test]
    fn save_and_mmap_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        sample().save_safetensors(&path).unwrap();
        let files = SafetensorsFiles::open_dir(dir.path()).unwrap();
        assert_eq!(files.names(), vec!["a.weight", "b.bias"]);
        assert_eq!(files.shape("a.weight").unwrap(), vec![3, 4]);
        let a = files.load("a.weight", &Device::Cpu).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap()[2], vec![8., 9., 10., 11.]);
        assert_eq!(
            files.load("b.bias", &Device::Cpu).unwrap().dtype(),
            DType::BF16
        );
    }

    #[test]
    fn truncated_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        sample().save_safetensors(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let err = SafetensorsFiles::open_dir(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }

    #[test]
    fn sharded_index_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let w = sample();
        let a = w.get("a.weight").unwrap();
        let b = w.get("b.bias").unwrap();
        write_safetensors(&dir.path().join("s1.safetensors"), [("a.weight", a)]).unwrap();
        write_safetensors(&dir.path().join("s2.safetensors"), [("b.bias", b)]).unwrap();
        let index = serde_json::json!({"weight_map": {"a.weight": "s1.safetensors",
            "b.bias": "s2.safetensors"}});
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let files = SafetensorsFiles::open_dir(dir.path()).unwrap();
        assert_eq!(files.names().len(), 2);
        let err = files.load("missing", &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
