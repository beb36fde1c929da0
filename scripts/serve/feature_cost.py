"""What logprobs and JSON mode cost per generated token, against a running `swarm serve`.

Usage: python feature_cost.py BASE_URL [ROUNDS] [CONCURRENCY]
  BASE_URL     e.g. http://127.0.0.1:8080/v1 (a server with no API key)
  ROUNDS       rounds per mode, alternating the modes (default 5)
  CONCURRENCY  requests at once in a round (default 1: batch 1)

Every request is a greedy chat answer of at most 64 tokens with the same question; the
modes alternate so that they share the machine's minutes. Prints, per mode, the median
over rounds of milliseconds per completion token (a round's wall time over all its
requests' completion tokens, prefill included, so compare the modes, not the absolute
numbers).
"""

from concurrent.futures import ThreadPoolExecutor

import statistics
import sys
import time

import openai

BASE = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
CONCURRENCY = int(sys.argv[3]) if len(sys.argv) > 3 else 1
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


def ask(extra):
    return client.chat.completions.create(model="swarm", messages=ASK, max_tokens=64,
                                          temperature=0, **extra).usage.completion_tokens


with ThreadPoolExecutor(CONCURRENCY) as pool:
    for _ in range(ROUNDS):
        for mode, extra in MODES.items():
            start = time.perf_counter()
            n = sum(pool.map(ask, [extra] * CONCURRENCY))
            seconds = time.perf_counter() - start
            per_token[mode].append(1000 * seconds / n)
            tokens[mode].append(n / CONCURRENCY)

print(f"concurrency {CONCURRENCY}")
print("| mode | completion tokens a request | ms per token (median) | vs plain |")
print("|---|---:|---:|---:|")
base = statistics.median(per_token["plain"])
for mode in MODES:
    ms = statistics.median(per_token[mode])
    print(f"| {mode} | {statistics.median(tokens[mode]):.0f} | {ms:.1f} | {ms / base:.2f}x |")
