"""What logprobs and JSON mode cost per generated token, against a running `swarm serve`.

Usage: python feature_cost.py BASE_URL [ROUNDS]
  BASE_URL  e.g. http://127.0.0.1:8080/v1 (a server with no API key)
  ROUNDS    requests per mode, alternating the modes (default 5)

Every request is a greedy chat answer of at most 64 tokens, one at a time (batch 1), with
the same question; the modes alternate so that they share the machine's minutes. Prints,
per mode, the median of milliseconds per completion token (wall time of the request over
its completion tokens, prefill included, so compare the modes, not the absolute numbers).
"""

import statistics
import sys
import time

import openai

BASE = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=300)
ASK = [{"role": "user", "content": "Reply with a JSON object describing a cat: its name, "
        "age, colour and three favourite toys."}]
MODES = {
    "plain": {},
    "logprobs": {"logprobs": True},
    "top_logprobs=20": {"logprobs": True, "top_logprobs": 20},
    "json_object": {"response_format": {"type": "json_object"}},
}

per_token = {mode: [] for mode in MODES}
tokens = {mode: [] for mode in MODES}
for _ in range(ROUNDS):
    for mode, extra in MODES.items():
        start = time.perf_counter()
        r = client.chat.completions.create(model="swarm", messages=ASK, max_tokens=64,
                                           temperature=0, **extra)
        seconds = time.perf_counter() - start
        n = r.usage.completion_tokens
        per_token[mode].append(1000 * seconds / n)
        tokens[mode].append(n)

print("| mode | completion tokens | ms per token (median) | vs plain |")
print("|---|---:|---:|---:|")
base = statistics.median(per_token["plain"])
for mode in MODES:
    ms = statistics.median(per_token[mode])
    print(f"| {mode} | {statistics.median(tokens[mode]):.0f} | {ms:.1f} | {ms / base:.2f}x |")
