#!/usr/bin/env bash
# Load benchmark of `swarm serve` with wrk (Debian's `wrk`), on 127.0.0.1 only.
#
# Prints a markdown table: throughput and latency percentiles at concurrency 1, 8 and 32,
# for requests on 1 elite and spread over 100 elites (copies of the model, each materialised
# and batched separately, within a memory budget), with the server's resident memory.
#
# Usage: scripts/serve/bench.sh [seconds per run (20)] [max_tokens (32)]
# Needs: cargo build --release -p swarm-serve --example serve; apt-get install wrk.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-20}
MAX_TOKENS=${2:-32}
BIN=target/release/examples/serve
PORT=${PORT:-18181}
BUDGET_MB=${BUDGET_MB:-2300}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build --release -p swarm-serve --example serve" >&2; exit 1; }
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# wrk script: POST a chat request; with ELITES > 1, request i goes to elite i mod ELITES.
cat > "$WORK/post.lua" <<LUA
local elites = tonumber(os.getenv("ELITES") or "1")
local base = os.getenv("BASE_ELITE")
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local model = base
  if elites > 1 then
    local k = (counter * 7919 + math.random(0, 1000003)) % elites
    if k > 0 then model = base .. "~" .. k end
  end
  local body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Write a short story about a robot number ' .. counter .. '."}],"max_tokens":$MAX_TOKENS,"temperature":0.8,"seed":' .. counter .. '}'
  return wrk.format(nil, "/v1/chat/completions", nil, body)
end
LUA

metric() { curl -sf "127.0.0.1:$PORT/metrics" | awk -v n="$1" '$1 ~ "^"n {s += $2} END {print s + 0}'; }

run_server() {  # $1 = copies
  "$BIN" --port "$PORT" --copies "$1" --max-batch 32 --queue-capacity 1024 \
    --memory-budget-mb "$BUDGET_MB" > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 120); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null && return 0; sleep 0.5; done
  echo "server did not get ready" >&2; tail "$WORK/server.log" >&2; exit 1
}

echo "| elites | concurrency | req/s | completion tok/s | p50 s | p90 s | p99 s | errors | peak RSS MiB | elites resident |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for ELITES in ${MODES:-1 100}; do
  run_server "$ELITES"
  BASE_ELITE=$(curl -sf "127.0.0.1:$PORT/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][1]["id"])')
  export ELITES BASE_ELITE
  for C in 1 8 32; do
    T=$(( C < 2 ? 1 : 2 ))
    before=$(metric swarm_completion_tokens_total)
    wrk -t "$T" -c "$C" -d "${DURATION}s" --timeout 120s --latency -s "$WORK/post.lua" \
      "http://127.0.0.1:$PORT" > "$WORK/wrk.txt" 2>&1 || true
    after=$(metric swarm_completion_tokens_total)
    python3 - "$WORK/wrk.txt" "$ELITES" "$C" "$DURATION" "$before" "$after" "$SERVER_PID" \
      "$(metric swarm_elites_resident)" <<'PY'
import re, sys
path, elites, c, duration, before, after, pid, resident = sys.argv[1:]
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
print(f"| {elites} | {c} | {float(rps.group(1)) if rps else float('nan'):.2f} | {tok_s:.1f} | "
      f"{pct.get('50', float('nan')):.2f} | {pct.get('90', float('nan')):.2f} | {pct.get('99', float('nan')):.2f} | "
      f"{err_txt} | {hwm} | {int(float(resident))} |")
PY
  done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
done
