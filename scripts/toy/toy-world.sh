#!/usr/bin/env bash
# Builds the toy world (full preset) for three seeds, writes docs/results/toy-world.md, then
# loads the first seed's models in HF transformers (.venv-ref) and appends the comparison.
#
#   scripts/toy/toy-world.sh            # SEEDS=0,1,2 OUT=target/toy-world
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/toy-world}
SEEDS=${SEEDS:-0,1,2}
REPORT=${REPORT:-docs/results/toy-world.md}
PY=${PY:-.venv-ref/bin/python}
mkdir -p "$(dirname "$REPORT")"
cargo build --release -p swarm
if ./target/release/swarm bootstrap --help >/dev/null 2>&1; then
  ./target/release/swarm bootstrap --preset full --seeds "$SEEDS" --out "$OUT" --report "$REPORT"
else
  # Before `bootstrap` is wired into the binary: the same library call from an example.
  TOY_SEEDS="$SEEDS" TOY_OUT="$OUT" TOY_REPORT="$REPORT" \
    cargo run --release -p swarm-train --example toy
fi
FIRST=${SEEDS%%,*}
WORLD="$OUT"
[ "$SEEDS" = "$FIRST" ] || WORLD="$OUT/seed-$FIRST"
{
  echo "## Loading in HF transformers"
  echo
  echo "\`$PY scripts/toy/check_transformers.py $WORLD\`: the logits of a chat prompt at every"
  echo "position, swarm-model's inference forward (written by bootstrap) vs transformers'"
  echo "\`AutoModelForCausalLM\` on the saved dirs, and transformers' tokenizer on the same text."
  echo
  if [ -x "$PY" ]; then
    "$PY" scripts/toy/check_transformers.py "$WORLD" 2>/dev/null || true
  else
    echo "(not run: $PY not found)"
  fi
} >> "$REPORT"
echo "done: $REPORT"
