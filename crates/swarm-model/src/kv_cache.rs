//! The key/value cache of a batch of sequences, kept outside the model.
//!
//! One [`KvCache`] holds, per layer, keys and values of shape
//! `(batch, kv_heads, capacity, head_dim)`, pre-allocated and written in place
//! (`slice_set`), so a decode step copies only the new token's keys and values and attention
//! reads a strided view of the first `len` slots; nothing is concatenated per step.
//!
//! Sequences of different lengths share one cache by **left padding**: row `r` has
//! `padding[r]` empty slots before its first token. Its next token sits in slot `len` and has
//! position `len - padding[r]`, and the model masks slots `< padding[r]`.
//!
//! Why one batch cache rather than one cache per sequence stacked at every step: stacking
//! copies the whole cache per token (for SmolLM2 at batch 32 and 600 tokens, ~0.9 GB per step,
//! more than the step itself), while rows change rarely. A continuous-batching server changes
//! the batch with two operations that copy once: [`KvCache::select_rows`] drops finished rows
//! and [`KvCache::concat`] joins the caches of newly prefilled requests, left-padding the
//! shorter ones so every row ends at the same slot.
//!
//! Keys and values are stored in the model's activation dtype unless
//! [`KvCache::with_dtype`] asks for another: an f16 cache of an f32 model halves the cache's
//! memory and the bytes a decode step reads from it, which at long contexts and large batches
//! is most of what the step reads.

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// Keys and values of a batch of sequences for every layer of one model.
///
/// Not `Clone`: tensors share storage and the cache is written in place.
#[derive(Debug)]
pub struct KvCache {
    /// Per layer `(k, v)`, each `(batch, kv_heads, capacity, head_dim)`; `None` until written.
    layers: Vec<Option<(Tensor, Tensor)>>,
    batch: usize,
    len: usize,
    capacity: usize,
    padding: Vec<usize>,
    /// The dtype keys and values are stored in (`None`: the dtype they arrive in).
    storage: Option<DType>,
}

/// Slots are allocated in multiples of this when the cache grows.
const GROWTH_QUANTUM: usize = 128;

impl KvCache {
    /// An empty cache for `batch` sequences of a model with `num_layers` layers.
    /// `capacity` slots are allocated on the first write (more when needed).
    pub fn new(num_layers: usize, batch: usize, capacity: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            batch,
            len: 0,
            capacity,
            padding: vec![0; batch],
            storage: None,
        }
    }

    /// Stores keys and values in `dtype` whatever the model computes them in. On the CPU,
    /// `DType::F16` with an f32 model halves the cache and the bytes each decode step reads
    /// from it; the logits then differ from an f32 cache's by about 1e-3 relative (f16 keeps
    /// 11 significant bits), so exact-reference checks use the default.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.storage = Some(dtype);
        self
    }

    /// The dtype keys and values are stored in, when set by [`KvCache::with_dtype`].
    pub fn dtype(&self) -> Option<DType> {
        self.storage
    }

    /// Number of rows (sequences).
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Slots used, padding included (the same for every row).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated per row.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Left-padding slots of each row.
    pub fn padding(&self) -> &[usize] {
        &self.padding
    }

    /// Tokens held by each row (its next position).
    pub fn seq_lens(&self) -> Vec<usize> {
        self.padding.iter().map(|p| self.len - p).collect()
    }

    /// Bytes allocated by the cache.
    pub fn size_in_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// Sets the left padding of an empty cache (the batched prefill does this).
    pub(crate) fn set_padding(&mut self, padding: Vec<usize>) -> Result<()> {
        if !self.is_empty() {
            return Err(ModelError::Generation(
                "left padding can only be set on an empty cache".to_string(),
            ));
        }
        if padding.len() != self.batch {
            return Err(ModelError::Generation(format!(
                "padding for {} rows given to a cache of {} rows",
                padding.len(),
                self.batch
            )));
        }
        self.padding = padding;
        Ok(())
    }

    /// Writes `t` new slots of `layer` (`k`, `v`: `(batch, kv_heads, t, head_dim)`) after the
    /// current `len` and returns views of slots `0..len + t`. [`KvCache::advance`] commits
    /// the slots once every layer has written them.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, kv_heads, t, head_dim) = k.dims4()?;
        let (k, v) = match self.storage {
            Some(dtype) if dtype != k.dtype() => (k.to_dtype(dtype)?, v.to_dtype(dtype)?),
            _ => (k.clone(), v.clone()),
        };
        if b != self.batch {
            return Err(ModelError::Generation(format!(
                "a batch of {b} rows given to a cache of {} rows",
                self.batch
            )));
        }
        let needed = self.len + t;
        if needed > self.capacity || self.layers.get(layer).is_some_and(|l| l.is_none()) {
            let capacity = if needed > self.capacity {
                needed
                    .max(self.capacity + self.capacity / 2)
                    .div_ceil(GROWTH_QUANTUM)
                    * GROWTH_QUANTUM
            } else {
                self.capacity
            };
            self.grow(
                layer,
                (b, kv_heads, capacity, head_dim),
                k.dtype(),
                k.device(),
            )?;
        }
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| ModelError::Generation(format!("layer {layer} is outside the cache")))?;
        let Some((kc, vc)) = slot.as_ref() else {
            return Err(ModelError::Generation(format!(
                "layer {layer} of the cache was not allocated"
            )));
        };
        kc.slice_set(&k.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((kc.narrow(2, 0, needed)?, vc.narrow(2, 0, needed)?))
    }

    /// (Re)allocates `layer` with `dims = (batch, kv_heads, capacity, head_dim)`, keeping the
    /// first `len` slots; every other allocated layer is grown to the same capacity.
    fn grow(
        &mut self,
        layer: usize,
        dims: (usize, usize, usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<()> {
        let capacity = dims.2;
        let len = self.len;
        let resize = |t: &Tensor| -> Result<Tensor> {
            let fresh = Tensor::zeros(dims, dtype, device)?;
            if len > 0 {
                fresh.slice_set(&t.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            Ok(fresh)
        };
        for (i, entry) in self.layers.iter_mut().enumerate() {
            match entry {
                Some((k, v)) if k.dim(2)? != capacity => {
                    *entry = Some((resize(k)?, resize(v)?));
                }
                None if i == layer => {
                    let k = Tensor::zeros(dims, dtype, device)?;
                    let v = Tensor::zeros(dims, dtype, device)?;
                    *entry = Some((k, v));
                }
                _ => {}
            }
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Commits `t` slots written by [`KvCache::append`] in every layer.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Keeps only `rows` (in that order), e.g. to drop finished sequences from a batch.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.batch) {
            return Err(ModelError::Generation(format!(
                "row {bad} selected from a cache of {} rows",
                self.batch
            )));
        }
        let padding: Vec<usize> = rows.iter().map(|&r| self.padding[r]).collect();
        for (k, v) in self.layers.iter_mut().flatten() {
            let index = Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                rows.len(),
                k.device(),
            )?;
            *k = k.index_select(&index, 0)?;
            *v = v.index_select(&index, 0)?;
        }
        self.batch = rows.len();
        self.padding = padding;
        // Slots that every remaining row pads are dead weight: drop them.
        let common = self.padding.iter().copied().min().unwrap_or(0);
        if common > 0 && self.batch > 0 {
            self.trim_front(common)?;
        }
        Ok(())
    }

    /// Removes the first `n` slots of every row (all of which must be padding).
    fn trim_front(&mut self, n: usize) -> Result<()> {
        let keep = self.len - n;
        for (k, v) in self.layers.iter_mut().flatten() {
            let dims = k.dims4()?;
            let shift = |t: &Tensor| -> Result<Tensor> {
                let fresh = Tensor::zeros(dims, t.dtype(), t.device())?;
                if keep > 0 {
                    fresh.slice_set(&t.narrow(2, n, keep)?.contiguous()?, 2, 0)?;
                }
                Ok(fresh)
            };
            *k = shift(k)?;
            *v = shift(v)?;
        }
        self.len = keep;
        for p in &mut self.padding {
            *p -= n;
        }
        Ok(())
    }

    /// Forgets every slot from `len` on, in every row (a conversation continued from an
    /// earlier point); the memory stays allocated and later tokens overwrite the slots.
    /// Every row must keep its padding.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(ModelError::Generation(format!(
                "a cache of {} slots cannot be truncated to {len}",
                self.len
            )));
        }
        if let Some(&pad) = self.padding.iter().max() {
            if pad > len {
                return Err(ModelError::Generation(format!(
                    "truncating to {len} slots would cut into a row's {pad} padding slots"
                )));
            }
        }
        self.len = len;
        Ok(())
    }

    /// A one-row cache holding the first `tokens` tokens of `row` (its left padding left
    /// out), with room for at least `capacity` slots: how a server reuses the keys and values
    /// of a prompt prefix it has already run (prefix caching). Slot `i` of the copy holds the
    /// row's token `i`, whose keys were rotated for position `i`, so a forward pass on the
    /// copy continues the sequence at position `tokens`, as it would have on the row.
    pub fn copy_row(&self, row: usize, tokens: usize, capacity: usize) -> Result<KvCache> {
        let Some(&pad) = self.padding.get(row) else {
            return Err(ModelError::Generation(format!(
                "row {row} copied from a cache of {} rows",
                self.batch
            )));
        };
        let held = self.len - pad;
        if tokens > held {
            return Err(ModelError::Generation(format!(
                "{tokens} tokens copied from row {row}, which holds {held}"
            )));
        }
        let capacity = capacity.max(tokens);
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let Some((k, v)) = layer else {
                layers.push(None);
                continue;
            };
            let copy = |t: &Tensor| -> Result<Tensor> {
                let (_, kv_heads, _, head_dim) = t.dims4()?;
                let fresh =
                    Tensor::zeros((1, kv_heads, capacity, head_dim), t.dtype(), t.device())?;
                if tokens > 0 {
                    let rows = t.narrow(0, row, 1)?.narrow(2, pad, tokens)?;
                    fresh.slice_set(&rows.contiguous()?, 2, 0)?;
                }
                Ok(fresh)
            };
            layers.push(Some((copy(k)?, copy(v)?)));
        }
        Ok(KvCache {
            layers,
            batch: 1,
            len: tokens,
            capacity,
            padding: vec![0],
            storage: self.storage,
        })
    }

    /// Joins caches of the same model into one batch, rows in order. Rows of shorter caches
    /// get extra left padding so that all rows end at the same slot.
    pub fn concat(caches: &[KvCache]) -> Result<KvCache> {
        let Some(first) = caches.first() else {
            return Err(ModelError::Generation("no caches to join".to_string()));
        };
        let num_layers = first.layers.len();
        if caches.iter().any(|c| c.layers.len() != num_layers) {
            return Err(ModelError::Generation(
                "caches of models with different layer counts cannot be joined".to_string(),
            ));
        }
        if caches.iter().any(|c| c.storage != first.storage) {
            return Err(ModelError::Generation(
                "caches stored in different dtypes cannot be joined".to_string(),
            ));
        }
        let len = caches.iter().map(|c| c.len).max().unwrap_or(0);
        let capacity = caches
            .iter()
            .map(|c| len + c.capacity.saturating_sub(c.len))
            .max()
            .unwrap_or(len);
        let mut padding = Vec::new();
        for c in caches {
            padding.extend(c.padding.iter().map(|p| p + len - c.len));
        }
        let batch = padding.len();
        let mut layers = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            let template = caches.iter().find_map(|c| c.layers[layer].as_ref());
            let Some((tk, _)) = template else {
                layers.push(None);
                continue;
            };
            let (_, kv_heads, _, head_dim) = tk.dims4()?;
            for c in caches {
                let dims = (c.batch, kv_heads, capacity, head_dim);
                let k = Tensor::zeros(dims, tk.dtype(), tk.device())?;
                let v = Tensor::zeros(dims, tk.dtype(), tk.device())?;
                if let Some((ck, cv)) = &c.layers[layer] {
                    if c.len > 0 {
                        let offset = len - c.len;
                        k.slice_set(&ck.narrow(2, 0, c.len)?.contiguous()?, 2, offset)?;
                        v.slice_set(&cv.narrow(2, 0, c.len)?.contiguous()?, 2, offset)?;
                    }
                }
                ks.push(k);
                vs.push(v);
            }
            layers.push(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)));
        }
        Ok(KvCache {
            layers,
            batch,
            len,
            capacity,
            padding,
            storage: first.storage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(b: usize, t: usize, fill: f32) -> Tensor {
        (Tensor::ones((b, 2, t, 4), DType::F32, &Device::Cpu).unwrap() * fill as f64).unwrap()
    }

    /// The first value of head 0 at every slot of `row` of `t` (keys or values).
    fn slot_values(t: &Tensor, row: usize) -> Vec<f32> {
        let head = t.narrow(0, row, 1).unwrap().narrow(1, 0, 1).unwrap();
        head.narrow(3, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// A one-layer cache of `rows` rows holding `tokens` tokens each, keys all `key` and
    /// values all `value`.
    fn filled(rows: usize, tokens: usize, key: f32, value: f32) -> KvCache {
        let mut c = KvCache::new(1, rows, 8);
        c.append(0, &kv(rows, tokens, key), &kv(rows, tokens, value))
            .unwrap();
        c.advance(tokens);
        c
    }

    #[test]
    fn appends_in_place_and_grows() {
        let mut c = KvCache::new(2, 1, 2);
        for step in 0..5 {
            for layer in 0..2 {
                let (k, v) = c
                    .append(layer, &kv(1, 1, step as f32), &kv(1, 1, 0.))
                    .unwrap();
                assert_eq!(k.dims(), &[1, 2, step + 1, 4]);
                assert_eq!(v.dims(), &[1, 2, step + 1, 4]);
            }
            c.advance(1);
        }
        assert_eq!(c.len(), 5);
        assert!(c.capacity() >= 5);
        let (k, _) = c.append(0, &kv(1, 1, 9.), &kv(1, 1, 9.)).unwrap();
        assert_eq!(slot_values(&k, 0), vec![0., 1., 2., 3., 4., 9.]);
    }

    #[test]
    fn select_and_concat_keep_rows_aligned() {
        let mut j = KvCache::concat(&[filled(2, 3, 1., 1.), filled(1, 1, 2., 2.)]).unwrap();
        assert_eq!(j.batch_size(), 3);
        assert_eq!(j.len(), 3);
        assert_eq!(j.padding(), &[0, 0, 2]);
        assert_eq!(j.seq_lens(), vec![3, 3, 1]);
        j.select_rows(&[2]).unwrap();
        // The two padding slots every remaining row shares are dropped.
        assert_eq!(j.len(), 1);
        assert_eq!(j.padding(), &[0]);
        let (k, _) = j.append(0, &kv(1, 1, 5.), &kv(1, 1, 5.)).unwrap();
        let first: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(first[0], 2.);
        assert!(j.select_rows(&[4]).is_err());
    }

    #[test]
    fn copy_row_leaves_out_padding_and_keeps_the_source() {
        let j = KvCache::concat(&[filled(1, 2, 1., 1.), filled(1, 1, 2., 3.)]).unwrap();
        assert_eq!(j.padding(), &[0, 1]);
        let mut c = j.copy_row(1, 1, 4).unwrap();
        assert_eq!((c.batch_size(), c.len(), c.padding()), (1, 1, &[0][..]));
        assert!(c.capacity() >= 4);
        let (k, v) = c.append(0, &kv(1, 1, 7.), &kv(1, 1, 7.)).unwrap();
        assert_eq!(
            (slot_values(&k, 0), slot_values(&v, 0)),
            (vec![2., 7.], vec![3., 7.])
        );
        // The source is untouched by writes to the copy.
        assert_eq!(j.seq_lens(), vec![2, 1]);
        assert!(j.copy_row(1, 2, 4).is_err());
        assert!(j.copy_row(2, 1, 4).is_err());
        assert_eq!(j.copy_row(0, 0, 0).unwrap().len(), 0);
    }

    #[test]
    fn truncate_keeps_padding_and_later_tokens_overwrite() {
        let mut j = KvCache::concat(&[filled(1, 3, 1., 1.), filled(1, 1, 2., 2.)]).unwrap();
        assert!(j.truncate(4).is_err());
        // Row 1 has two padding slots.
        assert!(j.truncate(1).is_err());
        j.truncate(2).unwrap();
        assert_eq!(j.seq_lens(), vec![2, 0]);
        let (k, _) = j.append(0, &kv(2, 1, 5.), &kv(2, 1, 5.)).unwrap();
        assert_eq!(k.dims(), &[2, 2, 3, 4]);
        assert_eq!(slot_values(&k, 0), vec![1., 1., 5.]);
    }
}
