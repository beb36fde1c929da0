#!/usr/bin/env bash
# Can the toy world's experts be merged? Builds the pairwise 0.5/0.5 and the 1/3 task-arithmetic
# merges of the experts with `swarm merge` and scores the base, the experts and the merges on
# each skill's synthetic validation split (64 episodes, mean episode score) with `swarm eval`.
#
#   scripts/toy/merge-check.sh [WORLD]     # default: the cache's toy world (~/.cache/swarm/toy-2)
#
# Merges and per-episode JSONL go to WORLD/merge-check/.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${SWARM_CACHE_DIR:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/swarm}}"
# toy-<edition>: swarm_model::TOY_WORLD_EDITION.
world="${1:-${cache:-$HOME/.cache/swarm}/toy-2}"
for m in base coding database os; do
  [ -d "$world/$m" ] || { echo "no model dir $world/$m (build the world: swarm bootstrap)" >&2; exit 1; }
done
cargo build --release --bin swarm >&2
swarm=./target/release/swarm
out="$world/merge-check"
mkdir -p "$out"

merge() { # name, then (expert weight) pairs
  local name=$1; shift
  {
    echo "merge_method: task_arithmetic"
    echo "base_model: $world/base"
    echo "models:"
    while [ $# -gt 0 ]; do
      printf '  - model: %s\n    parameters:\n      weight: %s\n' "$world/$1" "$2"
      shift 2
    done
    echo "dtype: float32"
  } > "$out/$name.yaml"
  "$swarm" merge "$out/$name.yaml" --out "$out/$name" --force --log warn >&2
}

score() { # model dir
  local row="| $(basename "$1") |"
  for skill in coding database os; do
    local s
    s=$("$swarm" eval --model "$1" --skill "$skill" --split validation --limit 64 \
        --max-tokens 64 --batch-size 32 --log warn \
        --out "$out/$(basename "$1")-$skill.jsonl" 2>&1 | grep -o 'mean score [0-9.]*' | cut -d' ' -f3)
    row="$row ${s:-?} |"
  done
  echo "$row"
}

merge coding+database coding 0.5 database 0.5
merge coding+os coding 0.5 os 0.5
merge database+os database 0.5 os 0.5
merge all-three coding 0.333 database 0.333 os 0.334
echo "| model | coding | database | os |"
echo "|---|---:|---:|---:|"
for m in "$world/base" "$world/coding" "$world/database" "$world/os" \
         "$out/coding+database" "$out/coding+os" "$out/database+os" "$out/all-three"; do
  score "$m"
done
