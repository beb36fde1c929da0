#!/usr/bin/env python3
"""Runs mergekit on the tiny random models our code made and commits what it produced.

The Rust test `crates/swarm-merge/tests/mergekit_reference.rs` runs our merge on the same
inputs and configs and compares with these fixtures to 1e-6.

Setup (once; mergekit needs torch, ~3 GB):

    python3 -m venv .venv-merge
    .venv-merge/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    .venv-merge/bin/pip install mergekit==0.1.5

(Or point a .pth file in .venv-merge's site-packages at a venv that already has torch.)

Then, from the repo root:

    cargo run -p swarm-merge --example make_tiny_models -- tests/reference/mergekit/models
    .venv-merge/bin/python scripts/merge/make_mergekit_fixtures.py

Writes `tests/reference/mergekit/configs/<method>.yaml` (paths relative to
tests/reference/mergekit) and `tests/reference/mergekit/fixtures/<method>.json`: for every
output tensor its shape, sha256 of its f32 bytes, sum, L2 norm and 16 values at fixed indices,
and for a few tensors every value.

`--bench BASE A B` also times mergekit's linear and TIES merges of three big HF dirs
(e.g. the SmolLM2-sized ones `merge_bench --write-dirs` makes) for docs/performance.md.
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
REF = ROOT / "tests" / "reference" / "mergekit"

CONFIGS = {
    "linear": """merge_method: linear
models:
  - model: models/base
    parameters:
      weight: 0.2
  - model: models/a
    parameters:
      weight: 0.5
  - model: models/b
    parameters:
      weight: 0.3
dtype: float32
""",
    "linear_unnormalized": """merge_method: linear
models:
  - model: models/a
    parameters:
      weight: 0.7
  - model: models/b
    parameters:
      weight: 0.6
parameters:
  normalize: false
dtype: float32
""",
    "task_arithmetic": """merge_method: task_arithmetic
base_model: models/base
models:
  - model: models/a
    parameters:
      weight: 0.6
  - model: models/b
    parameters:
      weight: 0.4
parameters:
  lambda: 1.5
dtype: float32
""",
    "ties": """merge_method: ties
base_model: models/base
models:
  - model: models/base
  - model: models/a
    parameters:
      weight: 0.7
      density: 0.5
  - model: models/b
    parameters:
      weight: 0.5
      density: 0.3
parameters:
  normalize: true
  int8_mask: true
dtype: float32
""",
    "ties_unnormalized": """merge_method: ties
base_model: models/base
models:
  - model: models/a
    parameters:
      weight: 1.0
      density: 0.8
  - model: models/b
    parameters:
      weight: -0.5
      density: 0.6
parameters:
  normalize: false
  lambda: 0.9
dtype: float32
""",
    "slerp": """merge_method: slerp
base_model: models/base
models:
  - model: models/base
  - model: models/a
parameters:
  t: 0.3
dtype: float32
""",
}

# Tensors stored in full (every value).
FULL = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.norm.weight",
]


def describe(t: np.ndarray) -> dict:
    flat = t.astype(np.float32).reshape(-1)
    idx = np.linspace(0, flat.size - 1, num=min(16, flat.size)).astype(np.int64)
    return {
        "shape": list(t.shape),
        "sha256_f32": hashlib.sha256(flat.tobytes()).hexdigest(),
        "sum": float(flat.astype(np.float64).sum()),
        "l2": float(np.sqrt((flat.astype(np.float64) ** 2).sum())),
        "sample_indices": idx.tolist(),
        "sample_values": [float(v) for v in flat[idx]],
    }


def load_dir(path: Path) -> dict:
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def mergekit_yaml() -> str:
    exe = Path(sys.executable).with_name("mergekit-yaml")
    return str(exe) if exe.exists() else "mergekit-yaml"


def run_mergekit(config_path: Path, out: Path, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [mergekit_yaml(), str(config_path), str(out), "--allow-crimes", "--lazy-unpickle",
         "--no-write-model-card", "--random-seed", "0"],
        cwd=cwd,
        check=True,
    )
    return time.perf_counter() - start


def make_fixtures() -> None:
    import mergekit  # noqa: F401  (fail early if it is missing)
    from importlib.metadata import version

    (REF / "configs").mkdir(parents=True, exist_ok=True)
    (REF / "fixtures").mkdir(parents=True, exist_ok=True)
    for name, text in CONFIGS.items():
        cfg = REF / "configs" / f"{name}.yaml"
        cfg.write_text(text)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            run_mergekit(cfg, out, REF)
            tensors = load_dir(out)
        fixture = {
            "mergekit_version": version("mergekit"),
            "torch_version": version("torch"),
            "config": f"configs/{name}.yaml",
            "tensors": {k: describe(v) for k, v in sorted(tensors.items())},
            "full": {k: tensors[k].astype(np.float32).reshape(-1).tolist() for k in FULL},
        }
        (REF / "fixtures" / f"{name}.json").write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"{name}: {len(tensors)} tensors")


def bench(base: str, a: str, b: str) -> None:
    configs = {
        "linear": f"""merge_method: linear
models:
  - model: {base}
    parameters: {{weight: 0.4}}
  - model: {a}
    parameters: {{weight: 0.3}}
  - model: {b}
    parameters: {{weight: 0.3}}
dtype: float32
""",
        "ties": f"""merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.5}}
dtype: float32
""",
    }
    for name, text in configs.items():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "c.yaml"
            cfg.write_text(text)
            times = []
            runs = int(os.environ.get("MERGEKIT_BENCH_RUNS", "2"))
            for _ in range(runs):
                out = Path(tmp) / "out"
                shutil.rmtree(out, ignore_errors=True)
                times.append(run_mergekit(cfg, out, Path(tmp)))
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(f"mergekit {name}: {min(times):.2f} s (best of {runs}), children's peak RSS so far {peak:.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", nargs=3, metavar=("BASE", "A", "B"))
    args = p.parse_args()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.bench:
        bench(*args.bench)
    else:
        make_fixtures()


if __name__ == "__main__":
    main()
