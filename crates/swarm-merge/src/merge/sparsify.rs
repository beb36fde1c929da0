//! Sparsification of task vectors, as mergekit does it: magnitude trimming for TIES (keep
//! the `density` fraction of largest |δ| per tensor) and random drops for DARE (keep each
//! entry with probability `density`). With `rescale`, the kept entries are scaled so the
//! tensor's L1 norm is unchanged (mergekit's `rescale`, on by default for DARE), which in
//! expectation is DARE's `1/density`.
//!
//! Both are decided in one pass over a task vector that arrives in chunks (see
//! `Keep::plan_magnitude`, `Keep::plan_random`), and applied chunk by chunk afterwards
//! ([`Keep::apply`]), so a merge never needs a task vector whole. Magnitude trimming finds
//! the k-th largest |δ| by a two-level radix select on the bits of |δ| (for non-negative
//! floats the bit pattern orders like the value): a 65,536-bucket histogram of the top 16
//! bits, then one of the low 16 bits inside the bucket that holds the k-th value. That is
//! two linear passes, against a sort or an index `select_nth` with a cache miss per compare.
//!
//! The passes take chunks on all rayon threads and give the same result as one thread would:
//! histograms are added up, L1 norms are summed per chunk and then in chunk order, and DARE's
//! draws for mask word `i` (entries `64i..64i + 64`) sit at a fixed place in the RNG's stream,
//! wherever they are drawn.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{MergeError, Result};
use crate::merge::simd;
use crate::merge::stream::{ReadScratch, CHUNK};
use crate::merge::trim::ChunkTally;

/// Which entries of a task vector survive sparsification, and the factor the survivors are
/// scaled by.
#[derive(Debug, Clone, PartialEq)]
pub struct Keep {
    rule: KeepRule,
    /// 1 unless `rescale` restored the L1 norm.
    pub scale: f32,
}

#[derive(Debug, Clone, PartialEq)]
enum KeepRule {
    All,
    /// `|δ|` bits above `threshold`, or equal to it at an index below `tie_cutoff` (ties at
    /// the threshold are kept in index order until exactly k entries are kept).
    Largest {
        threshold: u32,
        tie_cutoff: usize,
    },
    /// One bit per entry, set when kept.
    Mask(Vec<u64>),
}

/// `before / after` when both norms are at least 1e-7 (mergekit's guard), else 1.
fn l1_scale(before: f64, after: f64) -> f32 {
    if before < 1e-7 || after < 1e-7 {
        1.0
    } else {
        (before / after) as f32
    }
}

/// `Σ |v|` in f64, with four partial sums so the adds do not wait on each other.
#[inline(always)]
fn l1_norm(values: &[f32]) -> f64 {
    let mut lanes = [0f64; 4];
    let mut quads = values.chunks_exact(4);
    for q in &mut quads {
        for (lane, v) in lanes.iter_mut().zip(q) {
            *lane += v.abs() as f64;
        }
    }
    let tail: f64 = quads.remainder().iter().map(|v| v.abs() as f64).sum();
    lanes.iter().sum::<f64>() + tail
}

/// DARE keeps an entry with probability `density` rounded to a multiple of 2⁻²⁴: the
/// resolution of the f32 uniforms that mergekit's `torch.bernoulli` compares with.
const KEEP_BITS: u32 = 24;

/// DARE's keep probability as a fraction of 2^[`KEEP_BITS`], and the random 64-bit draws
/// each mask word of 64 entries takes: one per binary digit of that fraction from its lowest
/// set one up (1 for a density of 0.5, 2 for 0.25 or 0.75, at most 24).
#[derive(Debug, Clone, Copy)]
struct KeepOdds {
    /// The digits of the fraction that matter, lowest first (bit `s` is digit `s` of the
    /// draws).
    digits: u32,
    draws: u32,
}

impl KeepOdds {
    /// For a density in (0, 1) whose rounding is neither 0 nor 1; `None` otherwise.
    fn of(density: f64) -> Option<KeepOdds> {
        let p = (density * f64::from(1u32 << KEEP_BITS)).round();
        if !(p >= 1.0 && p < f64::from(1u32 << KEEP_BITS)) {
            return None;
        }
        let p = p as u32;
        let low = p.trailing_zeros();
        Some(KeepOdds {
            digits: p >> low,
            draws: KEEP_BITS - low,
        })
    }

    /// A mask word whose bits are each set with these odds, independently, from `draws`
    /// (`self.draws` of them). Bit `j` is set when the number whose digits are the inverted
    /// bits `j` of the draws (draw 0 the lowest digit) is below `digits`: a comparison done
    /// from the lowest digit up for 64 entries at once, where a set digit of the odds keeps
    /// an entry whose draw bit is set or that was kept by the digits below, and a clear one
    /// keeps it only if both hold.
    #[inline(always)]
    fn mask_word(self, draws: &[u64]) -> u64 {
        let mut word = 0u64;
        for (s, r) in draws.iter().enumerate() {
            word = if self.digits >> s & 1 == 1 {
                word | r
            } else {
                word & r
            };
        }
        word
    }
}

/// `v` if `keep`, else `+0.0`, without a branch (the kept pattern is random for DARE).
#[inline(always)]
fn keep_or_zero(v: f32, keep: bool) -> f32 {
    f32::from_bits(v.to_bits() & 0u32.wrapping_sub(keep as u32))
}

/// Chunks a parallel job takes at least, so that a small tensor is one job.
pub(crate) const MIN_CHUNKS_PER_JOB: usize = 2;

/// Buffers of the planning passes, kept from tensor to tensor by the caller. Why: the
/// parallel jobs used to allocate their histograms and read buffers afresh, and fresh memory
/// is fresh pages to fault in and zero; `perf` of a TIES merge of SmolLM2-sized models put a
/// quarter of its time in those page faults.
#[derive(Default)]
pub(crate) struct PlanScratch {
    /// One tensor's magnitudes (TIES), grown to the largest tensor and never shrunk.
    mags: Vec<u32>,
    pub(crate) pools: Pools,
    /// Per chunk, what the one-pass trimming found (see `trim.rs`).
    pub(crate) tallies: Vec<ChunkTally>,
}

/// Buffers lent to the parallel jobs of a pass and given back when a job's [`Lease`] drops.
#[derive(Default)]
pub(crate) struct Pools {
    /// [`CHUNK`]-long `u32` buffers: histograms of 16-bit keys, or DARE's draws.
    words: Mutex<Vec<Vec<u32>>>,
    reads: Mutex<Vec<ReadScratch>>,
}

/// A buffer lent from a pool; it goes back when dropped.
pub(crate) struct Lease<'a, T: Default> {
    pool: &'a Mutex<Vec<T>>,
    item: T,
}

impl<'a, T: Default> Lease<'a, T> {
    /// A pooled buffer (stale contents), or a new one if the pool is empty. A poisoned pool
    /// (a job panicked) only costs the reuse.
    fn take(pool: &'a Mutex<Vec<T>>) -> Self {
        let item = pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        Lease { pool, item }
    }
}

impl<T: Default> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(std::mem::take(&mut self.item));
        }
    }
}

impl<T: Default> Deref for Lease<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.item
    }
}

impl<T: Default> DerefMut for Lease<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.item
    }
}

impl Pools {
    /// An empty histogram of 16-bit keys.
    fn histogram(&self) -> Lease<'_, Vec<u32>> {
        let mut h = self.words(1 << 16);
        h.fill(0);
        h
    }

    /// `len` words, with stale contents.
    fn words(&self, len: usize) -> Lease<'_, Vec<u32>> {
        let mut w = Lease::take(&self.words);
        w.resize(len, 0);
        w
    }

    pub(crate) fn read(&self) -> Lease<'_, ReadScratch> {
        Lease::take(&self.reads)
    }
}

fn add_histograms<'a>(mut a: Lease<'a, Vec<u32>>, b: Lease<'a, Vec<u32>>) -> Lease<'a, Vec<u32>> {
    a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y);
    a
}

/// Pass 2 of the radix select over some magnitudes' bits: counts the low 16 bits of those in
/// bucket `top` (top 16 bits) into `low`, and returns the L1 norm of those in the buckets
/// above it when `rescale` (else 0).
#[inline(always)]
fn tally_bucket(mags: &[u32], top: u32, rescale: bool, low: &mut [u32]) -> f64 {
    let mut one = |lane: &mut f64, bits: u32| {
        let hi = bits >> 16;
        if hi == top {
            low[(bits & 0xFFFF) as usize] += 1;
        } else if rescale {
            *lane += if hi > top {
                f32::from_bits(bits) as f64
            } else {
                0.0
            };
        }
    };
    // Four partial sums, so the adds do not wait on each other.
    let mut lanes = [0f64; 4];
    let mut quads = mags.chunks_exact(4);
    for q in &mut quads {
        for (lane, bits) in lanes.iter_mut().zip(q) {
            one(lane, *bits);
        }
    }
    for bits in quads.remainder() {
        one(&mut lanes[0], *bits);
    }
    lanes.iter().sum()
}

/// Pass 1 of the radix select on one chunk: the magnitudes' bits and their top-16-bit
/// histogram.
struct Magnitudes<'a> {
    values: &'a [f32],
    mags: &'a mut [u32],
    high: &'a mut [u32],
}

impl simd::Kernel for Magnitudes<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (bits, v) in self.mags.iter_mut().zip(self.values) {
            *bits = magnitude_bits(*v);
            self.high[(*bits >> 16) as usize] += 1;
        }
    }
}

/// [`tally_bucket`] through [`simd::fast`].
struct TallyBucket<'a> {
    mags: &'a [u32],
    top: u32,
    rescale: bool,
    low: &'a mut [u32],
}

impl simd::Kernel for TallyBucket<'_> {
    type Output = f64;
    #[inline(always)]
    fn run(self) -> f64 {
        tally_bucket(self.mags, self.top, self.rescale, self.low)
    }
}

/// DARE's mask words from a chunk's draws (see [`KeepOdds::mask_word`]): `odds.draws`
/// consecutive draws per word, each draw two `u32` of the stream, low half first.
struct BernoulliMask<'a> {
    draws: &'a [u32],
    odds: KeepOdds,
    words: &'a mut [u64],
}

impl simd::Kernel for BernoulliMask<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let per_word = 2 * self.odds.draws as usize;
        let mut wide = [0u64; KEEP_BITS as usize];
        for (word, draws) in self.words.iter_mut().zip(self.draws.chunks_exact(per_word)) {
            for (w, pair) in wide.iter_mut().zip(draws.chunks_exact(2)) {
                *w = u64::from(pair[0]) | u64::from(pair[1]) << 32;
            }
            *word = self.odds.mask_word(&wide[..self.odds.draws as usize]);
        }
    }
}

/// A chunk's L1 norms before and after DARE's drops (applied to `values` in place).
struct MaskedNorms<'a> {
    words: &'a [u64],
    values: &'a mut [f32],
}

impl simd::Kernel for MaskedNorms<'_> {
    type Output = (f64, f64);
    #[inline(always)]
    fn run(self) -> (f64, f64) {
        let before = l1_norm(self.values);
        Keep::apply_mask(self.words, self.values);
        (before, l1_norm(self.values))
    }
}

/// The bits of `|v|`, which for non-negative floats order like the values.
#[inline(always)]
pub(crate) fn magnitude_bits(v: f32) -> u32 {
    v.abs().to_bits()
}

/// The index of the bucket holding the `rank`-th largest entry (1-based) counting from the
/// top, and how many entries lie in the buckets above it.
fn bucket_of_rank(hist: &[u32], rank: usize) -> (usize, usize) {
    let mut above = 0usize;
    for (bucket, count) in hist.iter().enumerate().rev() {
        let count = *count as usize;
        if above + count >= rank {
            return (bucket, above);
        }
        above += count;
    }
    (0, above)
}

impl Keep {
    /// Everything kept, unscaled.
    pub fn all() -> Keep {
        Keep {
            rule: KeepRule::All,
            scale: 1.0,
        }
    }

    /// Keeps the entries of `|δ|` bits above `threshold`, and those equal to it before index
    /// `tie_cutoff`.
    pub(crate) fn largest(threshold: u32, tie_cutoff: usize) -> Keep {
        Keep {
            rule: KeepRule::Largest {
                threshold,
                tie_cutoff,
            },
            scale: 1.0,
        }
    }

    /// TIES trimming of a task vector of `n` entries: keeps the `k = ⌊density · n⌋` of
    /// largest magnitude. `delta(start, chunk, scratch)` fills entries
    /// `start..start + chunk.len()`; it is called from several threads at once, each chunk
    /// once. `scratch` holds the buffers, reused between calls.
    pub(crate) fn plan_magnitude(
        name: &str,
        n: usize,
        density: f64,
        rescale: bool,
        scratch: &mut PlanScratch,
        delta: impl Fn(usize, &mut [f32], &mut ReadScratch) -> Result<()> + Sync,
    ) -> Result<Keep> {
        if density >= 1.0 {
            return Ok(Keep::all());
        }
        let k = (density * n as f64) as usize;
        if k == 0 {
            return Err(MergeError::tensor(
                name,
                format!("density {density} keeps none of its {n} entries"),
            ));
        }
        // Pass 1, chunks in parallel: magnitudes (as bits), their top-16-bit histogram (one
        // per job, added up) and each chunk's L1 norm.
        let PlanScratch { mags, pools, .. } = scratch;
        let pools = &*pools;
        // Every entry is written below: only growth needs initialising.
        if mags.len() < n {
            mags.resize(n, 0);
        }
        let mags = &mut mags[..n];
        let mut norms = vec![0f64; n.div_ceil(CHUNK)];
        let high = mags
            .par_chunks_mut(CHUNK)
            .zip(norms.par_iter_mut())
            .enumerate()
            .with_min_len(MIN_CHUNKS_PER_JOB)
            .try_fold(
                || (pools.histogram(), pools.read()),
                |(mut high, mut scratch), (c, (mags, norm))| {
                    let mut values = std::mem::take(&mut scratch.values);
                    values.resize(mags.len(), 0.0);
                    delta(c * CHUNK, &mut values, &mut scratch)?;
                    if rescale {
                        *norm = l1_norm(&values);
                    }
                    simd::fast(Magnitudes {
                        values: &values,
                        mags,
                        high: &mut high,
                    });
                    scratch.values = values;
                    Ok::<_, MergeError>((high, scratch))
                },
            )
            .map(|r| r.map(|(high, _)| high))
            .try_reduce(|| pools.histogram(), |a, b| Ok(add_histograms(a, b)))?;
        select_largest(n, k, rescale, &high, norms, pools, mags)
    }

    /// DARE: keeps each of `n` entries with probability `density` (rounded to a multiple of
    /// 2⁻²⁴), independently: mask word `i` (entries `64i..64i + 64`) is made from the `d`
    /// 64-bit draws `di..di + d` of `rng`'s stream from its position (`d` as
    /// [`KeepOdds`] says, 1 at density 0.5), whichever thread draws them, and `rng` is left
    /// after the last. `delta` (as for [`plan_magnitude`](Self::plan_magnitude)) is read only
    /// when `rescale` needs the norms; `scratch` lends the jobs their buffers.
    ///
    /// Why not one uniform per entry compared with the density: that is 32 random bits an
    /// entry, and generating them was the largest cost of DARE after the mix itself (`perf`
    /// of a DARE-TIES merge of SmolLM2-sized models on a Zen 3: 13% of its CPU time).
    pub(crate) fn plan_random(
        n: usize,
        density: f64,
        rescale: bool,
        rng: &mut ChaCha8Rng,
        scratch: &mut PlanScratch,
        delta: impl Fn(usize, &mut [f32], &mut ReadScratch) -> Result<()> + Sync,
    ) -> Result<Keep> {
        if density >= 1.0 {
            return Ok(Keep::all());
        }
        let pools = &scratch.pools;
        let mut mask = vec![0u64; n.div_ceil(64)];
        // A density that rounds to 1 keeps everything (as above); one that rounds to 0 keeps
        // nothing, and draws nothing.
        let odds = KeepOdds::of(density);
        if odds.is_none() && density >= 0.5 {
            return Ok(Keep::all());
        }
        if let Some(odds) = odds {
            // Stream words (u32) per mask word.
            let per_word = 2 * odds.draws as usize;
            let origin = rng.get_word_pos();
            // A chunk is CHUNK entries, a multiple of 64: whole mask words.
            mask.par_chunks_mut(CHUNK / 64)
                .enumerate()
                .with_min_len(MIN_CHUNKS_PER_JOB)
                .for_each_init(
                    || (rng.clone(), pools.words(CHUNK)),
                    |(rng, draws), (c, words)| {
                        rng.set_word_pos(origin + (c * (CHUNK / 64) * per_word) as u128);
                        draws.resize(words.len() * per_word, 0u32);
                        rng.fill(&mut draws[..]);
                        simd::fast(BernoulliMask { draws, odds, words });
                    },
                );
            rng.set_word_pos(origin + (mask.len() * per_word) as u128);
            // The last word's bits past the end are entries that do not exist.
            if let Some(last) = mask.last_mut() {
                if !n.is_multiple_of(64) {
                    *last &= (1u64 << (n % 64)) - 1;
                }
            }
        }
        let scale = if rescale {
            // Each chunk's L1 norm before and after the drops, in parallel, summed in order.
            let mut norms = vec![(0f64, 0f64); n.div_ceil(CHUNK)];
            norms
                .par_iter_mut()
                .enumerate()
                .with_min_len(MIN_CHUNKS_PER_JOB)
                .try_for_each_init(
                    || pools.read(),
                    |scratch, (c, norm)| {
                        let start = c * CHUNK;
                        let mut values = std::mem::take(&mut scratch.values);
                        values.resize(CHUNK.min(n - start), 0.0);
                        delta(start, &mut values, scratch)?;
                        *norm = simd::fast(MaskedNorms {
                            words: &mask[start / 64..],
                            values: &mut values,
                        });
                        scratch.values = values;
                        Ok::<_, MergeError>(())
                    },
                )?;
            let before: f64 = norms.iter().map(|x| x.0).sum();
            let after: f64 = norms.iter().map(|x| x.1).sum();
            l1_scale(before, after)
        } else {
            1.0
        };
        Ok(Keep {
            rule: KeepRule::Mask(mask),
            scale,
        })
    }

    /// Zeroes the entries of `chunk` whose bit in `words` (bit 0 of word 0 for entry 0) is
    /// clear.
    #[inline(always)]
    fn apply_mask(words: &[u64], chunk: &mut [f32]) {
        for (word, group) in words.iter().zip(chunk.chunks_mut(64)) {
            for (j, v) in group.iter_mut().enumerate() {
                *v = keep_or_zero(*v, word >> j & 1 == 1);
            }
        }
    }

    /// Zeroes the dropped entries of `chunk` (entries `start..start + chunk.len()` of the task
    /// vector) and scales the kept ones.
    #[inline(always)]
    pub fn apply(&self, start: usize, chunk: &mut [f32]) {
        match &self.rule {
            KeepRule::All => {}
            KeepRule::Largest {
                threshold,
                tie_cutoff,
            } => {
                // Ties at the threshold are kept before `tie_cutoff` and dropped from there:
                // `>=` then `>`, so that the loops need no index. |v| has the sign bit clear,
                // so its bits compare as i32 like as u32, and i32 compares vectorise.
                let threshold = *threshold as i32;
                let (ties_kept, rest) =
                    chunk.split_at_mut(tie_cutoff.saturating_sub(start).min(chunk.len()));
                for v in ties_kept {
                    *v = keep_or_zero(*v, v.abs().to_bits() as i32 >= threshold);
                }
                for v in rest {
                    *v = keep_or_zero(*v, v.abs().to_bits() as i32 > threshold);
                }
            }
            KeepRule::Mask(mask) => {
                if start.is_multiple_of(64) {
                    Keep::apply_mask(&mask[start / 64..], chunk);
                } else {
                    for (j, v) in chunk.iter_mut().enumerate() {
                        let i = start + j;
                        *v = keep_or_zero(*v, mask[i / 64] >> (i % 64) & 1 == 1);
                    }
                }
            }
        }
        if self.scale != 1.0 {
            let s = self.scale;
            chunk.iter_mut().for_each(|v| *v *= s);
        }
    }
}

/// The end of TIES trimming, after pass 1 gave the magnitudes' bits `mags`, their
/// top-16-bit histogram `high` and each chunk's L1 norm (`norms`, when `rescale`): finds the
/// k-th largest magnitude and how many of its ties to keep.
fn select_largest(
    n: usize,
    k: usize,
    rescale: bool,
    high: &[u32],
    mut norms: Vec<f64>,
    pools: &Pools,
    mags: &[u32],
) -> Result<Keep> {
    // Summed in chunk order, as one sequential pass would: the same f64 on every run.
    let before: f64 = norms.iter().sum();
    // Pass 2, over the magnitudes in parallel: the low-16-bit histogram of the k-th
    // value's bucket, and (for the rescale) each chunk's L1 norm of everything above it.
    let (top, above_top) = bucket_of_rank(high, k);
    let top = top as u32;
    let low = norms
        .par_iter_mut()
        .zip(mags.par_chunks(CHUNK))
        .with_min_len(MIN_CHUNKS_PER_JOB)
        .fold(
            || pools.histogram(),
            |mut low, (above, bits)| {
                *above = simd::fast(TallyBucket {
                    mags: bits,
                    top,
                    rescale,
                    low: &mut low,
                });
                low
            },
        )
        .reduce(|| pools.histogram(), add_histograms);
    let kept_above: f64 = norms.iter().sum();
    let (bottom, above_bottom) = bucket_of_rank(&low, k - above_top);
    let threshold = (top << 16) | bottom as u32;
    let ties = low[bottom] as usize;
    let ties_kept = k - above_top - above_bottom;
    // Ties at the threshold: keep the first `ties_kept` in index order.
    let tie_cutoff = if ties_kept >= ties {
        n
    } else {
        mags.iter()
            .enumerate()
            .filter(|(_, bits)| **bits == threshold)
            .nth(ties_kept.saturating_sub(1))
            .map_or(n, |(i, _)| i + 1)
    };
    let scale = if rescale {
        // The entries of one low bucket all have the same value, so their sum is the
        // count times the value (exactly: fewer than 2²⁹ of them).
        let in_top_above_bottom: f64 = (bottom + 1..1 << 16)
            .map(|lo| low[lo] as f64 * f32::from_bits((top << 16) | lo as u32) as f64)
            .sum();
        let after =
            kept_above + in_top_above_bottom + ties_kept as f64 * f32::from_bits(threshold) as f64;
        l1_scale(before, after)
    } else {
        1.0
    };
    Ok(Keep {
        rule: KeepRule::Largest {
            threshold,
            tie_cutoff,
        },
        scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn from_slice(
        values: &[f32],
    ) -> impl Fn(usize, &mut [f32], &mut ReadScratch) -> Result<()> + Sync + '_ {
        |start, chunk: &mut [f32], _: &mut ReadScratch| {
            chunk.copy_from_slice(&values[start..start + chunk.len()]);
            Ok(())
        }
    }

    fn magnitude(d: &mut [f32], density: f64, rescale: bool) -> Result<()> {
        let orig = d.to_vec();
        let keep = Keep::plan_magnitude(
            "t",
            d.len(),
            density,
            rescale,
            &mut PlanScratch::default(),
            from_slice(&orig),
        )?;
        keep.apply(0, d);
        Ok(())
    }

    #[test]
    fn magnitude_keeps_the_largest() {
        let mut d = vec![0.1, -5.0, 0.3, 2.0, -0.2];
        magnitude(&mut d, 0.4, false).unwrap();
        assert_eq!(d, vec![0.0, -5.0, 0.0, 2.0, 0.0]);
        let mut d = vec![0.1, -5.0];
        assert!(magnitude(&mut d, 0.1, false)
            .unwrap_err()
            .to_string()
            .contains("`t`"));
    }

    #[test]
    fn magnitude_keeps_exactly_k_with_ties_in_index_order_and_rescales() {
        // Six entries of magnitude 1 (ties), two larger, two smaller; keep k = 5.
        let orig = vec![1.0, -1.0, 0.5, 3.0, 1.0, -1.0, 0.25, 1.0, -2.0, 1.0];
        let mut d = orig.clone();
        magnitude(&mut d, 0.5, false).unwrap();
        let want = vec![1.0, -1.0, 0.0, 3.0, 1.0, 0.0, 0.0, 0.0, -2.0, 0.0];
        assert_eq!(d, want);
        // Applied in pieces that start before, at and after the tie cutoff (entry 5), as the
        // tiles of a merge do.
        let keep = Keep::plan_magnitude(
            "t",
            orig.len(),
            0.5,
            false,
            &mut PlanScratch::default(),
            from_slice(&orig),
        )
        .unwrap();
        for cut in [2, 5, 7] {
            let mut d = orig.clone();
            let (a, b) = d.split_at_mut(cut);
            keep.apply(0, a);
            keep.apply(cut, b);
            assert_eq!(d, want, "{cut}");
        }
        // Against a full sort on many random values spread over many octaves.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let n = 100_000;
        let orig: Vec<f32> = (0..n)
            .map(|_| {
                let x: f32 = rng.gen_range(-1.0..1.0);
                x * x * x * 10f32.powi(rng.gen_range(-3..3))
            })
            .collect();
        for density in [0.01, 0.3, 0.77] {
            let mut d = orig.clone();
            magnitude(&mut d, density, true).unwrap();
            let k = (density * n as f64) as usize;
            let mut sorted: Vec<f32> = orig.iter().map(|v| v.abs()).collect();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kept = d.iter().filter(|v| **v != 0.0).count();
            assert_eq!(kept, k, "{density}");
            let smallest_kept = d
                .iter()
                .zip(&orig)
                .filter(|(v, _)| **v != 0.0)
                .map(|(_, o)| o.abs())
                .fold(f32::INFINITY, f32::min);
            assert_eq!(smallest_kept, sorted[k - 1], "{density}");
            let l1 = |x: &[f32]| x.iter().map(|v| v.abs() as f64).sum::<f64>();
            assert!((l1(&d) / l1(&orig) - 1.0).abs() < 1e-5, "{density}");
        }
    }

    #[test]
    fn dare_mask_is_the_sequential_stream_whatever_the_threads() {
        // Several chunks, a partial last one, and task vectors drawn one after the other.
        let n = 3 * CHUNK + 100;
        let ones = vec![1f32; n];
        // Each density with the draws a mask word takes: one per binary digit of the
        // density at 24 bits, from the lowest set one.
        let densities = [(0.5, 1), (0.3, 24), (0.75, 2), (1e-6, 24)];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let keeps: Vec<(Keep, f64, usize)> = densities
            .into_iter()
            .map(|(p, draws)| {
                let keep = Keep::plan_random(
                    n,
                    p,
                    false,
                    &mut rng,
                    &mut PlanScratch::default(),
                    from_slice(&ones),
                )
                .unwrap();
                (keep, p, draws)
            })
            .collect();
        // The same stream read in order, one 24-bit uniform per entry compared with the
        // density: entry j of mask word w keeps when the number whose binary digits are the
        // inverted bits j of the word's draws (the first draw the lowest digit that matters)
        // is below the density's digits.
        let mut sequential = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (keep, density, draws) in keeps {
            let p = (density * f64::from(1u32 << KEEP_BITS)).round() as u32;
            let low = p.trailing_zeros();
            assert_eq!((KEEP_BITS - low) as usize, draws, "{density}");
            let mut d = ones.clone();
            keep.apply(0, &mut d);
            for (w, entries) in d.chunks(64).enumerate() {
                let word: Vec<u64> = (0..draws).map(|_| sequential.gen()).collect();
                for (j, v) in entries.iter().enumerate() {
                    let u: u64 = (0..draws).map(|s| (!word[s] >> j & 1) << s).sum();
                    let kept = u < u64::from(p >> low);
                    assert_eq!(*v != 0.0, kept, "{density}: entry {}", 64 * w + j);
                }
            }
        }
        assert_eq!(rng.get_word_pos(), sequential.get_word_pos());
    }

    #[test]
    fn dare_densities_that_round_to_zero_or_one_keep_nothing_or_all() {
        let ones = vec![1f32; 1000];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (density, kept) in [(1e-9, 0), (1.0 - 1e-9, 1000)] {
            let start = rng.get_word_pos();
            let keep = Keep::plan_random(
                ones.len(),
                density,
                false,
                &mut rng,
                &mut PlanScratch::default(),
                from_slice(&ones),
            )
            .unwrap();
            let mut d = ones.clone();
            keep.apply(0, &mut d);
            assert_eq!(d.iter().filter(|v| **v != 0.0).count(), kept, "{density}");
            assert_eq!(rng.get_word_pos(), start, "{density} drew");
        }
    }

    #[test]
    fn dare_keeps_density_and_rescales() {
        let n = 200_000;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let orig: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
        for density in [0.1, 0.3, 0.5, 0.9] {
            let mut d = orig.clone();
            let keep = Keep::plan_random(
                n,
                density,
                true,
                &mut rng,
                &mut PlanScratch::default(),
                from_slice(&orig),
            )
            .unwrap();
            // Applied in two uneven pieces, as a chunked merge would.
            let (a, b) = d.split_at_mut(777);
            keep.apply(0, a);
            keep.apply(777, b);
            let kept = d.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
            // Binomial standard deviation sqrt(p(1-p)/n) <= 0.0012; allow 5 of them.
            assert!((kept - density).abs() < 0.006, "{density}: kept {kept}");
            // L1 preserved exactly, and each kept entry scaled by ~1/density.
            let l1 = |x: &[f32]| x.iter().map(|v| v.abs() as f64).sum::<f64>();
            assert!((l1(&d) / l1(&orig) - 1.0).abs() < 1e-5);
            let (i, v) = d.iter().enumerate().find(|(_, v)| **v != 0.0).unwrap();
            let scale = *v as f64 / orig[i] as f64;
            assert!(
                (scale * density - 1.0).abs() < 0.02,
                "{density}: scale {scale}"
            );
        }
    }
}
