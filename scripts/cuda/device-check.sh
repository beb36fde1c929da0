#!/usr/bin/env bash
# The first run of swarm's CUDA build on a GPU: run it ON THE GPU MACHINE, from the repo root,
# with the folder that `scripts/cuda/build.sh` packed (default target-cuda-carry/: the binary,
# gzipped, and a toy model dir) carried there, e.g. the device tool's
#   run(command="bash scripts/cuda/device-check.sh; bash scripts/cuda/serve-check.sh",
#       carry=["target-cuda-carry"], timeout_s=600)
# (serve-check.sh: materialisation and serving on the GPU). Expected 1-3 minutes; each step
# has a time limit, and steps still to come after 280 s (SWARM_CUDA_CHECK_SECONDS) are skipped
# and counted as failures. SWARM_CHECK_DEVICE=cpu runs it on a CPU build, as a dry run.
#
#   scripts/cuda/device-check.sh [CARRY_DIR]
#
# What it prints (and writes to $OUT/device-check.md when $OUT is set):
#   1. the machine: GPU, driver, nvcc, and which CUDA libraries the binary resolved to;
#   2. correctness: greedy `swarm generate` (64 tokens, three prompts) of the carried toy
#      model on cuda:0 vs the CPU at the same precision (bf16 vs the CPU's f32: the CPU has
#      no bf16 products), for f32, bf16, f16 and q8_0. Same text is expected for f32; the
#      others may drift after some tokens, and the table says where;
#   3. speed: `swarm bench --random` (SmolLM2-135M's shape, random weights: the real GGUF is
#      94 MiB, over what can be carried) at batch 1, 8 and 32, 500-token prompts, 64 decoded
#      tokens, in bf16 (the CUDA default) and f32.
# It exits non-zero if the binary cannot start, cuda:0 cannot be opened, or f32 disagrees.
carry=${1:-target-cuda-carry}
model=$carry/check-model
report_name=device-check.md
# shellcheck source=scripts/cuda/lib.sh
. "$(dirname "$0")/lib.sh"

say "# swarm CUDA device check ($(date -u +%FT%TZ))"
say
describe_machine

# A model for the correctness check: the carried toy model, else a micro toy world built here
# on the CPU (`--preset micro`: about a minute on 2 cores; not timed on that machine).
if [ ! -f "$model/config.json" ]; then
  say "no carried model at $carry/check-model: building a micro toy world on the CPU"
  run 240 "$bin" bootstrap --preset micro --no-eval --quiet --out "$work/world" >/dev/null || exit 1
  model=$work/world/coding
fi

say
say "## Correctness: greedy generate, $device vs cpu, same precision"
say
say "model: $model"
say
# First contact: if cuda:0 cannot run at all, say so once and stop.
if ! run 180 "$bin" generate --device "$device" --model "$model" --precision f32 --max-tokens 4 \
      --temperature 0 --raw --prompt "def" >/dev/null; then
  say "FAIL: the binary cannot generate on $device (error above)"; exit 1
fi
say "| precision ($device / cpu) | prompt | same text | cpu | $device |"
say "|---|---|---|---|---|"
# Raw continuations (64 greedy tokens each) and one chat turn.
prompts=("--raw|def f(x):" "--raw|Once upon a time" "--chat|Write a Python function \`f(x)\` that returns x * 3 + 7.")
for precision in f32 bf16 f16 q8_0; do
  for i in "${!prompts[@]}"; do
    mode=${prompts[$i]%%|*} p=${prompts[$i]#*|}
    flags=(--model "$model" --max-tokens 64 --temperature 0 --prompt "$p")
    [ "$mode" = --raw ] && flags+=(--raw)
    # The CPU has no bf16 matrix products: bf16 on the GPU is compared with f32 on the CPU.
    ref=$precision; [ "$precision" = bf16 ] && ref=f32
    cpu=$(run 60 "$bin" generate --device cpu "${flags[@]}" --precision "$ref") || { fail=1; continue; }
    gpu=$(run 60 "$bin" generate --device "$device" "${flags[@]}" --precision "$precision") || { fail=1; continue; }
    if [ "$cpu" = "$gpu" ]; then same=yes; else
      # Characters before the first difference.
      n=0; while [ "$n" -lt "${#cpu}" ] && [ "${cpu:$n:1}" = "${gpu:$n:1}" ]; do n=$((n + 1)); done
      same="no (first $n chars agree)"
      [ "$precision" = f32 ] && fail=1
    fi
    say "| $precision / $ref | $i | $same | \`$(echo "$cpu" | tr '\n|' ' /' | cut -c1-50)\` | \`$(echo "$gpu" | tr '\n|' ' /' | cut -c1-50)\` |"
  done
done

say
say "## Speed: swarm bench --random (SmolLM2-135M shape) on $device"
for precision in bf16 f32; do
  say
  run 150 "$bin" bench --random --device "$device" --precision "$precision" --batch 1,8,32 \
    --prompt-tokens 500 --decode-tokens 64 --repeats 3 | tee -a "$report" || fail=1
done

say
if [ "$fail" = 0 ]; then say "RESULT: ok"; else say "RESULT: FAILED (see above)"; fi
exit "$fail"
