#!/usr/bin/env python3
"""MAP-Elites on the sphere linear projection benchmark: pyribs and swarm-qd side by side.

Same configuration for both (pyribs' `examples/sphere.py`, algorithm `map_elites`):
100-D solutions, GridArchive 100x100 over [-256, 256]^2, GaussianEmitter with sigma 0.5 and
x0 = 0, 540 solutions per iteration, objective normalised to [0, 100], QD-score offset 0.

Setup (once):
    python3 -m venv .venv-qd && .venv-qd/bin/pip install ribs
Run (from the repository root):
    .venv-qd/bin/python scripts/qd/compare_pyribs.py --iterations 10000 --seeds 5

Both sides run their seeds one after another on one thread, so the wall times compare the
implementations, not the parallelism. Prints both results, both wall times, and one JSON line
(prefixed `RESULT `) for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# One thread for numpy too (and be frugal on shared machines).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOX = 5.12
SHIFT = 0.4 * BOX


def sphere(solutions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Objective in [0, 100] (100 at the optimum) and the two folded-sum measures."""
    dim = solutions.shape[1]
    worst = (-BOX - SHIFT) ** 2 * dim
    raw = np.sum(np.square(solutions - SHIFT), axis=1)
    objectives = (raw - worst) / (0.0 - worst) * 100.0
    folded = solutions.copy()
    outside = (folded < -BOX) | (folded > BOX)
    folded[outside] = BOX / folded[outside]
    half = dim // 2
    measures = np.stack(
        (folded[:, :half].sum(axis=1), folded[:, half:].sum(axis=1)), axis=1
    )
    return objectives, measures


def run_pyribs(dim: int, iterations: int, seed: int) -> dict:
    from ribs.archives import GridArchive
    from ribs.emitters import GaussianEmitter
    from ribs.schedulers import Scheduler

    start = time.perf_counter()
    bound = dim / 2 * BOX
    archive = GridArchive(
        solution_dim=dim, dims=(100, 100), ranges=[(-bound, bound)] * 2, seed=seed
    )
    emitter = GaussianEmitter(
        archive, sigma=0.5, x0=np.zeros(dim), batch_size=540, seed=seed
    )
    scheduler = Scheduler(archive, [emitter])
    for _ in range(iterations):
        solutions = scheduler.ask()
        objectives, measures = sphere(solutions)
        scheduler.tell(objectives, measures)
    wall = time.perf_counter() - start
    stats = archive.stats
    return {
        "seed": seed,
        "qd_score": float(stats.qd_score),
        "coverage": float(stats.coverage),
        "seconds": wall,
    }


def summarise(name: str, qd: list[float], cov: list[float], seconds: list[float], iterations: int) -> dict:
    sd = statistics.stdev if len(qd) > 1 else (lambda _: 0.0)
    return {
        "implementation": name,
        "seeds": len(qd),
        "iterations": iterations,
        "qd_score_mean": statistics.fmean(qd),
        "qd_score_std": sd(qd),
        "coverage_mean": statistics.fmean(cov),
        "coverage_std": sd(cov),
        "qd_scores": qd,
        "coverages": cov,
        "total_seconds": sum(seconds),
        "ms_per_iteration": 1e3 * sum(seconds) / (len(seconds) * iterations),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--skip-pyribs", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--ours-exe", help="an already built `sphere` example binary (skips cargo build)")
    args = p.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results = []

    if not args.skip_ours:
        exe = args.ours_exe
        if exe is None:
            # Build first so that compiling is not timed.
            target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
            subprocess.run(
                ["cargo", "build", "--release", "-p", "swarm-qd", "--example", "sphere"],
                cwd=REPO, check=True,
            )
            exe = os.path.join(target, "release", "examples", "sphere")
        out = subprocess.run(
            [exe, "--json", "--threads", "1", "--seeds", str(args.seeds),
             "--first-seed", str(args.first_seed), "--iterations", str(args.iterations),
             "--dim", str(args.dim)],
            cwd=REPO, check=True, capture_output=True, text=True,
        )
        ours = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(summarise(
            "swarm-qd", ours["qd_scores"], ours["coverages"], ours["seconds_per_seed"], args.iterations))

    if not args.skip_pyribs:
        import ribs

        runs = []
        for seed in seeds:
            r = run_pyribs(args.dim, args.iterations, seed)
            print(f"pyribs seed {seed}: QD-score {r['qd_score']:.1f}, coverage {100 * r['coverage']:.2f}%, "
                  f"{r['seconds']:.1f} s", file=sys.stderr, flush=True)
            runs.append(r)
        results.append(summarise(
            f"pyribs {ribs.__version__}", [r["qd_score"] for r in runs],
            [r["coverage"] for r in runs], [r["seconds"] for r in runs], args.iterations))

    print(f"MAP-Elites, sphere {args.dim}-D, {args.iterations} iterations x 540, seeds {seeds}, one thread")
    print(f"{'implementation':<16} {'QD-score':>22} {'coverage':>18} {'wall s':>9} {'ms/iter':>9}")
    for r in results:
        print(f"{r['implementation']:<16} {r['qd_score_mean']:>12.0f} +- {r['qd_score_std']:>6.0f} "
              f"{100 * r['coverage_mean']:>9.2f}% +- {100 * r['coverage_std']:.2f} "
              f"{r['total_seconds']:>9.1f} {r['ms_per_iteration']:>9.3f}")
    if len(results) == 2:
        print(f"speed-up per iteration: {results[1]['ms_per_iteration'] / results[0]['ms_per_iteration']:.1f}x")
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
