"""Requests/s of `mlxhv serve` and of `mlx_lm.server` side by side, at 1, 4 and 16 concurrent clients, on the
same float32 weights and the same judge prompts, over 127.0.0.1.

    python benchmarks/bench_serve.py [--model smollm2-135m] [--data data/holdout.jsonl] [-n 32]
                                     [--clients 1,4,16] [--max-tokens 8] [--max-batch 16] [--skip-mlx-lm]

The script writes a float32 copy of the model (`mlx_lm convert -d --dtype float32`, once, into --workdir) and
starts both servers on it as processes, each importing mlxhv first so both use the same BLAS (mlxhv._blas):
`mlxhv serve --model DIR` and `mlx_lm.server --model DIR --decode-concurrency B --prompt-concurrency B`.
mlxhv gets each example as the chat message it expects; mlx_lm.server gets the very prompt mlxhv renders (chat
template, system prompt, answer prefix), decoded to text, on /v1/completions. Both decode greedily with the same
max_tokens. For each client count the same `n` requests (the first n examples) are sent by that many threads
using the `openai` client, after one warm-up request. Latency is per request, send to parsed reply.
Prints a markdown table, then, as the last line, a JSON object with every run and the ratios.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlxhv  # noqa: F401  (before mlx: this process tokenizes only, but keeps the BLAS warning away)

ROOT = Path(__file__).resolve().parents[1]
MLXHV_LAUNCH = "import mlxhv\nfrom mlxhv.cli import main\nmain()"
MLX_LM_LAUNCH = "import mlxhv\nimport sys\nsys.argv[0] = 'mlx_lm.server'\nfrom mlx_lm.server import main\nmain()"


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) with linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def float32_dir(model: str, workdir: Path) -> Path:
    """An mlx-lm directory of `model` in float32 (converted once)."""
    from mlxhv.models import resolve
    from mlxhv.models.loader import ensure_converted

    out = workdir / "float32"
    if not (out / "config.json").exists():
        res = resolve(model)
        src = res.path if res.path is not None else ensure_converted(res.gguf)
        subprocess.run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(src), "--mlx-path", str(out),
                        "-d", "--dtype", "float32"], check=True, stdout=subprocess.DEVNULL)
    return out


def start(code: str, args: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); see {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server did not start; see {log}")


def run_setting(one, items: list, clients: int) -> dict:
    def timed(item):
        t = time.perf_counter()
        one(item)
        return time.perf_counter() - t

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        lat = list(pool.map(timed, items))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(items), "wall_s": round(wall, 2),
            "requests_per_s": round(len(items) / wall, 4), "p50_s": round(statistics.median(lat), 2),
            "p95_s": round(percentile(lat, 0.95), 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="data/holdout.jsonl")
    ap.add_argument("-n", "--requests", type=int, default=32)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--workdir", default="runs/bench_serve")
    ap.add_argument("--skip-mlx-lm", action="store_true")
    ap.add_argument("--no-fast-kernels", action="store_true", help="mlxhv serve on mlx-lm's blocks")
    args = ap.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    workdir = ROOT / args.workdir
    workdir.mkdir(parents=True, exist_ok=True)

    import openai
    from mlx_lm.utils import load_tokenizer

    from mlxhv.data import load_examples
    from mlxhv.prompts import JSON_ANSWER_PREFIX, SYSTEM_PROMPT, render_prompt

    model_dir = float32_dir(args.model, workdir)
    tok = load_tokenizer(model_dir)
    examples = load_examples(ROOT / args.data)[:args.requests]
    contents = [json.dumps({"hypothesis": e.hypothesis, "evidence": [v.model_dump() for v in e.evidence]})
                for e in examples]
    texts = [tok.decode(render_prompt(tok, e, SYSTEM_PROMPT, JSON_ANSWER_PREFIX)) for e in examples]

    results: dict[str, list[dict]] = {}
    port = free_port()
    proc = start(MLXHV_LAUNCH, ["serve", "--model", str(model_dir), "--port", str(port), "--answer-prefix", "json",
                                "--max-batch", str(args.max_batch), "--max-tokens", str(args.max_tokens),
                                "--max-queue", str(max(64, args.requests)), "--log-level", "WARNING",
                                *(["--no-fast-kernels"] if args.no_fast_kernels else [])],
                 port, workdir / "mlxhv.log")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=3600)

        def ask_mlxhv(content):
            client.chat.completions.create(model="judge", messages=[{"role": "user", "content": content}],
                                           max_tokens=args.max_tokens, temperature=0)

        ask_mlxhv(contents[0])
        results["mlxhv serve"] = [run_setting(ask_mlxhv, contents, c) for c in clients]
    finally:
        proc.terminate()
        proc.wait(120)
    if not args.skip_mlx_lm:
        port = free_port()
        proc = start(MLX_LM_LAUNCH, ["--model", str(model_dir), "--port", str(port), "--decode-concurrency",
                                     str(args.max_batch), "--prompt-concurrency", str(args.max_batch),
                                     "--log-level", "WARNING"], port, workdir / "mlx_lm.log")
        try:
            client2 = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=3600)

            def ask_mlx_lm(text):
                client2.completions.create(model=str(model_dir), prompt=text, max_tokens=args.max_tokens,
                                           temperature=0)

            ask_mlx_lm(texts[0])
            results["mlx_lm.server"] = [run_setting(ask_mlx_lm, texts, c) for c in clients]
        finally:
            proc.terminate()
            proc.wait(120)

    print("| server | clients | requests | wall s | requests/s | p50 latency s | p95 latency s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        for r in runs:
            print(f"| {name} | {r['clients']} | {r['requests']} | {r['wall_s']} | {r['requests_per_s']} | "
                  f"{r['p50_s']} | {r['p95_s']} |")
    ours = {r["clients"]: r["requests_per_s"] for r in results["mlxhv serve"]}
    ratios = {f"mlxhv_{c}_vs_1": round(ours[c] / ours[clients[0]], 3) for c in clients}
    if "mlx_lm.server" in results:
        theirs = {r["clients"]: r["requests_per_s"] for r in results["mlx_lm.server"]}
        ratios.update({f"vs_mlx_lm_at_{c}": round(ours[c] / theirs[c], 3) for c in clients})
    print("\n" + ", ".join(f"{k} {v}x" for k, v in ratios.items()) +
          f"; model {args.model} float32, max_tokens {args.max_tokens}, max_batch {args.max_batch}")
    print(json.dumps({"model": args.model, "max_tokens": args.max_tokens, "fast_kernels": not args.no_fast_kernels,
                      "runs": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
