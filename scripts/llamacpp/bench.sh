#!/usr/bin/env bash
# llama.cpp's own benchmarks on the default model, for the comparisons in
# docs/performance.md: batch-1 decode (llama-bench) and decode at batch 1, 8 and 32
# (llama-batched-bench: independent sequences, as `swarm bench --batch 1,8,32` runs them).
#
# llama.cpp comes from PyPI (the only registry these machines reach): the sdist of
# llama-cpp-python vendors its source. Only the four tools needed are built (~15 min on
# 2 cores), with -DGGML_NATIVE=ON as a local build would be. SmolLM2's shipped Q4_1 GGUF is
# requantised to F32 (the same dequantised weights swarm runs in f32) and Q8_0.
#
# Usage: scripts/llamacpp/bench.sh [work dir (/work/llamacpp)] [threads (2)]
# LLAMACPP_CMAKE_FLAGS replaces -DGGML_NATIVE=ON (its own build dir): on an Intel VM with AMX
# (2026-12-06) the native build's llama-bench crashed (segfault) on Q8_0, so there it ran with
# "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON".
# Needs: cmake (pip install cmake), a C++ compiler, the default model in swarm's cache
# (any `swarm` command that loads it downloads it first).
set -euo pipefail
WORK=${1:-/work/llamacpp}
THREADS=${2:-2}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
GGUF=${SWARM_GGUF:-${XDG_CACHE_HOME:-$HOME/.cache}/swarm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$GGUF" ] || { echo "no $GGUF: run any swarm command on the default model first" >&2; exit 1; }
command -v cmake >/dev/null || { echo "cmake not found: pip install cmake" >&2; exit 1; }
mkdir -p "$WORK"
cd "$WORK"
SRC="llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -d "$SRC" ]; then
  # pip download of an sdist would build its metadata (minutes); fetch the file itself.
  URL=$(python3 - "$VERSION" <<'PY'
import re, sys, urllib.parse, urllib.request
base = "https://pypi.org/simple/llama-cpp-python/"
page = urllib.request.urlopen(base).read().decode()
name = f"llama_cpp_python-{sys.argv[1]}.tar.gz"
hrefs = [h.split("#")[0] for h in re.findall(r'href="([^"]+)"', page)]
print(urllib.parse.urljoin(base, next(h for h in hrefs if h.endswith("/" + name))))
PY
)
  curl -sSfL -o "llama_cpp_python-$VERSION.tar.gz" "$URL"
  tar xzf "llama_cpp_python-$VERSION.tar.gz"
fi
FLAGS=${LLAMACPP_CMAKE_FLAGS:--DGGML_NATIVE=ON}
BUILD="$SRC/build"
[ -z "${LLAMACPP_CMAKE_FLAGS:-}" ] || BUILD="$SRC/build-$(echo "$FLAGS" | md5sum | cut -c1-8)"
BIN="$BUILD/bin"
if [ ! -x "$BIN/llama-bench" ] || [ ! -x "$BIN/llama-quantize" ] ||
  [ ! -x "$BIN/llama-batched-bench" ]; then
  # shellcheck disable=SC2086 # FLAGS is a list of cmake flags
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release $FLAGS -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF >/dev/null
  cmake --build "$BUILD" -j"$(nproc)" --target llama-bench llama-quantize \
    llama-batched-bench >/dev/null
fi
for TYPE in F32 Q8_0; do
  [ -f "smollm2-$TYPE.gguf" ] ||
    "$BIN/llama-quantize" --allow-requantize "$GGUF" "smollm2-$TYPE.gguf" "$TYPE" >/dev/null 2>&1
done
uptime
# Prefill of a 500-token prompt and 128 decoded tokens after it, 3 repetitions each.
"$BIN/llama-bench" -m smollm2-F32.gguf,smollm2-Q8_0.gguf -t "$THREADS" -p 500 -n 128 -r 3 2>/dev/null
"$BIN/llama-bench" -m smollm2-F32.gguf -t "$THREADS" -p 0 -n 128 -d 500 -r 3 2>/dev/null
# 1, 8 and 32 sequences of 100- and 500-token prompts, 32 tokens decoded by each: S_TG is
# the decode throughput over all sequences.
for TYPE in Q8_0 F32; do
  echo "$TYPE"
  "$BIN/llama-batched-bench" -m "smollm2-$TYPE.gguf" -c 17500 -b 2048 -ub 512 -npp 100,500 \
    -ntg 32 -npl 1,8,32 -t "$THREADS" 2>/dev/null | grep '^|'
done
uptime
