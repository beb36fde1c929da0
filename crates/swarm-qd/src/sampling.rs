//! Choosing parents from an archive: uniform, or CycleQD's elite sampling.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::archive::{bin_of, GridArchive};
use crate::error::{QdError, Result};

/// How parents are drawn from the active archive.
///
/// Parents of one child are distinct elites whenever the archive holds enough of them (CycleQD's
/// code draws with `replace=False`); when it holds fewer elites than parents are needed, which
/// happens early on when several experts share a cell, the draw is with replacement instead of
/// an error.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParentSampler {
    /// Every elite equally likely (CycleQD's `RandomSampler`, the paper's ablation baseline).
    Uniform,
    /// CycleQD's elite sampling: the weight of an elite is a product of per-skill factors, each
    /// a min-max normalisation over the archive, so elites strong in the quality skill *and*
    /// in the behaviour skills are preferred while no elite's chance drops to zero.
    Elite {
        /// Which of the two published formulas.
        formula: EliteFormula,
    },
}

impl Default for ParentSampler {
    /// Elite sampling with the paper's formula.
    fn default() -> Self {
        Self::Elite {
            formula: EliteFormula::paper(),
        }
    }
}

/// The two versions of CycleQD's elite-sampling weight.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "version", rename_all = "snake_case")]
pub enum EliteFormula {
    /// The paper (Kuroki et al., ICLR 2025, "elite sampling"): every skill score `f_j`
    /// of the elite, the quality and each behaviour value, is mapped linearly from the
    /// archive's `[min_j, max_j]` onto `[alpha_low, alpha_high]` and the factors multiply:
    /// `w = prod_j (alpha_low + (f_j - min_j) / (max_j - min_j) * (alpha_high - alpha_low))`,
    /// `p = w / sum(w)`. The paper uses `[0.5, 0.8]`.
    ///
    /// Reading of an ambiguous point: the paper normalises the skill *scores*; we use the
    /// elite's unbinned behaviour values for the behaviour skills (the released code uses bin
    /// indices; see [`EliteFormula::ReleasedCode`]). A skill on which every elite has the same
    /// value contributes a factor of 1, as in the released code.
    Paper {
        /// Factor of the worst elite on a skill.
        alpha_low: f64,
        /// Factor of the best elite on a skill.
        alpha_high: f64,
    },
    /// SakanaAI/CycleQD `sampler/elite_sampler.py`: `base + (v - min) * slope / (max - min)`,
    /// where `v` is the quality and each behaviour *bin index*, with `base = 0.5` and
    /// `slope = 0.8`, so factors lie in `[0.5, 1.3]` rather than the paper's `[0.5, 0.8]`.
    ReleasedCode {
        /// Factor of the worst elite on a skill.
        base: f64,
        /// Added to the factor of the best elite on a skill.
        slope: f64,
    },
}

impl EliteFormula {
    /// The paper's formula with `[alpha_low, alpha_high] = [0.5, 0.8]`.
    pub fn paper() -> Self {
        Self::Paper {
            alpha_low: 0.5,
            alpha_high: 0.8,
        }
    }

    /// The released code's formula (`0.5 + 0.8 * normalised`).
    pub fn released_code() -> Self {
        Self::ReleasedCode {
            base: 0.5,
            slope: 0.8,
        }
    }

    /// `(low, high)` of every factor.
    fn range(&self) -> (f64, f64) {
        match *self {
            Self::Paper {
                alpha_low,
                alpha_high,
            } => (alpha_low, alpha_high),
            Self::ReleasedCode { base, slope } => (base, base + slope),
        }
    }
}

impl ParentSampler {
    /// Checks the parameters: factors must be finite, positive and `low <= high`.
    pub fn validate(&self) -> Result<()> {
        if let Self::Elite { formula } = self {
            let (low, high) = formula.range();
            if !(low.is_finite() && high.is_finite() && low > 0.0 && low <= high) {
                return Err(QdError::InvalidConfig {
                    field: "sampler",
                    value: format!("{formula:?}"),
                    reason: "factors must be finite with 0 < low <= high",
                });
            }
        }
        Ok(())
    }

    /// Unnormalised selection weight of each elite of `archive`, in fill order.
    pub fn weights<G>(&self, archive: &GridArchive<G>) -> Vec<f64> {
        let elites = archive.elites();
        let mut w = vec![1.0; elites.len()];
        let Self::Elite { formula } = self else {
            return w;
        };
        let (low, high) = formula.range();
        let mut column = Vec::with_capacity(elites.len());
        for j in 0..=archive.dims().len() {
            column.clear();
            column.extend(elites.iter().map(|e| match (j, formula) {
                (0, _) => e.quality,
                (j, EliteFormula::Paper { .. }) => e.behaviour[j - 1],
                (j, EliteFormula::ReleasedCode { .. }) => {
                    bin_of(archive.edges(j - 1), e.behaviour[j - 1]) as f64
                }
            }));
            let (min, max) = column
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            if min == max {
                continue;
            }
            for (wi, &v) in w.iter_mut().zip(&column) {
                *wi *= low + (v - min) / (max - min) * (high - low);
            }
        }
        w
    }

    /// Draws `n` parents from `archive`; returns positions in [`GridArchive::elites`].
    /// Distinct when the archive holds at least `n` elites, with replacement otherwise.
    pub fn sample<G, R: Rng + ?Sized>(
        &self,
        archive: &GridArchive<G>,
        n: usize,
        rng: &mut R,
    ) -> Option<Vec<usize>> {
        if archive.is_empty() {
            return None;
        }
        let mut w = self.weights(archive);
        let distinct = archive.len() >= n;
        let mut picks = Vec::with_capacity(n);
        for _ in 0..n {
            let pick = draw(&w, rng);
            if distinct {
                w[pick] = 0.0;
            }
            picks.push(pick);
        }
        Some(picks)
    }
}

/// One index drawn with probability proportional to `w` (at least one weight positive).
fn draw<R: Rng + ?Sized>(w: &[f64], rng: &mut R) -> usize {
    let total: f64 = w.iter().sum();
    let r = rng.gen::<f64>() * total;
    let mut acc = 0.0;
    let mut last_positive = 0;
    for (i, &wi) in w.iter().enumerate() {
        if wi > 0.0 {
            acc += wi;
            last_positive = i;
            if r < acc {
                return i;
            }
        }
    }
    // Only reachable through rounding in the running sum.
    last_positive
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{BehaviourDim, Elite, EliteMeta};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn archive(points: &[(f64, f64)]) -> GridArchive<usize> {
        let mut a = GridArchive::new(vec![BehaviourDim::new("b", 0.0, 1.0, 10)]).unwrap();
        for (i, &(q, b)) in points.iter().enumerate() {
            a.insert(Elite {
                genome: i,
                quality: q,
                behaviour: vec![b],
                meta: EliteMeta::default(),
            })
            .unwrap();
        }
        a
    }

    #[test]
    fn paper_weights_are_products_of_factors_in_range() {
        // Qualities 0, 1, 0.5; behaviours 0.05 (bin 0), 0.95 (bin 9), 0.55 (bin 5).
        let a = archive(&[(0.0, 0.05), (1.0, 0.95), (0.5, 0.55)]);
        let w = ParentSampler::default().weights(&a);
        let close = |x: f64, y: f64| (x - y).abs() < 1e-12;
        assert!(
            close(w[0], 0.5 * 0.5),
            "worst on both: 0.5 * 0.5, got {}",
            w[0]
        );
        assert!(
            close(w[1], 0.8 * 0.8),
            "best on both: 0.8 * 0.8, got {}",
            w[1]
        );
        assert!(close(w[2], 0.65 * (0.5 + 0.5 / 0.9 * 0.3)), "got {}", w[2]);
    }

    #[test]
    fn released_code_weights_use_bins_and_reach_1_3() {
        let a = archive(&[(0.0, 0.05), (1.0, 0.95), (0.5, 0.55)]);
        let s = ParentSampler::Elite {
            formula: EliteFormula::released_code(),
        };
        let w = s.weights(&a);
        let close = |x: f64, y: f64| (x - y).abs() < 1e-12;
        assert!(close(w[0], 0.25));
        assert!(close(w[1], 1.3 * 1.3));
        // quality 0.5 -> 0.5 + 0.4; bin 5 of 0..9 -> 0.5 + 5/9 * 0.8.
        assert!(close(w[2], 0.9 * (0.5 + 5.0 / 9.0 * 0.8)));
    }

    #[test]
    fn equal_values_give_factor_one_and_uniform_is_flat() {
        let a = archive(&[(1.0, 0.05), (1.0, 0.95)]);
        let w = ParentSampler::default().weights(&a);
        assert_eq!(w[0], 0.5);
        assert_eq!(w[1], 0.8);
        assert_eq!(ParentSampler::Uniform.weights(&a), vec![1.0, 1.0]);
    }

    #[test]
    fn frequencies_follow_weights_and_parents_are_distinct() {
        let a = archive(&[(0.0, 0.05), (1.0, 0.95), (0.5, 0.55)]);
        let s = ParentSampler::default();
        let w = s.weights(&a);
        let total: f64 = w.iter().sum();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut first = [0usize; 3];
        let trials = 60_000;
        for _ in 0..trials {
            let p = s.sample(&a, 2, &mut rng).unwrap();
            assert_ne!(p[0], p[1]);
            first[p[0]] += 1;
        }
        for i in 0..3 {
            let expected = w[i] / total;
            let got = first[i] as f64 / trials as f64;
            assert!(
                (got - expected).abs() < 0.01,
                "elite {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn too_few_elites_draws_with_replacement_and_empty_gives_none() {
        let a = archive(&[(1.0, 0.5)]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            ParentSampler::Uniform.sample(&a, 2, &mut rng),
            Some(vec![0, 0])
        );
        let e = archive(&[]);
        assert_eq!(ParentSampler::Uniform.sample(&e, 2, &mut rng), None);
    }

    #[test]
    fn validate_rejects_nonpositive_factors() {
        let s = ParentSampler::Elite {
            formula: EliteFormula::Paper {
                alpha_low: 0.0,
                alpha_high: 0.8,
            },
        };
        assert!(s.validate().is_err());
        assert!(ParentSampler::default().validate().is_ok());
    }
}
