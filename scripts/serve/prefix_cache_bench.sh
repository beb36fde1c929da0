#!/usr/bin/env bash
# The prefix cache on and off: `swarm serve` on the default model, started once with
# `--prefix-cache-mb 0` and once with the default, each driven through the same growing
# conversation by prefix_cache_bench.py (time to first token per turn).
#
# Usage: scripts/serve/prefix_cache_bench.sh [turns (6)] [max_tokens (32)]
# Needs: cargo build --release --bin swarm; the `openai` Python package (a venv at
# .venv-serve is used when there is one).
set -euo pipefail
cd "$(dirname "$0")/../.."
TURNS=${1:-6}
MAX_TOKENS=${2:-32}
PORT=${PORT:-18282}
PYTHON=python3
[ -x .venv-serve/bin/python ] && PYTHON=.venv-serve/bin/python
SWARM=target/release/swarm
[ -x "$SWARM" ] || { echo "build it first: cargo build --release --bin swarm" >&2; exit 1; }
lscpu | grep "Model name" || true
git rev-parse --short HEAD
for MB in 0 256; do
  "$SWARM" --log warn serve --model smollm2 --port "$PORT" --prefix-cache-mb "$MB" &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
    sleep 0.5
  done
  echo
  echo "--prefix-cache-mb $MB ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1 /proc/loadavg))"
  echo
  "$PYTHON" scripts/serve/prefix_cache_bench.py "http://127.0.0.1:$PORT/v1" "$TURNS" "$MAX_TOKENS"
  kill "$SERVER"
  wait "$SERVER" 2>/dev/null || true
done
