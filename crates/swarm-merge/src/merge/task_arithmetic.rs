//! mergekit's "generalized task arithmetic": task arithmetic, TIES and DARE are one algorithm
//! with different switches.
//!
//! Per tensor: task vectors `δ_i = θ_i − θ_base`, optionally sparsified (TIES: magnitude;
//! DARE: random), weighted `w_i δ_i`; with a sign consensus (TIES, DARE-TIES), entries whose
//! sign disagrees with the sign of `Σ_i w_i δ_i` are dropped; the sum is divided by the sum of
//! the weights that contributed (per entry with consensus) when `normalize`, scaled by
//! `lambda`, and added to the base.

use rand_chacha::ChaCha8Rng;

use crate::error::{MergeError, Result};
use crate::merge::simd;
use crate::merge::sparsify::{Keep, PlanScratch};
use crate::merge::stream::{ReadScratch, CHUNK};
use crate::merge::trim;

/// How task vectors are thinned before they are mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsify {
    /// TIES: keep the largest-magnitude `density` fraction.
    Magnitude,
    /// DARE: keep each entry with probability `density`.
    Random,
}

/// How the sign of each entry is elected (TIES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consensus {
    /// The sign of the weighted sum (TIES paper; mergekit's default).
    Sum,
    /// The sign of the majority count.
    Count,
}

/// The switches of one generalized-task-arithmetic method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GtaParams {
    pub sparsify: Option<Sparsify>,
    pub consensus: Option<Consensus>,
    pub normalize: bool,
    pub rescale: bool,
    pub lambda: f64,
}

/// One model's task vector with its weight and density.
pub struct TaskVector {
    pub delta: Vec<f32>,
    pub weight: f64,
    pub density: f64,
}

/// The per-tensor plan of a generalized-task-arithmetic merge: what each task vector keeps,
/// decided in a first pass over the task vectors, then applied chunk by chunk in
/// [`mix_chunk`](Self::mix_chunk).
///
/// The arithmetic is mergekit's with `dtype: float32`: f32 throughout (weights and `lambda`
/// rounded to f32, as torch does with them), the same operations in the same order.
pub(crate) struct GtaMixer {
    params: GtaParams,
    weights: Vec<f32>,
    lambda: f32,
    keeps: Vec<Keep>,
    /// `Σ w_i` (1 when it is ~0): the divisor of `normalize` without a sign consensus.
    global_divisor: f32,
}

/// Entries mixed at a time within a chunk (see [`GtaMixer::mix_tiles`]): three f32
/// accumulators and a tile of each task vector, 4 KiB each.
const TILE: usize = 1024;

/// Per-entry accumulators of one chunk, reused between chunks.
#[derive(Default)]
pub(crate) struct MixWork {
    elected: Vec<f32>,
    mixed: Vec<f32>,
    divisor: Vec<f32>,
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

impl GtaMixer {
    /// Plans the merge of one tensor of `n` entries from task vectors with `(weight, density)`
    /// each. `delta(i, start, chunk, scratch)` fills entries `start..start + chunk.len()` of
    /// task vector `i`; it is called once per chunk of each task vector that is sparsified
    /// (DARE without rescale draws its mask without reading it), from several threads at
    /// once. `scratch` holds the planning buffers, reused between tensors.
    pub(crate) fn plan(
        name: &str,
        n: usize,
        params: &GtaParams,
        experts: &[(f64, f64)],
        rng: &mut ChaCha8Rng,
        scratch: &mut PlanScratch,
        delta: impl Fn(usize, usize, &mut [f32], &mut ReadScratch) -> Result<()> + Sync,
    ) -> Result<GtaMixer> {
        let delta = &delta;
        if params.sparsify == Some(Sparsify::Magnitude) {
            let densities: Vec<f64> = experts.iter().map(|e| e.1).collect();
            let keeps = trim::plan_magnitudes(name, n, &densities, params.rescale, scratch, delta)?;
            return Ok(GtaMixer::new(params, experts, keeps));
        }
        let mut keeps = Vec::with_capacity(experts.len());
        for (i, (_, density)) in experts.iter().enumerate() {
            let per_expert = move |start: usize, chunk: &mut [f32], s: &mut ReadScratch| {
                delta(i, start, chunk, s)
            };
            keeps.push(match params.sparsify {
                None => Keep::all(),
                // All task vectors at once, above.
                Some(Sparsify::Magnitude) => unreachable!("TIES trimming is planned by trim.rs"),
                Some(Sparsify::Random) => {
                    Keep::plan_random(n, *density, params.rescale, rng, scratch, per_expert)?
                }
            });
        }
        Ok(GtaMixer::new(params, experts, keeps))
    }

    fn new(params: &GtaParams, experts: &[(f64, f64)], keeps: Vec<Keep>) -> GtaMixer {
        let weights: Vec<f32> = experts.iter().map(|e| e.0 as f32).collect();
        let weight_sum: f32 = weights.iter().sum();
        GtaMixer {
            params: *params,
            weights,
            lambda: params.lambda as f32,
            keeps,
            global_divisor: if weight_sum.abs() < 1e-8 {
                1.0
            } else {
                weight_sum
            },
        }
    }

    /// Mixes one chunk: `base` holds the base's entries `start..start + len` and `out`
    /// receives the merged ones (the base is not copied into the output first: that copy was
    /// 7-9% of a merge's CPU); `deltas[i][..len]` holds task vector `i`'s entries (trimmed in
    /// place).
    pub(crate) fn mix_chunk(
        &self,
        start: usize,
        base: &[f32],
        out: &mut [f32],
        deltas: &mut [Vec<f32>],
        work: &mut MixWork,
    ) {
        simd::fast(MixKernel {
            mixer: self,
            start,
            base,
            out,
            deltas,
            work,
        });
    }

    /// The chunk [`TILE`] entries at a time, so that a tile's accumulators and task
    /// vector entries stay in L1 through the several passes over them (a whole chunk's
    /// arrays are 256 KiB each).
    #[inline(always)]
    fn mix_tiles(
        &self,
        start: usize,
        base: &[f32],
        out: &mut [f32],
        deltas: &mut [Vec<f32>],
        work: &mut MixWork,
    ) {
        for v in [&mut work.elected, &mut work.mixed, &mut work.divisor] {
            if v.len() < TILE {
                v.resize(TILE, 0.0);
            }
        }
        for (t, (base, out)) in base.chunks(TILE).zip(out.chunks_mut(TILE)).enumerate() {
            self.mix_tile(start, t * TILE, base, out, deltas, work);
        }
    }

    /// Mixes entries `at..at + out.len()` of the chunk that starts at entry `start`.
    #[inline(always)]
    fn mix_tile(
        &self,
        start: usize,
        at: usize,
        base: &[f32],
        out: &mut [f32],
        deltas: &mut [Vec<f32>],
        work: &mut MixWork,
    ) {
        let len = out.len();
        let p = &self.params;
        for (keep, d) in self.keeps.iter().zip(deltas.iter_mut()) {
            keep.apply(start + at, &mut d[at..at + len]);
        }
        // The accumulators are not zeroed: the first task vector's pass assigns `0.0 + x`
        // (the same bits as adding x to a zeroed entry, -0.0 included) instead of adding.
        let (elected, mixed, divisor) = (
            &mut work.elected[..len],
            &mut work.mixed[..len],
            &mut work.divisor[..len],
        );
        if deltas.is_empty() {
            mixed.fill(0.0);
            divisor.fill(1.0);
        }
        let weighted = deltas.iter().zip(&self.weights).enumerate();
        let divisor = match p.consensus {
            None => {
                for (i, (d, w)) in weighted {
                    let d = &d[at..at + len];
                    if i == 0 {
                        for (m, x) in mixed.iter_mut().zip(d) {
                            *m = 0.0 + w * *x;
                        }
                    } else {
                        for (m, x) in mixed.iter_mut().zip(d) {
                            *m += w * *x;
                        }
                    }
                }
                None
            }
            Some(c) => {
                // The elected sign of each entry: of the weighted sum, or of the sign count.
                for (i, (d, w)) in weighted.clone() {
                    let first = i == 0;
                    let d = &d[at..at + len];
                    match c {
                        Consensus::Sum => elect(elected, d, first, |x| w * x),
                        Consensus::Count => elect(elected, d, first, |x| sign(w * x)),
                    }
                }
                // Disjoint mean: entries whose sign agrees contribute value and weight;
                // sign(0) = 0 never agrees.
                for (i, (d, w)) in weighted {
                    let d = &d[at..at + len];
                    let first = i == 0;
                    for ((m, dv), (e, x)) in mixed
                        .iter_mut()
                        .zip(divisor.iter_mut())
                        .zip(elected.iter().zip(d))
                    {
                        let wd = w * *x;
                        let agrees = if *e >= 0.0 { wd > 0.0 } else { wd < 0.0 };
                        let (m0, dv0) = if first { (0.0, 0.0) } else { (*m, *dv) };
                        *m = m0 + if agrees { wd } else { 0.0 };
                        *dv = dv0 + if agrees { *w } else { 0.0 };
                    }
                }
                divisor
                    .iter_mut()
                    .for_each(|dv| *dv = if *dv == 0.0 { 1.0 } else { *dv });
                Some(&*divisor)
            }
        };
        // `base + m / divisor · lambda`, the divide only when `normalize` (mergekit skips the
        // product when lambda is 1; multiplying by 1 gives the same bits); the branches are
        // outside the loops so that these vectorise.
        let lambda = self.lambda;
        let out = out.iter_mut().zip(&base[..len]).zip(mixed.iter());
        match (divisor, p.normalize) {
            (Some(divisor), true) => {
                for (((out, b), m), dv) in out.zip(divisor) {
                    *out = *b + (*m / *dv) * lambda;
                }
            }
            (None, true) => {
                let dv = self.global_divisor;
                for ((out, b), m) in out {
                    *out = *b + (*m / dv) * lambda;
                }
            }
            (_, false) => {
                for ((out, b), m) in out {
                    *out = *b + *m * lambda;
                }
            }
        }
    }
}

/// [`GtaMixer::mix_chunk`]'s arguments, run through [`simd::fast`].
struct MixKernel<'a> {
    mixer: &'a GtaMixer,
    start: usize,
    base: &'a [f32],
    out: &'a mut [f32],
    deltas: &'a mut [Vec<f32>],
    work: &'a mut MixWork,
}

impl simd::Kernel for MixKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let MixKernel {
            mixer,
            start,
            base,
            out,
            deltas,
            work,
        } = self;
        mixer.mix_tiles(start, base, out, deltas, work);
    }
}

/// `elected = (first ? 0.0 : elected) + vote(x)` per entry, the branch outside the loop.
#[inline(always)]
fn elect(elected: &mut [f32], d: &[f32], first: bool, vote: impl Fn(f32) -> f32) {
    if first {
        for (e, x) in elected.iter_mut().zip(d) {
            *e = 0.0 + vote(*x);
        }
    } else {
        for (e, x) in elected.iter_mut().zip(d) {
            *e += vote(*x);
        }
    }
}

/// Mixes task vectors into `base` (consumed as the output buffer): the in-memory form of
/// what a merge does tensor by tensor.
pub fn mix(
    name: &str,
    mut base: Vec<f32>,
    tvs: Vec<TaskVector>,
    p: &GtaParams,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>> {
    if tvs.is_empty() {
        return Ok(base);
    }
    let n = base.len();
    if let Some(tv) = tvs.iter().find(|tv| tv.delta.len() != n) {
        return Err(MergeError::tensor(
            name,
            format!("a task vector has {} entries, the base {n}", tv.delta.len()),
        ));
    }
    let experts: Vec<(f64, f64)> = tvs.iter().map(|t| (t.weight, t.density)).collect();
    let mixer = GtaMixer::plan(
        name,
        n,
        p,
        &experts,
        rng,
        &mut PlanScratch::default(),
        |i, start, chunk, _| {
            chunk.copy_from_slice(&tvs[i].delta[start..start + chunk.len()]);
            Ok(())
        },
    )?;
    let mut deltas = vec![vec![0f32; CHUNK.min(n)]; tvs.len()];
    let mut work = MixWork::default();
    let mut base_chunk = Vec::new();
    for (c, out) in base.chunks_mut(CHUNK).enumerate() {
        let start = c * CHUNK;
        for (d, tv) in deltas.iter_mut().zip(&tvs) {
            d[..out.len()].copy_from_slice(&tv.delta[start..start + out.len()]);
        }
        base_chunk.clear();
        base_chunk.extend_from_slice(out);
        mixer.mix_chunk(start, &base_chunk, out, &mut deltas, &mut work);
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tv(delta: Vec<f32>, weight: f64) -> TaskVector {
        TaskVector {
            delta,
            weight,
            density: 1.0,
        }
    }

    #[test]
    fn task_arithmetic_adds_weighted_deltas() {
        let p = GtaParams {
            sparsify: None,
            consensus: None,
            normalize: false,
            rescale: false,
            lambda: 1.0,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let out = mix(
            "x",
            vec![1.0, 1.0],
            vec![tv(vec![1.0, -1.0], 0.5), tv(vec![2.0, 2.0], 1.0)],
            &p,
            &mut rng,
        )
        .unwrap();
        assert_eq!(out, vec![3.5, 2.5]);
    }

    #[test]
    fn ties_elects_signs_and_divides_by_contributing_weights() {
        let p = GtaParams {
            sparsify: Some(Sparsify::Magnitude),
            consensus: Some(Consensus::Sum),
            normalize: true,
            rescale: false,
            lambda: 1.0,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let tvs = vec![tv(vec![3.0, -1.0], 1.0), tv(vec![-1.0, -2.0], 1.0)];
        let out = mix("x", vec![0.0, 0.0], tvs, &p, &mut rng).unwrap();
        // entry 0: sum +2 -> only +3 agrees -> 3/1; entry 1: both negative -> -3/2.
        assert_eq!(out, vec![3.0, -1.5]);
    }
}
