#!/usr/bin/env bash
# The toy study (issue #7): CycleQD on the toy world and the paper's ablations (crossover only;
# + SVD mutation; + elite sampling = configs/toy.toml; fixed quality without cycling), one
# after another, then docs/results/toy-cycleqd.md with the command, seed, wall time, the test
# table, the ablation table and the time per generation of each stage.
#
#   scripts/toy/toy-study.sh                      # all four configs (hours on 2 cores)
#   scripts/toy/toy-study.sh configs/toy.toml     # a subset
#
# The toy world (~/.cache/swarm/toy-2, or $SWARM_CACHE_DIR/toy-2) is built first if it is missing.
# Interrupted? Run it again: every run resumes from its last checkpoint in runs/<name>.
# Each run's per-generation stage times are printed as it goes, and kept in
# runs/<name>/evolve.log; the whole output also goes to target/toy-study.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p target
echo "start: $(date -u +%FT%TZ), $(uptime)" | tee target/toy-study.log
cargo build --release -p swarm-evolve --example toy_study
./target/release/examples/toy_study "$@" 2>&1 | tee -a target/toy-study.log
echo "end: $(date -u +%FT%TZ), $(uptime)" | tee -a target/toy-study.log
