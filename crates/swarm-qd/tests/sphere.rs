//! MAP-Elites on pyribs' sphere linear projection benchmark.
//!
//! The full check (5 seeds x 10,000 iterations x 540 evaluations of a 100-D function) takes about
//! a minute on two cores and is `#[ignore]`d; run it with
//! `cargo test --release -p swarm-qd --test sphere -- --ignored`, or run the example
//! (`cargo run --release -p swarm-qd --example sphere -- --seeds 5 --check`).
//! The always-on test runs the same benchmark for 200 iterations and compares with pyribs 0.12
//! at 200 iterations, measured with `scripts/qd/compare_pyribs.py --iterations 200 --seeds 5`.

use rayon::prelude::*;
use swarm_qd::{run_sphere, PYRIBS_PUBLISHED_COVERAGE, PYRIBS_PUBLISHED_QD_SCORE};

fn means(dim: usize, iterations: u64, seeds: u64) -> (f64, f64) {
    let runs: Vec<_> = (0..seeds)
        .into_par_iter()
        .map(|s| run_sphere(dim, iterations, s).expect("valid config"))
        .collect();
    let n = runs.len() as f64;
    (
        runs.iter().map(|r| r.qd_score).sum::<f64>() / n,
        runs.iter().map(|r| r.coverage).sum::<f64>() / n,
    )
}

#[test]
fn matches_pyribs_after_200_iterations() {
    // pyribs 0.12.0, seeds 0-4, 200 iterations: QD-score 177,839 +- 2,279, coverage 20.86% +- 0.25.
    let (qd, coverage) = means(100, 200, 4);
    assert!(
        (qd / 177_839.0 - 1.0).abs() < 0.025,
        "QD-score after 200 iterations: {qd:.0}, pyribs 177,839"
    );
    assert!(
        (coverage / 0.2086 - 1.0).abs() < 0.03,
        "coverage after 200 iterations: {coverage:.4}, pyribs 0.2086"
    );
}

#[test]
#[ignore = "about a minute in release mode; run with --ignored"]
fn matches_pyribs_published_result() {
    let (qd, coverage) = means(100, 10_000, 5);
    assert!(
        (qd / PYRIBS_PUBLISHED_QD_SCORE - 1.0).abs() <= 0.02,
        "mean QD-score {qd:.0}, published {PYRIBS_PUBLISHED_QD_SCORE}"
    );
    assert!(
        (coverage / PYRIBS_PUBLISHED_COVERAGE - 1.0).abs() <= 0.02,
        "mean coverage {coverage:.4}, published {PYRIBS_PUBLISHED_COVERAGE}"
    );
}
