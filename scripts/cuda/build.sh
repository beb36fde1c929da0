#!/usr/bin/env bash
# Build the `swarm` binary with `--features cuda` on a machine with no GPU and no CUDA toolkit,
# from NVIDIA's PyPI wheels. The result is meant to be carried to a GPU machine (see
# scripts/cuda/device-check.sh and docs/performance.md, "Building the CUDA path").
#
#   scripts/cuda/build.sh            # release build: $CARGO_TARGET_DIR/release/swarm, packed
#                                    # into target-cuda-carry/ (swarm.gz, check-model/,
#                                    # toy-swarm/, toy-swarm-base/)
#   scripts/cuda/build.sh check      # only `cargo check` of swarm, swarm-merge, swarm-serve (--all-targets)
#
# Environment (all optional):
#   SWARM_CUDA_VENV    venv for the wheels (default /work/cuda-venv; keep it outside the repo)
#   CARGO_TARGET_DIR   default: target-cuda beside the repository (never the CPU target dir)
#   CUDA_COMPUTE_CAP   default 90 (H200 / H100): candle-kernels builds for this one arch only
#   SWARM_CUDA_CHECK_MODEL  model dir packed for the device check (default: the toy world's
#                      coding expert in the swarm cache's toy-<edition>/, from `swarm bootstrap`)
#   SWARM_CUDA_CHECK_SWARM  swarm dir packed for serve-check.sh, with the base its manifest
#                      names (default: agents/quick, from `swarm up`)
#
# Why these versions: the lent H200 machine had driver 580 (CUDA 13.0), nvcc 13.0 and torch
# cu130 when last recorded (2026-10/11). candle loads most kernels as PTX that the driver
# compiles at start, and a driver rejects PTX from a newer nvcc, so nvcc must be 13.0, not the
# newest. If that machine moves to a newer CUDA, 13.0 still runs under its newer driver.
#
# Linking: candle-core 0.11 turns on cudarc's `dynamic-linking`, so the binary is linked against
# libcuda, libcudart, libcublas(Lt), libcurand and libnvrtc and finds them at run time through
# the loader (LD_LIBRARY_PATH on the GPU machine). The wheels have all but libcuda (the driver):
# for that this script makes a stub libcuda.so.1 whose functions only return an error; it is
# used at link time only and never travels with the binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
mode=${1:-build}

venv=${SWARM_CUDA_VENV:-/work/cuda-venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(dirname "$repo")/target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

case "$venv" in "$repo"/*) echo "SWARM_CUDA_VENV must be outside the repository ($venv)" >&2; exit 1;; esac
case "$CARGO_TARGET_DIR" in "$repo/target"|"$repo/target/"*) echo "use a target dir other than the CPU one" >&2; exit 1;; esac

# CUDA 13.0 wheels: nvcc and its parts (crt headers, nvvm/cicc, cccl), the runtime, and the
# libraries cudarc links against. About 1.2 GB installed.
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# A no-op (and no download) when these exact versions are already there.
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${wheels[@]}"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cuda=$site/nvidia/cu13
[ -x "$cuda/bin/nvcc" ] || { echo "no nvcc at $cuda/bin/nvcc" >&2; exit 1; }

# Make the wheel tree look like a toolkit for the linker: unversioned names in lib/, and the
# driver stub in lib/stubs/ (cudarc searches both under $CUDA_HOME).
for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
  ln -sf "lib$l" "$cuda/lib/lib${l%%.so*}.so"
done
# The driver API functions cudarc declares, from its own bindings (whichever version the lock has).
cudarc_ver=$(awk '/^name = "cudarc"$/ {getline; gsub(/"/, "", $3); print $3}' Cargo.lock)
cargo fetch --locked >/dev/null
bindings=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$cudarc_ver"/src/driver/sys/mod.rs | head -1)
mkdir -p "$cuda/lib/stubs"
if [ ! -f "$cuda/lib/stubs/libcuda.so.1" ] || [ "$bindings" -nt "$cuda/lib/stubs/libcuda.so.1" ]; then
  sed -n 's/^pub unsafe fn \(cu[A-Za-z0-9_]*\)(.*/\1/p' "$bindings" | sort -u \
    | awk '{print "int " $1 "(void) { return 999; }"}' >"$cuda/lib/stubs/libcuda-stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so.1" "$cuda/lib/stubs/libcuda-stub.c"
  ln -sf libcuda.so.1 "$cuda/lib/stubs/libcuda.so"
fi

export CUDA_HOME=$cuda
export NVCC=$cuda/bin/nvcc
export PATH=$cuda/bin:$PATH
# The linker follows libcublas's own NEEDED entries (libcublasLt) through these.
export LIBRARY_PATH=$cuda/lib:$cuda/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-rpath-link,$cuda/lib"

echo "nvcc: $("$NVCC" --version | tail -2 | head -1); CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP; target: $CARGO_TARGET_DIR" >&2
case "$mode" in
  check)
    nice -n 19 cargo check --locked -p swarm --features cuda
    nice -n 19 cargo check --locked -p swarm-merge -p swarm-serve --features swarm-merge/cuda,swarm-serve/cuda --all-targets
    ;;
  build)
    nice -n 19 cargo build --locked --release -p swarm --features cuda
    bin=$CARGO_TARGET_DIR/release/swarm
    readelf -d "$bin" | grep NEEDED >&2
    # What scripts/cuda/device-check.sh needs on the GPU machine, in one folder to carry
    # (ignored by git as /target-*; at most 64 MiB travel): the binary, stripped and gzipped
    # (78 MiB as built, 72 stripped, ~20 gzipped: 30 MiB of it is the GGUF kernels' sm_90a
    # code, 11 MB candle's PTX), and a small model for the correctness check.
    carry=$repo/target-cuda-carry
    rm -rf "$carry"
    mkdir -p "$carry"
    strip -o "$carry/swarm" "$bin"
    gzip -9 "$carry/swarm"
    cache=${SWARM_CACHE_DIR:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/swarm}}
    # `swarm bootstrap` writes the toy world to toy-<edition>/ (swarm_model::TOY_WORLD_EDITION).
    edition=$(sed -n 's/^pub const TOY_WORLD_EDITION: u32 = \([0-9]*\);/\1/p' crates/swarm-model/src/hub.rs)
    toy=${cache:-$HOME/.cache/swarm}/toy-${edition:?TOY_WORLD_EDITION not found in crates/swarm-model/src/hub.rs}
    model=${SWARM_CUDA_CHECK_MODEL:-$toy/coding}
    if [ -f "$model/config.json" ] && [ -f "$model/tokenizer.json" ]; then
      cp -r "$model" "$carry/check-model"
    else
      echo "no toy model at $model (set SWARM_CUDA_CHECK_MODEL to an HF dir with a tokenizer):" \
        "device-check.sh will build a micro toy world on the GPU machine's CPU instead" >&2
    fi
    # A swarm for scripts/cuda/serve-check.sh: agents/quick (what `swarm up` evolves) with the
    # base its manifest names; serve-check.sh points the manifest at the carried base.
    swarm_dir=${SWARM_CUDA_CHECK_SWARM:-$repo/agents/quick}
    swarm_base=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["base"]["reference"])' \
      "$swarm_dir/swarm.json" 2>/dev/null || true)
    case "$swarm_base" in toy:*) swarm_base=$toy/${swarm_base#toy:};; esac
    if [ -n "$swarm_base" ] && [ -f "$swarm_base/config.json" ]; then
      cp -r "$swarm_dir" "$carry/toy-swarm"
      cp -r "$swarm_base" "$carry/toy-swarm-base"
    else
      echo "no swarm at $swarm_dir with its base (run \`swarm up\` or \`swarm evolve --config" \
        "configs/quick.toml\`, or set SWARM_CUDA_CHECK_SWARM): serve-check.sh will serve the" \
        "check model alone" >&2
    fi
    du -sh "$carry" "$carry"/* >&2
    ;;
  *) echo "usage: $0 [build|check]" >&2; exit 2;;
esac
