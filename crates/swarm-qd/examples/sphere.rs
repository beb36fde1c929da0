//! MAP-Elites on pyribs' sphere linear projection benchmark, over several seeds, compared with
//! pyribs' published result (QD-score 416,112 +- 2,681, coverage 50.72% +- 0.40, 20 trials).
//!
//! ```text
//! cargo run --release -p swarm-qd --example sphere -- --seeds 5
//! cargo run --release -p swarm-qd --example sphere -- --seeds 5 --iterations 1000 --json
//! ```
//!
//! Flags: `--seeds N` (5), `--first-seed S` (0), `--iterations I` (10000), `--dim D` (100),
//! `--threads T` (seeds run in parallel on T threads; default all cores), `--json` (one JSON
//! object on stdout instead of the table), `--check` (exit 1 unless the mean QD-score and
//! coverage are within 2% of the published ones; only meaningful at the full size).

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use swarm_qd::{run_sphere, SphereResult, PYRIBS_PUBLISHED_COVERAGE, PYRIBS_PUBLISHED_QD_SCORE};

struct Args {
    seeds: u64,
    first_seed: u64,
    iterations: u64,
    dim: usize,
    threads: usize,
    json: bool,
    check: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        seeds: 5,
        first_seed: 0,
        iterations: 10_000,
        dim: 100,
        threads: 0,
        json: false,
        check: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => a.seeds = value()?.parse().context("--seeds")?,
            "--first-seed" => a.first_seed = value()?.parse().context("--first-seed")?,
            "--iterations" => a.iterations = value()?.parse().context("--iterations")?,
            "--dim" => a.dim = value()?.parse().context("--dim")?,
            "--threads" => a.threads = value()?.parse().context("--threads")?,
            "--json" => a.json = true,
            "--check" => a.check = true,
            "-h" | "--help" => {
                println!("usage: sphere [--seeds N] [--first-seed S] [--iterations I] [--dim D] [--threads T] [--json] [--check]");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other:?} (try --help)"),
        }
    }
    if a.seeds == 0 || a.dim < 2 {
        bail!("need --seeds >= 1 and --dim >= 2");
    }
    Ok(a)
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let start = std::time::Instant::now();
    let results: Vec<SphereResult> = pool.install(|| {
        (args.first_seed..args.first_seed + args.seeds)
            .into_par_iter()
            .map(|seed| run_sphere(args.dim, args.iterations, seed))
            .collect::<Result<_, _>>()
    })?;
    let total_wall = start.elapsed().as_secs_f64();

    let qd: Vec<f64> = results.iter().map(|r| r.qd_score).collect();
    let cov: Vec<f64> = results.iter().map(|r| r.coverage).collect();
    let (qd_mean, qd_std) = mean_std(&qd);
    let (cov_mean, cov_std) = mean_std(&cov);
    let per_iter: f64 = results.iter().map(|r| r.wall_seconds).sum::<f64>()
        / (args.seeds * args.iterations.max(1)) as f64;
    let qd_ok = (qd_mean / PYRIBS_PUBLISHED_QD_SCORE - 1.0).abs() <= 0.02;
    let cov_ok = (cov_mean / PYRIBS_PUBLISHED_COVERAGE - 1.0).abs() <= 0.02;

    if args.json {
        let out = serde_json::json!({
            "implementation": "swarm-qd",
            "dim": args.dim,
            "iterations": args.iterations,
            "seeds": results.iter().map(|r| r.seed).collect::<Vec<_>>(),
            "qd_scores": qd,
            "coverages": cov,
            "qd_score_mean": qd_mean,
            "qd_score_std": qd_std,
            "coverage_mean": cov_mean,
            "coverage_std": cov_std,
            "seconds_per_seed": results.iter().map(|r| r.wall_seconds).collect::<Vec<_>>(),
            "seconds_per_iteration": per_iter,
            "total_wall_seconds": total_wall,
            "threads": pool.current_num_threads(),
        });
        println!("{out}");
    } else {
        println!(
            "MAP-Elites, sphere linear projection, dim {}, {} iterations x 540, grid 100x100, sigma 0.5",
            args.dim, args.iterations
        );
        println!(
            "{:>6} {:>14} {:>10} {:>10} {:>10}",
            "seed", "QD-score", "coverage", "best", "seconds"
        );
        for r in &results {
            println!(
                "{:>6} {:>14.1} {:>9.2}% {:>10.3} {:>10.2}",
                r.seed,
                r.qd_score,
                100.0 * r.coverage,
                r.best.unwrap_or(f64::NAN),
                r.wall_seconds
            );
        }
        println!(
            "mean over {} seeds: QD-score {:.0} +- {:.0}, coverage {:.2}% +- {:.2}",
            args.seeds,
            qd_mean,
            qd_std,
            100.0 * cov_mean,
            100.0 * cov_std
        );
        println!(
            "pyribs published (20 trials, 10,000 iterations): QD-score 416112 +- 2681, coverage 50.72% +- 0.40"
        );
        println!(
            "within 2% of the published means: QD-score {}, coverage {}",
            if qd_ok { "yes" } else { "NO" },
            if cov_ok { "yes" } else { "NO" }
        );
        println!(
            "time: {:.3} ms per iteration per seed (single thread), {:.1} s wall on {} threads",
            1e3 * per_iter,
            total_wall,
            pool.current_num_threads()
        );
    }
    if args.check && !(qd_ok && cov_ok) {
        bail!("mean QD-score {qd_mean:.0} / coverage {cov_mean:.4} outside 2% of pyribs' published 416112 / 0.5072");
    }
    Ok(())
}
