#!/usr/bin/env bash
# Materialisation and serving on a GPU (issues #3 and #8): run ON THE GPU MACHINE, from the repo
# root, with the folder scripts/cuda/build.sh packed carried there; best right after
# scripts/cuda/device-check.sh, while the machine is still warm, e.g. the device tool's
#   run(command="bash scripts/cuda/serve-check.sh", carry=["target-cuda-carry"], timeout_s=300)
# Expected 1-3 minutes; steps still to come after SWARM_CUDA_CHECK_SECONDS (280) are skipped
# and counted as failures.
#
#   scripts/cuda/serve-check.sh [CARRY_DIR]
#
# What it prints (and writes to $OUT/serve-check.md when $OUT is set):
#   1. materialisation: `swarm bench --materialise --random` on the device: a genome of three
#      synthetic experts of SmolLM2-135M's shape at rank 64 into f32 weights there, beside the
#      upload of the base, and the largest relative difference from the CPU's result;
#   2. serving: the carried swarm (CARRY_DIR/toy-swarm, its base CARRY_DIR/toy-swarm-base; else the
#      carried check model as a one-elite swarm) behind `swarm serve` on the device in f32 and
#      on the CPU; the same greedy chat requests to both (router, skills, elites), which must
#      pick the same elites and answer the same text;
#   3. load: streams at concurrency 1, 8 and 32 spread over the elites, on the device in f32
#      and bf16 (its default) and on the CPU: tokens/s, time to first token, latency, and
#      whether every stream ended with [DONE].
# SWARM_CHECK_DEVICE=cpu (with a CPU build in CARRY_DIR/swarm) runs the same steps without a GPU.
carry=${1:-target-cuda-carry}
report_name=serve-check.md
# shellcheck source=scripts/cuda/lib.sh
. "$(dirname "$0")/lib.sh"
probe=$(dirname "$0")/serve_probe.py

say "# swarm CUDA serve check ($(date -u +%FT%TZ))"
say
describe_machine

say
say "## Materialisation on $device"
say
run 150 "$bin" bench --materialise --random --device "$device" --repeats 5 | tee -a "$report" || fail=1

# The swarm's manifest names its base by the path it had where it was evolved: point it at the
# carried copy.
swarm=$work/toy-swarm
if [ -f "$carry/toy-swarm/swarm.json" ] && [ -f "$carry/toy-swarm-base/config.json" ]; then
  cp -r "$carry/toy-swarm" "$swarm"
  python3 - "$swarm/swarm.json" "$(cd "$carry/toy-swarm-base" && pwd)" <<'PY'
import json, sys
path, base = sys.argv[1], sys.argv[2]
with open(path) as f:
    manifest = json.load(f)
manifest["base"]["reference"] = base
with open(path, "w") as f:
    json.dump(manifest, f, indent=2)
PY
  serve_args=(--swarm "$swarm")
else
  say "no carried swarm ($carry/toy-swarm and $carry/toy-swarm-base): serving $carry/check-model as a one-elite swarm"
  serve_args=(--model "$carry/check-model")
fi

pids=()
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
# Starts `swarm serve` on 127.0.0.1:PORT with the swarm and the flags given, and waits for
# /ready (the elites the router needs first are materialised by then).
start_server() {
  local port=$1; shift
  "$bin" serve "${serve_args[@]}" --port "$port" "$@" >"$work/serve-$port.log" 2>&1 &
  pids+=($!)
  local i
  for i in $(seq 1 240); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://127.0.0.1:$port/ready" 2>/dev/null; then
      return 0
    fi
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.5
  done
  note "swarm serve $* on port $port did not become ready; its log:"
  note "$(tail -20 "$work/serve-$port.log")"
  return 1
}
stop_servers() {
  kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; pids=()
}

say
say "## Serving: $device (f32) against the CPU (f32), greedy"
say
say "swarm serve ${serve_args[*]}"
say
if start_server 18301 --device "$device" --precision f32 && start_server 18302 --device cpu --precision f32; then
  run 120 python3 "$probe" correctness http://127.0.0.1:18301 http://127.0.0.1:18302 | tee -a "$report" || fail=1
  say
  say "## Load on $device, f32"
  say
  run 120 python3 "$probe" load http://127.0.0.1:18301 1 8 32 | tee -a "$report" || fail=1
  say
  say "## Load on the CPU, f32"
  say
  run 120 python3 "$probe" load http://127.0.0.1:18302 1 8 32 | tee -a "$report" || fail=1
else
  fail=1
fi
stop_servers

say
say "## Load on $device, its default precision (bf16 on CUDA)"
say
if start_server 18303 --device "$device"; then
  run 120 python3 "$probe" load http://127.0.0.1:18303 1 8 32 | tee -a "$report" || fail=1
else
  fail=1
fi
stop_servers

say
if [ "$fail" = 0 ]; then say "RESULT: ok"; else say "RESULT: FAILED (see above)"; fi
exit "$fail"
