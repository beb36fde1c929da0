//! mergekit's "generalized task arithmetic": task arithmetic, TIES and DARE are one algorithm
//! with different switches.
//!
//! Per tensor: task vectors `δ_i = θ_i − θ_base`, optionally sparsified (TIES: magnitude;
//! DARE: random), weighted `w_i δ_i`; with a sign consensus (TIES, DARE-TIES), entries whose
//! sign disagrees with the sign of `Σ_i w_i δ_i` are dropped; the sum is divided by the sum of
//! the weights that contributed (per entry with consensus) when `normalize`, scaled by
//! `lambda`, and added to the base.

use rand::Rng;
use rayon::prelude::*;

use crate::error::Result;
use crate::merge::sparsify;

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

/// Mixes task vectors into `base` (consumed as the output buffer).
pub fn mix(
    name: &str,
    mut base: Vec<f32>,
    mut tvs: Vec<TaskVector>,
    p: &GtaParams,
    rng: &mut impl Rng,
) -> Result<Vec<f32>> {
    if tvs.is_empty() {
        return Ok(base);
    }
    for tv in &mut tvs {
        match p.sparsify {
            Some(Sparsify::Magnitude) => {
                sparsify::magnitude(name, &mut tv.delta, tv.density, p.rescale)?
            }
            Some(Sparsify::Random) => {
                sparsify::bernoulli(&mut tv.delta, tv.density, p.rescale, rng)
            }
            None => {}
        }
    }
    let weight_sum: f64 = tvs.iter().map(|t| t.weight).sum();
    let global_divisor = if weight_sum.abs() < 1e-8 {
        1.0
    } else {
        weight_sum
    };
    base.par_iter_mut().enumerate().for_each(|(i, out)| {
        let (mut mixed, mut divisor) = (0.0f64, 0.0f64);
        match p.consensus {
            None => {
                for tv in &tvs {
                    mixed += tv.weight * tv.delta[i] as f64;
                }
                divisor = global_divisor;
            }
            Some(c) => {
                let majority_positive = match c {
                    Consensus::Sum => {
                        tvs.iter()
                            .map(|tv| tv.weight * tv.delta[i] as f64)
                            .sum::<f64>()
                            >= 0.0
                    }
                    Consensus::Count => {
                        tvs.iter()
                            .map(|tv| sign(tv.weight * tv.delta[i] as f64))
                            .sum::<f64>()
                            >= 0.0
                    }
                };
                let want = if majority_positive { 1.0 } else { -1.0 };
                for tv in &tvs {
                    let wd = tv.weight * tv.delta[i] as f64;
                    // sign(0) = 0 never agrees: zeros contribute neither value nor weight.
                    if sign(wd) == want {
                        mixed += wd;
                        divisor += tv.weight;
                    }
                }
                if divisor == 0.0 {
                    divisor = 1.0;
                }
            }
        }
        if p.normalize {
            mixed /= divisor;
        }
        mixed *= p.lambda;
        *out = (*out as f64 + mixed) as f32;
    });
    Ok(base)
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
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
