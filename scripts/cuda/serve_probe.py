#!/usr/bin/env python3
"""Probes running `swarm serve` instances for scripts/cuda/serve-check.sh (standard library only:
the GPU machine has no internet, and its Python may lack the `openai` package).

    serve_probe.py correctness URL_UNDER_TEST URL_REFERENCE   # greedy answers, same elites
    serve_probe.py load URL [CONCURRENCY ...]                 # streams spread over the elites

`correctness` sends the same greedy chat requests (temperature 0, seed 0) to both servers,
through the router (`swarm`), each skill's best (`swarm/<skill>`) and the first elites by id,
and prints a markdown table: which elite served (`x-swarm-elite`) and whether the texts agree.
It exits 1 when an answer or an elite differs.

`load` opens CONCURRENCY streaming requests at a time (default 1, 8 and 32), twice as many in
all (at least 8), each on the next elite of GET /v1/models in turn, and prints completion
tokens per second, time to first token and latency percentiles, and the server's elites
resident afterwards (/metrics). It exits 1 when a stream does not end with `data: [DONE]`.
"""

import concurrent.futures
import json
import sys
import time
import urllib.request

MAX_TOKENS = 48
PROMPTS = {
    "swarm": "Write a Python function `add(a, b)` that returns a + b.",
    "coding": "Write a Python function `square(x)` that returns x * x.",
    "database": "Write an SQL query that counts the rows of the table `users`.",
    "os": "Write a shell command that lists the files in /tmp.",
}


def call(url, path, body=None, timeout=120):
    """(status, headers, body bytes) of one request."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    req = urllib.request.Request(url + path, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.headers, r.read()


def models(url):
    """(skills, elite ids) of GET /v1/models: `swarm/<skill>` entries, and every entry but
    those and the router."""
    _, _, raw = call(url, "/v1/models")
    ids = [m["id"] for m in json.loads(raw)["data"]]
    skills = [i.split("/", 1)[1] for i in ids if i.startswith("swarm/")]
    elites = [i for i in ids if i != "swarm" and not i.startswith("swarm/")]
    return skills, elites


def chat(url, model, prompt):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "seed": 0,
        "max_tokens": MAX_TOKENS,
    }
    _, headers, raw = call(url, "/v1/chat/completions", body)
    answer = json.loads(raw)
    return answer["choices"][0]["message"]["content"], headers.get("x-swarm-elite")


def cell(text):
    return "`" + text.replace("\n", " ").replace("|", "/")[:40] + "`"


def correctness(url, reference):
    skills, elites = models(reference)
    names = ["swarm"] + [f"swarm/{s}" for s in skills] + elites[:3]
    print("| model | elite (test / reference) | same text | reference | test |")
    print("|---|---|---|---|---|")
    ok = True
    for model in names:
        skill = model.split("/", 1)[1] if model.startswith("swarm/") else "swarm"
        prompt = PROMPTS.get(skill, PROMPTS["swarm"])
        got, got_elite = chat(url, model, prompt)
        want, want_elite = chat(reference, model, prompt)
        same = got == want and got_elite == want_elite
        ok &= same
        print(
            f"| {model} | {got_elite} / {want_elite} | {'yes' if same else 'NO'} "
            f"| {cell(want)} | {cell(got)} |"
        )
    return ok


def stream(url, model, prompt):
    """One streamed chat: latency, time to first content, completion tokens, ended well."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.8,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.time()
    first, tokens, done = None, 0, False
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            if first is None and choices and choices[0].get("delta", {}).get("content"):
                first = time.time() - start
    return time.time() - start, first, tokens, done


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def metric(url, name):
    _, _, raw = call(url, "/metrics")
    for line in raw.decode().splitlines():
        if line.startswith(name):
            return line.split()[-1]
    return "n/a"


def load(url, concurrencies):
    _, elites = models(url)
    prompts = list(PROMPTS.values())
    print(
        "| concurrency | requests | elites | completion tok/s | TTFT p50 / p95 ms "
        "| latency p50 / p95 ms | ended with [DONE] | elites resident after |"
    )
    print("|---:|---:|---:|---:|---|---|---:|---:|")
    ok = True
    for c in concurrencies:
        n = max(8, 2 * c)
        jobs = [(elites[i % len(elites)], prompts[i % len(prompts)]) for i in range(n)]
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(max_workers=c) as pool:
            results = list(pool.map(lambda j: stream(url, *j), jobs))
        wall = time.time() - start
        latencies = [r[0] * 1000 for r in results]
        firsts = [r[1] * 1000 for r in results if r[1] is not None]
        tokens = sum(r[2] for r in results)
        done = sum(r[3] for r in results)
        ok &= done == n
        print(
            f"| {c} | {n} | {len(set(j[0] for j in jobs))} | {tokens / wall:.1f} "
            f"| {percentile(firsts, 0.5):.0f} / {percentile(firsts, 0.95):.0f} "
            f"| {percentile(latencies, 0.5):.0f} / {percentile(latencies, 0.95):.0f} "
            f"| {done} / {n} | {metric(url, 'swarm_elites_resident')} |"
        )
    return ok


def main(argv):
    if len(argv) >= 4 and argv[1] == "correctness":
        return 0 if correctness(argv[2], argv[3]) else 1
    if len(argv) >= 3 and argv[1] == "load":
        concurrencies = [int(c) for c in argv[3:]] or [1, 8, 32]
        return 0 if load(argv[2], concurrencies) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
