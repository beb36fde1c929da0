#!/usr/bin/env bash
# Load benchmark of `swarm serve` with wrk (Debian's `wrk`), on 127.0.0.1 only.
#
# Prints a markdown table: throughput and latency percentiles at concurrency 1, 8 and 32,
# for requests on 1 elite and spread over 100 elites, with the server's resident memory,
# the elites resident at the end of the row and the materialisations during it. (A server
# materialises the router's default elite before it is ready: with a swarm, the elite the
# router picks for an empty request, resident from the start, not counted as materialised,
# and not necessarily among the first N the requests go to.)
#
# Usage: scripts/serve/bench.sh [seconds per run (20)] [max_tokens (32)]
# Needs: cargo build --release -p swarm-serve --example serve; apt-get install wrk.
#
# Two sources of elites:
# - copies (the default): the model served as N elites that are dense copies of it
#   (`--copies N`, ids `<model>`, `<model>~1`, ...), each materialised from the GGUF on
#   demand and batched separately;
# - a swarm: SWARM_DIR=DIR serves a swarm directory (`--swarm DIR`): the elites are genomes
#   over the base and the experts' factors, served from factors or materialised as
#   --elite-serving says. A SmolLM2-135M swarm of 100 elites for this:
#     cargo build --release -p swarm-serve --example make_bench_swarm
#     target/release/examples/make_bench_swarm /tmp/bench-swarm 100 64
#
# Each row sends every request to one of the first N elites that GET /v1/models lists
# (pseudo-randomly, uniform), with a different seed per request (temperature 0.8). Settings
# (environment):
#   MODES         rows of the table, space-separated (default "1 100"); each is
#                 `N[,POLICY[,BUDGET_MB]]`: N elites (copies: served as N copies; a swarm:
#                 its first N elites, so it must have at least N), with an elite-serving
#                 policy and a memory budget other than the defaults below. One server is
#                 started per mode and serves its three concurrencies in turn (what it
#                 learnt of the elites carries over from one to the next).
#   CONCURRENCY   default "1 8 32".
#   ELITE_SERVING swarm only: `--elite-serving` (default `auto`: from factors until an elite
#                 is hot; also `factors`, `materialise`, `auto:N[:R]`). Copies are always
#                 materialised (they have no factors), whatever this says.
#   BUDGET_MB     `--memory-budget-mb` for resident dense elites (default 2300: 4 dense f32
#                 SmolLM2-135M elites of 538 MB; a swarm's base and factors, loaded once,
#                 are outside the budget).
#   LRU_BUDGET_MB the budget of the mode `lru` (default 1100: 2 dense elites).
#   PRECISION     `--precision` of the server (default: its own, f32 on the CPU; `q8_0`
#                 for 8-bit weights).
#   PORT          default 18181.
# The LRU turns over when the elites that are materialised need more than the budget:
#   MODES=lru     shorthand for `100,materialise,$LRU_BUDGET_MB`: 100 elites, each
#                 materialised when asked for, 2 resident at most (the `materialised` column
#                 counts the turnover);
#   e.g. MODES="8,materialise 8,auto" compares 8 hot elites of which 4 fit in the default
#   budget, materialised on demand or as `auto` decides.
#
# Examples:
#   scripts/serve/bench.sh 30 16                                  # copies, 1 and 100 elites
#   SWARM_DIR=/tmp/bench-swarm scripts/serve/bench.sh 30 16       # the swarm, `auto`
#   SWARM_DIR=/tmp/bench-swarm MODES="100,factors lru" scripts/serve/bench.sh 30 16
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-20}
MAX_TOKENS=${2:-32}
BIN=target/release/examples/serve
PORT=${PORT:-18181}
BUDGET_MB=${BUDGET_MB:-2300}
LRU_BUDGET_MB=${LRU_BUDGET_MB:-1100}
ELITE_SERVING=${ELITE_SERVING:-auto}
SWARM_DIR=${SWARM_DIR:-}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build --release -p swarm-serve --example serve" >&2; exit 1; }
if [ -n "$SWARM_DIR" ] && [ ! -f "$SWARM_DIR/swarm.json" ]; then
  echo "$SWARM_DIR holds no swarm.json: make one with the make_bench_swarm example" >&2; exit 1
fi
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# wrk script: POST a chat request to one of the elites listed in $ELITE_IDS (one id a line),
# chosen pseudo-randomly per request.
cat > "$WORK/post.lua" <<LUA
local ids = {}
for line in io.lines(os.getenv("ELITE_IDS")) do
  if line ~= "" then ids[#ids + 1] = line end
end
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local k = (counter * 7919 + math.random(0, 1000003)) % #ids
  local body = '{"model":"' .. ids[k + 1] .. '","messages":[{"role":"user","content":"Write a short story about a robot number ' .. counter .. '."}],"max_tokens":$MAX_TOKENS,"temperature":0.8,"seed":' .. counter .. '}'
  return wrk.format(nil, "/v1/chat/completions", nil, body)
end
LUA

metric() { curl -sf "127.0.0.1:$PORT/metrics" | awk -v n="$1" '$1 ~ "^"n {s += $2} END {print s + 0}'; }

run_server() {  # $1 = elites (copies), $2 = policy, $3 = budget MiB
  local source=(--copies "$1")
  [ -n "$SWARM_DIR" ] && source=(--swarm "$SWARM_DIR" --elite-serving "$2")
  [ -n "${PRECISION:-}" ] && source+=(--precision "$PRECISION")
  "$BIN" --port "$PORT" "${source[@]}" --max-batch 32 --queue-capacity 1024 \
    --memory-budget-mb "$3" > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 240); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null && return 0; sleep 0.5; done
  echo "server did not get ready" >&2; tail "$WORK/server.log" >&2; exit 1
}

if [ -n "$SWARM_DIR" ]; then
  echo "swarm $SWARM_DIR; precision ${PRECISION:-default}; $DURATION s per row, max_tokens $MAX_TOKENS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
else
  echo "copies of the default model; precision ${PRECISION:-default}; $DURATION s per row, max_tokens $MAX_TOKENS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
fi
echo
echo "| elites | serving | budget MiB | concurrency | req/s | completion tok/s | p50 s | p90 s | p99 s | errors | peak RSS MiB | elites resident | materialised |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for MODE in ${MODES:-1 100}; do
  [ "$MODE" = lru ] && MODE="100,materialise,$LRU_BUDGET_MB"
  IFS=, read -r ELITES POLICY BUDGET <<< "$MODE"
  POLICY=${POLICY:-$ELITE_SERVING}
  BUDGET=${BUDGET:-$BUDGET_MB}
  [[ "$ELITES" =~ ^[1-9][0-9]*$ && "$BUDGET" =~ ^[0-9]+$ ]] || {
    echo "mode '$MODE': expected N[,POLICY[,BUDGET_MB]] with N >= 1" >&2; exit 1; }
  [ -z "$SWARM_DIR" ] && POLICY=copies
  run_server "$ELITES" "$POLICY" "$BUDGET"
  # The elites, in the order /v1/models lists them (copies: `<model>`, `<model>~1`, ...).
  curl -sf "127.0.0.1:$PORT/v1/models" | python3 -c '
import json, sys
n = int(sys.argv[1])
ids = [m["id"] for m in json.load(sys.stdin)["data"] if (m.get("swarm") or {}).get("kind") == "elite"]
if len(ids) < n:
    sys.exit(f"the server lists {len(ids)} elites, the mode asks for {n}")
print("\n".join(ids[:n]))' "$ELITES" > "$WORK/ids.txt"
  export ELITE_IDS="$WORK/ids.txt"
  for C in ${CONCURRENCY:-1 8 32}; do
    T=$(( C < 2 ? 1 : 2 ))
    before=$(metric swarm_completion_tokens_total)
    loads_before=$(metric swarm_elite_materialisations_total)
    wrk -t "$T" -c "$C" -d "${DURATION}s" --timeout 120s --latency -s "$WORK/post.lua" \
      "http://127.0.0.1:$PORT" > "$WORK/wrk.txt" 2>&1 || true
    after=$(metric swarm_completion_tokens_total)
    loads=$(( $(metric swarm_elite_materialisations_total) - loads_before ))
    python3 - "$WORK/wrk.txt" "$ELITES" "$POLICY" "$BUDGET" "$C" "$DURATION" "$before" "$after" \
      "$SERVER_PID" "$(metric swarm_elites_resident)" "$loads" <<'PY'
import re, sys
path, elites, policy, budget, c, duration, before, after, pid, resident, loads = sys.argv[1:]
text = open(path).read()
def secs(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)", v)
    if not m:
        return float("nan")
    x, unit = float(m.group(1)), m.group(2)
    return x * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]
pct = {p: secs(v) for p, v in re.findall(r"^\s+(50|90|99)(?:\.0+)?%\s+(\S+)", text, re.M)}
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
hwm = 0
for line in open(f"/proc/{pid}/status"):
    if line.startswith("VmHWM"):
        hwm = int(line.split()[1]) // 1024
tok_s = (float(after) - float(before)) / float(duration)
err = (int(non2xx.group(1)) if non2xx else 0)
err_txt = str(err) + (f" ({errors.group(1)})" if errors else "")
print(f"| {elites} | {policy} | {budget} | {c} | {float(rps.group(1)) if rps else float('nan'):.2f} | {tok_s:.1f} | "
      f"{pct.get('50', float('nan')):.2f} | {pct.get('90', float('nan')):.2f} | {pct.get('99', float('nan')):.2f} | "
      f"{err_txt} | {hwm} | {int(float(resident))} | {loads} |")
PY
  done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
done
