#!/usr/bin/env python3
"""Load the toy world's HF dirs in transformers and compare logits with swarm's.

`swarm bootstrap` writes, next to the model dirs, `logits/<model>.json` with the input ids of
a fixed chat prompt and the logits of every position computed by swarm-model's inference
forward. This script loads each dir with `AutoModelForCausalLM` and `AutoTokenizer`
(transformers' own loaders, nothing of ours) and checks that

- the tokenizer encodes the prompt text to the same ids,
- the logits agree (max abs difference below --tol),
- greedy argmax agrees at every position.

Usage: .venv-ref/bin/python scripts/toy/check_transformers.py WORLD_DIR [--tol 1e-4]
Prints one markdown line per model and exits non-zero on any mismatch.
"""
import argparse
import json
import pathlib
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("world", type=pathlib.Path)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--models", default="base,coding,database,os")
    args = ap.parse_args()
    ok = True
    print("| model | max abs logit diff | argmax agrees | tokenizer and chat template agree |")
    print("|---|---:|---|---|")
    for name in args.models.split(","):
        d = args.world / name
        ref = json.loads((args.world / "logits" / f"{name}.json").read_text())
        ids = ref["input_ids"]
        theirs = torch.tensor(ref["logits"], dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        model.eval()
        tok = AutoTokenizer.from_pretrained(d)
        text = tok.decode(ids, skip_special_tokens=False)
        tok_ok = tok(text, add_special_tokens=False)["input_ids"] == ids
        if "messages" in ref:
            # transformers renders the saved chat template to the same prompt ids.
            rendered = tok.apply_chat_template(ref["messages"], add_generation_prompt=True,
                                               tokenize=False)
            tok_ok &= tok(rendered, add_special_tokens=False)["input_ids"] == ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        diff = (logits - theirs).abs().max().item()
        argmax_ok = bool((logits.argmax(-1) == theirs.argmax(-1)).all())
        good = diff < args.tol and argmax_ok and tok_ok
        ok &= good
        print(f"| {name} | {diff:.2e} | {'yes' if argmax_ok else 'NO'} | {'yes' if tok_ok else 'NO'} |")
    print()
    print(f"Result: {'all models agree' if ok else 'MISMATCH'} (tolerance {args.tol:g}; "
          f"transformers {__import__('transformers').__version__}, torch {torch.__version__}).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
