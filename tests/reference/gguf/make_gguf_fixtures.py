#!/usr/bin/env python3
"""Reference values for swarm's GGUF dequantisation, from the Python `gguf` package.

What
----
Writes two fixtures next to this script, which `crates/swarm-model/src/gguf/tests.rs` reads
(CI never runs Python):

* `smollm2-dequant.json`: for a few tensors of SmolLM2-135M-Instruct's Q4_1 GGUF, one of each
  type the file holds (Q8_0 token embedding, Q4_1 matrices, F32 norms), dequantised by
  `gguf.quants.dequantize` and put in HF layout (llama.cpp's Q/K row permutation undone with
  numpy's reshape/swapaxes): the HF name, shape, checksums (sum, sum of squares, a
  position-weighted sum that changes when rows or columns move) and the first 16 values of
  three rows.
* `types.gguf`: a small GGUF (architecture "none") holding, for every ggml type swarm decodes
  (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), a 2x512
  tensor `q.<TYPE>` and, as F32, what `gguf.quants.dequantize` makes of it, `expected.<TYPE>`.
  Types the package can quantize are quantized from seeded normal data; for the k-quants
  (it can only dequantize them) the blocks are seeded random bytes with their f16 scales set
  to small positive values, which exercises every bit of the packed layouts.

How to run (once, by hand)
--------------------------
    python3 -m venv .venv-gguf && .venv-gguf/bin/pip install gguf numpy
    .venv-gguf/bin/python tests/reference/gguf/make_gguf_fixtures.py [path/to/SmolLM2.gguf]

The GGUF path defaults to `$SWARM_SMOLLM2_GGUF`, else
`~/.cache/swarm/models/SmolLM2-135M-Instruct.Q4_1.gguf`. Made with gguf 0.19.0, numpy 2.x.
"""

import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

HERE = Path(__file__).resolve().parent


def weighted_sum(x: np.ndarray) -> float:
    """Sum of x[r, c] * w(r, c) with weights that differ between nearby positions."""
    x2 = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
    r = np.arange(x2.shape[0], dtype=np.int64)[:, None]
    c = np.arange(x2.shape[1], dtype=np.int64)[None, :]
    w = (((r * 31 + c * 17) % 101) + 1).astype(np.float64) / 101.0
    return float((x2.astype(np.float64) * w).sum())


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf.py's `permute`: rows as (heads, d/2, 2), swap last two."""
    rows = w.shape[0]
    return (
        w.reshape(heads, rows // heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def smollm2(path: Path) -> None:
    reader = gguf.GGUFReader(str(path))
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_kv = int(reader.fields["llama.attention.head_count_kv"].contents())
    wanted = {
        "token_embd.weight": ("model.embed_tokens.weight", None),
        "blk.0.attn_q.weight": ("model.layers.0.self_attn.q_proj.weight", n_head),
        "blk.0.attn_k.weight": ("model.layers.0.self_attn.k_proj.weight", n_kv),
        "blk.0.attn_v.weight": ("model.layers.0.self_attn.v_proj.weight", None),
        "blk.7.ffn_down.weight": ("model.layers.7.mlp.down_proj.weight", None),
        "blk.29.attn_norm.weight": ("model.layers.29.input_layernorm.weight", None),
        "output_norm.weight": ("model.norm.weight", None),
    }
    out = []
    for t in reader.tensors:
        if t.name not in wanted:
            continue
        hf, heads = wanted[t.name]
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if heads is not None:
            x = unpermute(x, heads)
        x2 = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        rows = sorted({0, min(1, x2.shape[0] - 1), x2.shape[0] - 1})
        out.append(
            {
                "gguf_name": t.name,
                "hf_name": hf,
                "type": t.tensor_type.name,
                "shape": list(x.shape),
                "sum": float(x.astype(np.float64).sum()),
                "sum_sq": float((x.astype(np.float64) ** 2).sum()),
                "sum_abs": float(np.abs(x.astype(np.float64)).sum()),
                "weighted_sum": weighted_sum(x),
                "rows": {str(r): [float(v) for v in x2[r, :16]] for r in rows},
            }
        )
    out.sort(key=lambda e: e["hf_name"])
    meta = {
        "source": path.name,
        "made_with": f"gguf {getattr(gguf, '__version__', '0.19.0')}, numpy {np.__version__}",
        "tensors": out,
    }
    (HERE / "smollm2-dequant.json").write_text(json.dumps(meta, indent=1) + "\n")


# Offsets of the f16 scale fields inside each k-quant block (ggml-common.h).
K_SCALES = {
    T.Q2_K: [80, 82],  # scales[16], qs[64], d, dmin
    T.Q3_K: [108],  # hmask[32], qs[64], scales[12], d
    T.Q4_K: [0, 2],  # d, dmin, scales[12], qs[128]
    T.Q5_K: [0, 2],  # d, dmin, scales[12], qh[32], qs[128]
    T.Q6_K: [208],  # ql[128], qh[64], scales[16], d
}


def types_file() -> None:
    rng = np.random.default_rng(20261128)
    rows, cols = 2, 512
    path = HERE / "types.gguf"
    writer = gguf.GGUFWriter(str(path), arch="none")
    for ty in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
               T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
        block, size = gguf.GGML_QUANT_SIZES[ty]
        if ty in K_SCALES:
            raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
            for off in K_SCALES[ty]:
                scale = rng.uniform(0.001, 0.05, size=(rows, cols // block)).astype(np.float16)
                raw[:, :, off:off + 2] = scale.view(np.uint8).reshape(rows, cols // block, 2)
            raw = raw.reshape(rows, -1)
        else:
            data = rng.normal(0.0, 0.05, size=(rows, cols)).astype(np.float32)
            raw = gguf.quants.quantize(data, ty)
        expected = gguf.quants.dequantize(raw, ty).astype(np.float32)
        assert expected.shape == (rows, cols), (ty, expected.shape)
        if ty == T.F32:
            writer.add_tensor(f"q.{ty.name}", raw)
        else:
            writer.add_tensor(f"q.{ty.name}", raw, raw_dtype=ty)
        writer.add_tensor(f"expected.{ty.name}", expected)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    default = os.environ.get("SWARM_SMOLLM2_GGUF") or os.path.expanduser(
        "~/.cache/swarm/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    path = Path(sys.argv[1] if len(sys.argv) > 1 else default)
    smollm2(path)
    types_file()
    print("wrote", HERE / "smollm2-dequant.json", "and", HERE / "types.gguf")


if __name__ == "__main__":
    main()
