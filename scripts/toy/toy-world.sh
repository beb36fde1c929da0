#!/usr/bin/env bash
# Builds the toy world for three seeds, writes docs/results/toy-world.md, then checks the
# seed-0 models in HF transformers (with .venv-ref, if present) and appends the result.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/toy-world}
SEEDS=${SEEDS:-0,1,2}
REPORT=${REPORT:-docs/results/toy-world.md}
cargo build --release -p swarm
./target/release/swarm bootstrap --preset full --seeds "$SEEDS" --out "$OUT" --report "$REPORT"
FIRST=${SEEDS%%,*}
PY=${PY:-.venv-ref/bin/python}
{
  echo "## Loading in HF transformers"
  echo
  echo "\`$PY scripts/toy/check_transformers.py $OUT/seed-$FIRST\` (logits of a chat prompt, every position, swarm-model vs transformers):"
  echo
  if [ -x "$PY" ]; then
    "$PY" scripts/toy/check_transformers.py "$OUT/seed-$FIRST" 2>/dev/null || true
  else
    echo "(not run: $PY not found)"
  fi
} >> "$REPORT"
echo "done: $REPORT"
