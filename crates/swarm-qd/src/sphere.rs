//! pyribs' "sphere linear projection" benchmark (Fontaine et al. 2020, Sec. 4), set up as
//! pyribs' `examples/sphere.py` runs `map_elites`.

use crate::archive::BehaviourDim;
use crate::map_elites::MapElitesConfig;

/// Half-width of the box each coordinate's contribution to a measure is folded into.
const BOX: f64 = 5.12;
/// The optimum sits at `x_i = 0.4 * 5.12` for every `i`.
const SHIFT: f64 = 0.4 * BOX;

/// The sphere linear projection benchmark for one solution: writes the two measures and returns
/// the objective.
///
/// - Objective: the shifted sphere `sum (x_i - 2.048)^2`, normalised so that 0 maps to 100 and
///   `dim * (-5.12 - 2.048)^2` (the worst value inside the box) maps to 0; it is negative far
///   outside the box.
/// - Measures: each `x_i` is clipped the way pyribs does it, `x_i` inside `[-5.12, 5.12]` and
///   `5.12 / x_i` outside; the first measure sums the first `dim / 2` clipped values, the second
///   the rest. Both lie in `[-dim/2 * 5.12, dim/2 * 5.12]`.
///
/// # Panics
/// If `measures.len() != 2` (a caller bug).
pub fn sphere(x: &[f64], measures: &mut [f64]) -> f64 {
    assert_eq!(measures.len(), 2, "the sphere benchmark has two measures");
    let dim = x.len();
    let worst = (-BOX - SHIFT) * (-BOX - SHIFT) * dim as f64;
    let raw: f64 = x.iter().map(|&v| (v - SHIFT) * (v - SHIFT)).sum();
    let clip = |v: f64| {
        if (-BOX..=BOX).contains(&v) {
            v
        } else {
            BOX / v
        }
    };
    let half = dim / 2;
    measures[0] = x[..half].iter().map(|&v| clip(v)).sum();
    measures[1] = x[half..].iter().map(|&v| clip(v)).sum();
    (raw - worst) / (0.0 - worst) * 100.0
}

/// pyribs' MAP-Elites configuration for the sphere benchmark in `dim` dimensions: a 100x100
/// grid over `[-dim/2 * 5.12, dim/2 * 5.12]^2` (`[-256, 256]^2` for `dim = 100`), Gaussian
/// mutation with `sigma = 0.5`, `x0 = 0`, 540 solutions per iteration, QD-score offset 0.
pub fn sphere_config(dim: usize, seed: u64) -> MapElitesConfig {
    let bound = dim as f64 / 2.0 * BOX;
    MapElitesConfig {
        dims: vec![
            BehaviourDim::new("measure_0", -bound, bound, 100),
            BehaviourDim::new("measure_1", -bound, bound, 100),
        ],
        solution_dim: dim,
        sigma: 0.5,
        x0: vec![0.0; dim],
        batch_size: 540,
        qd_score_offset: 0.0,
        metrics_every: 1,
        seed,
    }
}

/// pyribs' published result for MAP-Elites on the 100-D sphere benchmark (grid 100x100,
/// sigma 0.5, 540 solutions per iteration, 10,000 iterations), mean over 20 trials:
/// QD-score 416,112 +- 2,681.
pub const PYRIBS_PUBLISHED_QD_SCORE: f64 = 416_112.0;
/// pyribs' published coverage for the same runs: 50.72% +- 0.40.
pub const PYRIBS_PUBLISHED_COVERAGE: f64 = 0.5072;

/// The outcome of one [`run_sphere`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SphereResult {
    /// Seed of the run.
    pub seed: u64,
    /// Dimension of the solutions.
    pub dim: usize,
    /// Iterations run.
    pub iterations: u64,
    /// Final QD-score (offset 0, objectives in [0, 100] near the optimum).
    pub qd_score: f64,
    /// Final coverage, in [0, 1].
    pub coverage: f64,
    /// Final best objective (`None` if nothing was evaluated).
    pub best: Option<f64>,
    /// Wall time of the run, in seconds.
    pub wall_seconds: f64,
}

/// Runs MAP-Elites on the sphere benchmark with [`sphere_config`] for `iterations` iterations.
pub fn run_sphere(dim: usize, iterations: u64, seed: u64) -> crate::Result<SphereResult> {
    let start = std::time::Instant::now();
    let mut config = sphere_config(dim, seed);
    config.metrics_every = iterations.max(1);
    let mut me = crate::MapElites::new(config)?;
    for _ in 0..iterations {
        me.step(sphere)?;
    }
    let m = me.archive().metrics(0.0);
    Ok(SphereResult {
        seed,
        dim,
        iterations,
        qd_score: m.qd_score,
        coverage: m.coverage,
        best: m.best_quality,
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objective_is_100_at_the_optimum_and_0_at_the_far_corner() {
        let mut m = [0.0; 2];
        assert!((sphere(&[SHIFT; 100], &mut m) - 100.0).abs() < 1e-9);
        assert!((m[0] - 50.0 * SHIFT).abs() < 1e-9);
        assert!(sphere(&[-BOX; 100], &mut m).abs() < 1e-9);
        assert!((m[0] + 256.0).abs() < 1e-9 && (m[1] + 256.0).abs() < 1e-9);
    }

    #[test]
    fn values_outside_the_box_fold_back() {
        // Values pyribs' sphere() gives for these points (checked with numpy).
        let mut m = [0.0; 2];
        let x = [10.24, 1.0, -20.48, 2.0];
        let obj = sphere(&x, &mut m);
        assert!((m[0] - (0.5 + 1.0)).abs() < 1e-12, "{m:?}");
        assert!((m[1] - (-0.25 + 2.0)).abs() < 1e-12, "{m:?}");
        let worst = 4.0 * (-BOX - SHIFT).powi(2);
        let raw: f64 = x.iter().map(|v| (v - SHIFT).powi(2)).sum();
        assert!((obj - (1.0 - raw / worst) * 100.0).abs() < 1e-9);
        assert!(obj < 0.0, "far outside the box the objective is negative");
    }
}
