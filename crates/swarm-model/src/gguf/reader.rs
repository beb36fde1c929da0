//! The GGUF container: header, metadata and tensor directory, parsed from a byte slice.
//!
//! We parse the container ourselves rather than with `candle_core::quantized::gguf_file`
//! because a crafted file must give an error, never a panic or undefined behaviour, and
//! candle's reader (0.11.1) divides by `general.alignment` unchecked (0 panics) and casts
//! unaligned tensor bytes to block structs. Every read here is bounds-checked, every size is
//! computed with checked arithmetic, and every limit is named in the message.
//!
//! Layout (spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>):
//! magic `GGUF`, version (1-3), tensor count, metadata count, metadata key/values, tensor
//! infos (name, dims innermost first, type, offset), padding to `general.alignment`, data.

use std::collections::{BTreeMap, HashSet};

use candle_core::quantized::gguf_file::Value;

use super::dtype::GgmlType;

/// Largest number of dimensions a ggml tensor has (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Nesting limit for arrays of arrays, so a crafted file cannot exhaust the stack.
const MAX_DEPTH: usize = 8;
/// `general.alignment` when the file does not set it.
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;

/// One entry of the tensor directory, validated against the file size.
#[derive(Debug, Clone)]
pub(crate) struct TensorInfo {
    /// Row-major shape (GGUF stores dims innermost first; this is reversed).
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    /// Absolute byte range of the data in the file.
    pub start: usize,
    pub len: usize,
}

/// Everything in a GGUF file except the tensor data.
#[derive(Debug)]
pub(crate) struct Container {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

/// A bounds-checked little-endian cursor. Errors are plain strings; the caller adds the path.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// GGUF v1 used 32-bit lengths and counts; v2+ use 64-bit ones.
    wide: bool,
}

type Res<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, file has {}",
                self.pos,
                self.bytes.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Res<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Res<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u32(&mut self, what: &str) -> Res<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Res<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count: u32 in v1, u64 later.
    fn len(&mut self, what: &str) -> Res<u64> {
        if self.wide {
            self.u64(what)
        } else {
            Ok(self.u32(what)? as u64)
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// A count of items, each at least `min_size` bytes: refused before allocating when the
    /// rest of the file cannot hold them.
    fn count(&mut self, what: &str, min_size: usize) -> Res<usize> {
        let n = self.len(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_size))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(format!(
                "{what} is {n}, more than the {} bytes left in the file can hold \
                 (truncated or corrupt file?)",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Res<String> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        // Some writers add a trailing NUL; GGUF strings are not NUL-terminated.
        let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Res<Value> {
        let what = || format!("value of `{key}`");
        Ok(match ty {
            0 => Value::U8(self.u8(&what())?),
            1 => Value::I8(self.u8(&what())? as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => Value::U32(self.u32(&what())?),
            5 => Value::I32(self.u32(&what())? as i32),
            6 => Value::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => match self.u8(&what())? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{} is a bool with byte {b}", what())),
            },
            8 => Value::String(self.string(&what())?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!(
                        "{} nests arrays deeper than {MAX_DEPTH} levels",
                        what()
                    ));
                }
                let elem = self.u32(&what())?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    8 => {
                        if self.wide {
                            8
                        } else {
                            4
                        }
                    }
                    9 => 4 + if self.wide { 8 } else { 4 },
                    other => return Err(format!("{} has unknown element type {other}", what())),
                };
                let n = self.count(&format!("length of array `{key}`"), min_size)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what())?),
            11 => Value::I64(self.u64(&what())? as i64),
            12 => Value::F64(f64::from_le_bytes(self.array(&what())?)),
            other => return Err(format!("{} has unknown value type {other}", what())),
        })
    }
}

/// Parses the header, metadata and tensor directory of a GGUF file held in `bytes`, checking
/// that every tensor's data lies inside the file.
pub(crate) fn parse(bytes: &[u8]) -> Res<Container> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        wide: true,
    };
    let magic = c.array::<4>("magic")?;
    if &magic != b"GGUF" {
        return Err(format!(
            "not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")"
        ));
    }
    let version = c.u32("version")?;
    if !(1..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (supported: 1-3)"
        ));
    }
    c.wide = version >= 2;
    let len_size = if c.wide { 8 } else { 4 };
    // Minimum sizes: a tensor info is a name length, n_dims, type and offset; a metadata
    // entry a key length, a type and one byte.
    let n_tensors = c.count("tensor count", len_size + 4 + 4 + 8)?;
    let n_kv = c.count("metadata count", len_size + 4 + 1)?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&format!("type of `{key}`"))?;
        let value = c.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match super::value_as_u64(v) {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(format!(
                    "`general.alignment` must be a positive power of two, got {v:?}"
                ))
            }
        },
    };

    struct Raw {
        name: String,
        dims: Vec<u64>,
        ty: u32,
        offset: u64,
    }
    let mut raw = Vec::with_capacity(n_tensors);
    let mut seen = HashSet::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let n_dims = c.u32(&format!("rank of tensor `{name}`"))?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions, at most {MAX_DIMS} are allowed"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.len(&format!("dimensions of tensor `{name}`"))?);
        }
        let ty = c.u32(&format!("type of tensor `{name}`"))?;
        let offset = c.u64(&format!("offset of tensor `{name}`"))?;
        if !seen.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        raw.push(Raw {
            name,
            dims,
            ty,
            offset,
        });
    }

    let data_start = (c.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or("tensor data offset overflows")?;
    let mut tensors = BTreeMap::new();
    for Raw {
        name,
        dims,
        ty,
        offset,
    } in raw
    {
        let dtype = GgmlType::from_id(ty).ok_or_else(|| {
            format!(
                "tensor `{name}` has unknown ggml type {ty} (known: {})",
                GgmlType::known_list()
            )
        })?;
        let info = tensor_info(&name, &dims, dtype, data_start, offset, bytes.len())?;
        tensors.insert(name, info);
    }
    Ok(Container {
        version,
        metadata,
        tensors,
    })
}

/// Validates one tensor's dims, block structure and byte range.
fn tensor_info(
    name: &str,
    dims: &[u64],
    dtype: GgmlType,
    data_start: u64,
    offset: u64,
    file_len: usize,
) -> Res<TensorInfo> {
    let mut shape = Vec::with_capacity(dims.len());
    let mut elems: usize = 1;
    for &d in dims.iter().rev() {
        let d = usize::try_from(d).map_err(|_| format!("tensor `{name}` has dimension {d}"))?;
        elems = elems
            .checked_mul(d)
            .ok_or_else(|| format!("tensor `{name}` has too many elements ({dims:?})"))?;
        shape.push(d);
    }
    let block = dtype.block_size();
    // Blocks run along the innermost dimension (ne0), so rows must be whole blocks.
    let inner = dims.first().copied().unwrap_or(1);
    if !inner.is_multiple_of(block as u64) {
        return Err(format!(
            "tensor `{name}` of type {} has inner dimension {inner}, not a multiple of its \
             block size {block}",
            dtype.name()
        ));
    }
    let len = (elems / block)
        .checked_mul(dtype.block_bytes())
        .ok_or_else(|| format!("tensor `{name}` is too large"))?;
    let start = data_start
        .checked_add(offset)
        .and_then(|s| usize::try_from(s).ok());
    let end = start.and_then(|s| s.checked_add(len));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len => Ok(TensorInfo {
            shape,
            dtype,
            start,
            len,
        }),
        _ => Err(format!(
            "tensor `{name}` ({} bytes at data offset {offset}) extends past the end of the \
             file ({file_len} bytes): truncated file?",
            len
        )),
    }
}
