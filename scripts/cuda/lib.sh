# Shared by scripts/cuda/device-check.sh and scripts/cuda/serve-check.sh (sourced, not run):
# unpacks the carried binary, finds the CUDA libraries, and defines the report and the
# time-limited `run`. Expects `carry` (the folder scripts/cuda/build.sh packed) and `report_name`.
#
# SWARM_CHECK_DEVICE (default cuda:0) names the device under test, so that the scripts' logic
# can be tried on a machine without a GPU (`cpu`, with a CPU build in $carry/swarm).
set -uo pipefail
device=${SWARM_CHECK_DEVICE:-cuda:0}
work=$(mktemp -d /tmp/swarm-cuda-check.XXXXXX)
bin=$work/swarm
if [ -f "$carry/swarm.gz" ]; then
  gzip -dc "$carry/swarm.gz" >"$bin" && chmod +x "$bin"
elif [ -f "$carry/swarm" ]; then
  cp "$carry/swarm" "$bin"
fi
report=${OUT:-/tmp}/$report_name
mkdir -p "$(dirname "$report")"
: >"$report"
say() { echo "$*" | tee -a "$report"; }
fail=0

[ -x "$bin" ] || { echo "no $carry/swarm.gz: run scripts/cuda/build.sh first and carry $carry" >&2; exit 1; }

# The binary is linked against libcuda.so.1 (the driver) and the CUDA 13 libraries libcudart,
# libcublas, libcublasLt, libcurand, libnvrtc; find them where this image keeps them (the
# toolkit, and the wheels that torch installed).
libdirs=""
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib "$site/nvidia/cu13/lib" \
         "$site"/nvidia/*/lib /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
  [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The machine, and the libraries the binary resolved to.
describe_machine() {
  say '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | tee -a "$report"
  (nvcc --version 2>/dev/null || /usr/local/cuda/bin/nvcc --version 2>&1) | tail -2 | head -1 | tee -a "$report"
  ls -l "$bin" | tee -a "$report"
  ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc|stdc|not found' | tee -a "$report"
  say '```'
  if ldd "$bin" | grep -q 'not found'; then
    say "FAIL: libraries not found (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
    exit 1
  fi
}

export SWARM_LOG=${SWARM_LOG:-warn}
note() { echo "$*" >&2; echo "$*" >>"$report"; }
deadline=${SWARM_CUDA_CHECK_SECONDS:-280}
run() { # seconds, then the command; its stderr goes to the report (and stderr) on failure
  local limit=$1; shift
  local left=$((deadline - SECONDS))
  if [ "$left" -le 5 ]; then note "skipped (the check's ${deadline} s are spent): $*"; return 1; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local err rc=0; err=$(mktemp)
  timeout "$limit" "$@" 2>"$err" || rc=$?
  if [ "$rc" != 0 ]; then
    note "(exit $rc) $*"; [ "$rc" = 124 ] && note "timed out after ${limit} s"
    note "$(tail -20 "$err")"
  fi
  rm -f "$err"; return "$rc"
}
