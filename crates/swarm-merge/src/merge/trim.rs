//! TIES trimming of all of a tensor's task vectors in one pass over the tensor, without a
//! stored copy of the magnitudes.
//!
//! A sample of each task vector (blocks spread over the tensor) brackets the k-th largest
//! `|δ|` between two magnitudes `lo <= hi`. One pass over the tensor then counts, per task
//! vector, the entries above `hi` and collects those inside the bracket (a few percent, with
//! their index). When the count above is below k and the bracket holds the rest, the k-th
//! largest is selected among the collected entries: the same threshold and the same tie
//! cutoff (ties kept in index order) as the radix select in `sparsify.rs`, hence the same
//! output bits. When the sample misled (the bracket misses the k-th value, or holds too much
//! of the tensor), that task vector is trimmed by the radix select instead, so the sample
//! decides only the speed.
//!
//! The radix select takes two passes, one writing every magnitude (4 bytes an entry) and one
//! reading them back; here one pass reads the inputs once for all task vectors. With
//! `rescale` (L1 norms summed in the radix select's order, for the same bits) and for small
//! tensors, the radix select is used.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::error::{MergeError, Result};
use crate::merge::simd;
use crate::merge::sparsify::{magnitude_bits, Keep, PlanScratch, MIN_CHUNKS_PER_JOB};
use crate::merge::stream::{ReadScratch, CHUNK};

/// Tensors smaller than this are trimmed by the radix select: the sample would be a large
/// part of them.
const ONE_PASS_MIN: usize = 4 * CHUNK;

/// Entries per sampled block (2 KiB of f32: one or two pages of each input).
const BLOCK: usize = 512;

/// A task vector's bracket: the k-th largest `|δ|` bits lie in `lo..=hi` (probably).
#[derive(Clone, Copy)]
struct Bracket {
    expert: usize,
    k: usize,
    lo: u32,
    hi: u32,
}

/// What the pass found in one chunk, per bracketed task vector.
#[derive(Default)]
pub(crate) struct ChunkTally {
    /// Entries above the bracket.
    above: Vec<usize>,
    /// (offset in the chunk, bits) of the entries inside it, in index order.
    inside: Vec<Vec<(u32, u32)>>,
}

/// TIES trimming of the task vectors of one tensor of `n` entries, with `densities[i]` for
/// task vector `i`: keeps the `k = ⌊density · n⌋` of largest magnitude of each (see
/// [`Keep::plan_magnitude`], whose result this is, bit for bit). `delta(i, start, chunk,
/// scratch)` fills entries `start..start + chunk.len()` of task vector `i`, from several
/// threads at once.
pub(crate) fn plan_magnitudes(
    name: &str,
    n: usize,
    densities: &[f64],
    rescale: bool,
    scratch: &mut PlanScratch,
    delta: &(impl Fn(usize, usize, &mut [f32], &mut ReadScratch) -> Result<()> + Sync),
) -> Result<Vec<Keep>> {
    let mut keeps: Vec<Option<Keep>> = vec![None; densities.len()];
    let mut brackets = Vec::new();
    for (i, density) in densities.iter().enumerate() {
        if *density >= 1.0 {
            keeps[i] = Some(Keep::all());
            continue;
        }
        let k = (density * n as f64) as usize;
        if k == 0 {
            return Err(MergeError::tensor(
                name,
                format!("density {density} keeps none of its {n} entries"),
            ));
        }
        if !rescale && n >= ONE_PASS_MIN {
            let mut read = scratch.pools.read();
            if let Some((lo, hi)) =
                bracket(n, k, &mut read, |start, chunk, s| delta(i, start, chunk, s))?
            {
                brackets.push(Bracket {
                    expert: i,
                    k,
                    lo,
                    hi,
                });
            }
        }
    }
    if !brackets.is_empty() {
        for (b, keep) in brackets.iter().zip(one_pass(n, &brackets, scratch, delta)?) {
            keeps[b.expert] = keep;
        }
    }
    keeps
        .into_iter()
        .enumerate()
        .map(|(i, keep)| match keep {
            Some(keep) => Ok(keep),
            None => Keep::plan_magnitude(name, n, densities[i], rescale, scratch, |s, c, r| {
                delta(i, s, c, r)
            }),
        })
        .collect()
}

/// Brackets the k-th largest of a task vector's `n` magnitudes from a sample of blocks
/// spread evenly over it: `None` when the bracket would reach past the sample's ends.
fn bracket(
    n: usize,
    k: usize,
    scratch: &mut ReadScratch,
    delta: impl Fn(usize, &mut [f32], &mut ReadScratch) -> Result<()>,
) -> Result<Option<(u32, u32)>> {
    let blocks = (n / (32 * BLOCK)).clamp(16, 64);
    let mut values = std::mem::take(&mut scratch.values);
    values.resize(BLOCK, 0.0);
    let mut sample = Vec::with_capacity(blocks * BLOCK);
    for j in 0..blocks {
        let start = ((2 * j + 1) * n / (2 * blocks)).min(n - BLOCK);
        delta(start, &mut values, scratch)?;
        sample.extend(values.iter().map(|v| magnitude_bits(*v)));
    }
    scratch.values = values;
    // The k-th largest sits near rank p·m of the sample (from the top); the margin is 3.5
    // binomial standard deviations and 0.2% of the sample (neighbouring entries are alike,
    // so a block sample is worth fewer independent draws).
    let m = sample.len() as f64;
    let p = k as f64 / n as f64;
    let at = p * m;
    let margin = 3.5 * (m * p * (1.0 - p)).sqrt() + 0.002 * m + 8.0;
    let (top, bottom) = ((at - margin).floor(), (at + margin).ceil());
    if top < 0.0 || bottom > m - 1.0 {
        return Ok(None);
    }
    let (top, bottom) = (top as usize, bottom as usize);
    let descending = |a: &u32, b: &u32| b.cmp(a);
    let (_, hi, below) = sample.select_nth_unstable_by(top, descending);
    let hi = *hi;
    let (_, lo, _) = below.select_nth_unstable_by(bottom - top - 1, descending);
    Ok(Some((*lo, hi)))
}

/// The pass over the tensor for every bracketed task vector, then the selection: a `Keep`
/// per bracket, or `None` where the bracket missed.
fn one_pass(
    n: usize,
    brackets: &[Bracket],
    scratch: &mut PlanScratch,
    delta: &(impl Fn(usize, usize, &mut [f32], &mut ReadScratch) -> Result<()> + Sync),
) -> Result<Vec<Option<Keep>>> {
    let PlanScratch { pools, tallies, .. } = scratch;
    let pools = &*pools;
    let chunks = n.div_ceil(CHUNK);
    if tallies.len() < chunks {
        tallies.resize_with(chunks, ChunkTally::default);
    }
    let tallies = &mut tallies[..chunks];
    // A bracket holding more than an eighth of the tensor is a miss: the pass stops
    // collecting for it rather than hold that much.
    let limit = n / 8;
    let collected: Vec<AtomicUsize> = brackets.iter().map(|_| AtomicUsize::new(0)).collect();
    let overflow: Vec<AtomicBool> = brackets.iter().map(|_| AtomicBool::new(false)).collect();
    tallies
        .par_iter_mut()
        .enumerate()
        .with_min_len(MIN_CHUNKS_PER_JOB)
        .try_for_each_init(
            || pools.read(),
            |scratch, (c, tally)| {
                let start = c * CHUNK;
                let len = CHUNK.min(n - start);
                tally.above.clear();
                tally.above.resize(brackets.len(), 0);
                tally.inside.resize_with(brackets.len(), Vec::new);
                let mut values = std::mem::take(&mut scratch.values);
                values.resize(len, 0.0);
                for (slot, b) in brackets.iter().enumerate() {
                    let inside = &mut tally.inside[slot];
                    inside.clear();
                    if overflow[slot].load(Ordering::Relaxed) {
                        continue;
                    }
                    delta(b.expert, start, &mut values, scratch)?;
                    tally.above[slot] = simd::fast(Tally {
                        values: &values,
                        lo: b.lo,
                        hi: b.hi,
                        inside,
                    });
                    let total = collected[slot].fetch_add(inside.len(), Ordering::Relaxed);
                    if total + inside.len() > limit {
                        overflow[slot].store(true, Ordering::Relaxed);
                    }
                }
                scratch.values = values;
                Ok::<_, MergeError>(())
            },
        )?;
    Ok(brackets
        .iter()
        .enumerate()
        .map(|(slot, b)| {
            if overflow[slot].load(Ordering::Relaxed) {
                return None;
            }
            select(n, b.k, slot, tallies)
        })
        .collect())
}

/// The k-th largest from the pass's tallies for bracket `slot`, as the radix select would
/// keep it; `None` when it is not inside the bracket.
fn select(n: usize, k: usize, slot: usize, tallies: &[ChunkTally]) -> Option<Keep> {
    let above: usize = tallies.iter().map(|t| t.above[slot]).sum();
    let inside: usize = tallies.iter().map(|t| t.inside[slot].len()).sum();
    if above >= k || above + inside < k {
        return None;
    }
    let rank = k - above;
    let mut bits: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.inside[slot].iter().map(|e| e.1))
        .collect();
    let threshold = *bits.select_nth_unstable_by(rank - 1, |a, b| b.cmp(a)).1;
    let greater = bits.iter().filter(|b| **b > threshold).count();
    let ties = bits.iter().filter(|b| **b == threshold).count();
    // Every entry equal to the threshold is inside the bracket, so this is the count of
    // ties the radix select keeps, and they are kept in index order.
    let ties_kept = rank - greater;
    let tie_cutoff = if ties_kept >= ties {
        n
    } else {
        tallies
            .iter()
            .enumerate()
            .flat_map(|(c, t)| {
                t.inside[slot]
                    .iter()
                    .map(move |(offset, bits)| (c * CHUNK + *offset as usize, *bits))
            })
            .filter(|(_, bits)| *bits == threshold)
            .nth(ties_kept.saturating_sub(1))
            .map_or(n, |(i, _)| i + 1)
    };
    Some(Keep::largest(threshold, tie_cutoff))
}

/// One chunk of a task vector against a bracket: counts the entries above it and collects
/// (offset, bits) of those inside, 16 entries at a time so that the compares vectorise and
/// only groups with an entry inside take the scalar path.
struct Tally<'a> {
    values: &'a [f32],
    lo: u32,
    hi: u32,
    inside: &'a mut Vec<(u32, u32)>,
}

impl simd::Kernel for Tally<'_> {
    type Output = usize;
    #[inline(always)]
    fn run(self) -> usize {
        // |v| has the sign bit clear, so its bits compare as i32 like as u32, and i32
        // compares vectorise.
        let (lo, hi) = (self.lo as i32, self.hi as i32);
        const GROUP: usize = 16;
        // Lane-wise counts over fixed-size groups, and a bit per entry inside the bracket
        // packed into a word: the loops compile to vector compares and a mask move (a loop
        // over a slice of unknown length stayed scalar). Only the set bits are visited.
        let mut counts = [0u32; GROUP];
        let mut groups = self.values.chunks_exact(GROUP);
        for (g, group) in (&mut groups).enumerate() {
            let group: &[f32; GROUP] = group.try_into().expect("chunks_exact gives GROUP");
            let mut mask = 0u32;
            for (j, (count, v)) in counts.iter_mut().zip(group).enumerate() {
                let bits = magnitude_bits(*v) as i32;
                *count += (bits > hi) as u32;
                mask |= (((bits >= lo) & (bits <= hi)) as u32) << j;
            }
            while mask != 0 {
                let j = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                self.inside
                    .push(((g * GROUP + j) as u32, magnitude_bits(group[j])));
            }
        }
        let mut above = counts.iter().map(|c| *c as usize).sum::<usize>();
        let rest = groups.remainder();
        let offset = self.values.len() - rest.len();
        for (j, v) in rest.iter().enumerate() {
            let bits = magnitude_bits(*v);
            above += (bits as i32 > hi) as usize;
            if (lo..=hi).contains(&(bits as i32)) {
                self.inside.push(((offset + j) as u32, bits));
            }
        }
        above
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The one-pass trimming gives the radix select's `Keep`, on spread-out values, on
    /// values with many exact ties, and where the sample misleads (a tensor whose first and
    /// last parts differ, sampled in between).
    #[test]
    fn one_pass_equals_the_radix_select() {
        let n = 5 * CHUNK + 123;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let spread: Vec<f32> = (0..n)
            .map(|_| {
                let x: f32 = rng.gen_range(-1.0..1.0);
                x * x * x * 10f32.powi(rng.gen_range(-3..3))
            })
            .collect();
        let ties: Vec<f32> = (0..n)
            .map(|_| [0.0, 0.5, -0.5, 1.0, 2.0][rng.gen_range(0..5)])
            .collect();
        let levels: Vec<f32> = (0..n)
            .map(|_| rng.gen_range(-1000..1000) as f32 * 0.01)
            .collect();
        let skewed: Vec<f32> = (0..n)
            .map(|i| if i < n / 3 { 100.0 } else { 1e-3 } * rng.gen_range(-1.0f32..1.0))
            .collect();
        for tvs in [
            vec![spread.clone(), ties.clone()],
            vec![skewed.clone(), levels.clone()],
        ] {
            for densities in [[0.5, 0.2], [0.01, 0.93], [0.3, 1.0]] {
                let delta = |i: usize, start: usize, chunk: &mut [f32], _: &mut ReadScratch| {
                    chunk.copy_from_slice(&tvs[i][start..start + chunk.len()]);
                    Ok(())
                };
                let got = plan_magnitudes(
                    "t",
                    n,
                    &densities,
                    false,
                    &mut PlanScratch::default(),
                    &delta,
                )
                .unwrap();
                for (i, keep) in got.iter().enumerate() {
                    let want = Keep::plan_magnitude(
                        "t",
                        n,
                        densities[i],
                        false,
                        &mut PlanScratch::default(),
                        |s, c, r| delta(i, s, c, r),
                    )
                    .unwrap();
                    assert_eq!(*keep, want, "{densities:?} {i}");
                }
            }
        }
    }
}
