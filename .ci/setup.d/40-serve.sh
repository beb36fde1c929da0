#!/usr/bin/env bash
# swarm-serve: the official `openai` Python client for the integration test
# (crates/swarm-serve/tests/openai_client.rs), in its own venv; `wrk` for the load benchmark.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv-serve/bin/python ] || ! .venv-serve/bin/python -c "import openai" 2>/dev/null; then
  python3 -m venv .venv-serve
  .venv-serve/bin/pip install --quiet --disable-pip-version-check "openai>=1.40,<3"
fi
.venv-serve/bin/python -c "import openai; print('openai', openai.__version__)"
