"""Requests/s and latency of `mlxhv serve` for 1 vs 8 concurrent clients, over 127.0.0.1.

    python benchmarks/bench_serve.py [--model smollm2-135m] [--adapter DIR] [--data data/holdout.jsonl]
                                     [-n 16] [--clients 8] [--max-tokens 8] [--answer-prefix json]

One server (the real HTTP server and batcher, in this process) and the real `openai` client. Each setting sends
the same `n` requests (the first `n` examples of the data file, a bounded loop): 1 client sends them one after
another; `--clients` clients send them concurrently, so the server batches them (up to `--max-batch` per engine
call). A warm-up request runs first. Latency is per request, as its client sees it (send to parsed reply).
Prints a markdown table, then, as the last line, a JSON object with both settings and the `ratio` of requests/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import time


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) with linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def run_setting(client, contents: list[str], clients: int, max_tokens: int) -> dict:
    def one(content):
        t = time.perf_counter()
        r = client.chat.completions.create(model="judge", messages=[{"role": "user", "content": content}],
                                           max_tokens=max_tokens)
        return time.perf_counter() - t, r.model_extra["prediction"]["decision"]

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, contents))
    wall = time.perf_counter() - t0
    lat = [x for x, _ in results]
    return {"clients": clients, "requests": len(contents), "wall_s": round(wall, 2),
            "requests_per_s": round(len(contents) / wall, 4), "p50_s": round(statistics.median(lat), 2),
            "p95_s": round(percentile(lat, 0.95), 2), "decisions": [d for _, d in results]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--data", default="data/holdout.jsonl")
    ap.add_argument("-n", "--requests", type=int, default=16)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--answer-prefix", default="json", help='"json" unless the adapter records its own')
    args = ap.parse_args(argv)

    import openai

    from mlxhv.data import load_examples
    from mlxhv.judge import Judge
    from mlxhv.serve import ServeSettings, serving

    examples = load_examples(args.data)[:args.requests]
    contents = [json.dumps({"hypothesis": e.hypothesis, "evidence": [v.model_dump() for v in e.evidence]})
                for e in examples]
    prefix = None if args.adapter else args.answer_prefix
    judge = Judge.load(args.model, adapter=args.adapter, precision=args.precision, answer_prefix=prefix)
    with serving(judge, ServeSettings(port=0, max_batch=args.max_batch)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=3600)
        run_setting(client, contents[:1], 1, args.max_tokens)  # warm-up
        single = run_setting(client, contents, 1, args.max_tokens)
        start = len(server.batcher.batches)
        many = run_setting(client, contents, args.clients, args.max_tokens)
        many["engine_batches"] = server.batcher.batches[start:]
    same = sum(a == b for a, b in zip(single["decisions"], many["decisions"]))
    ratio = many["requests_per_s"] / single["requests_per_s"]
    print("| clients | requests | wall s | requests/s | p50 latency s | p95 latency s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in (single, many):
        print(f"| {r['clients']} | {r['requests']} | {r['wall_s']} | {r['requests_per_s']} | {r['p50_s']} | "
              f"{r['p95_s']} |")
    print(f"\n{args.clients} clients vs 1: {ratio:.2f}x requests/s; engine batches {many['engine_batches']}; "
          f"same decision {same}/{len(contents)}; model {args.model}, max_tokens {args.max_tokens}")
    for r in (single, many):
        del r["decisions"]
    print(json.dumps({"model": args.model, "max_tokens": args.max_tokens, "single": single, "concurrent": many,
                      "ratio": round(ratio, 3), "same_decisions": same}))


if __name__ == "__main__":
    main()
