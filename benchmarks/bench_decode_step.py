"""What one decode step of the engine costs, by live rows and context length: the cost model behind continuous
batching's gain on this machine.

    python benchmarks/bench_decode_step.py [--rows 1 4 8 16] [--contexts 64 300 600] [--prefix 205] [--steps 8]

Each row holds `context` positions; with --prefix P > 0 the first P are the same for every row (the judge prompts'
system prompt and template opening), and the step runs twice, side by side: with every row holding a copy of
the prefix (mlx-lm's layout) and with the prefix held once (`kernels.SharedPrefixCache`, what the engine does).
A step is `forward_last` + the engine's `sample` (greedy, with log-probs), timed over --steps steps after a
warm-up, the two layouts interleaved --repeats times (the median is reported).

A step costs about F + r(context) per live row: F is reading the weights (the same for 1 or 16 rows), r mostly
reading the row's keys and values. Continuous batching saves steps (F each) but not row-steps (r each), so on a
machine where r * rows is comparable to F it gains less than the step counts suggest. Prints a table and, as the
last line, JSON with ms per step for every (rows, context, layout) and the fitted F and r.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import mlxhv  # noqa: F401  (fast BLAS before mlx.core)
import mlx.core as mx
import numpy as np

from mlxhv import _blas, engine
from mlxhv.models import load


def step_ms(model, cache, rows: int, steps: int) -> float:
    s = engine.GenerationSettings()
    y = mx.zeros((rows,), dtype=mx.int32)
    mx.eval(engine.sample(engine.forward_last(model, y[:, None], cache), s, None))
    tic = time.perf_counter()
    for _ in range(steps):
        tok, lp = engine.sample(engine.forward_last(model, y[:, None], cache), s, None)
        mx.eval(tok, lp)
    return (time.perf_counter() - tic) / steps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--contexts", type=int, nargs="+", default=[300, 600])
    ap.add_argument("--prefix", type=int, default=205)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model, _ = load(args.model)
    print(f"{args.model}, {mx.default_device()}, BLAS threads {_blas.get_threads()}, prefix {args.prefix}", flush=True)
    P = args.prefix
    prefix = engine.prefill_prefix(model, list(range(5, 5 + P))) if P else None
    results = []
    for ctx in args.contexts:
        if ctx <= P:
            raise SystemExit(f"--contexts {ctx}: must exceed --prefix {P}")
        row = engine.prefill_row(model, list(range(300, 300 + ctx - P)), prefix)
        for rows in args.rows:
            layouts = {"copies": lambda: engine.merge_rows([row] * rows)}
            if P:
                layouts["shared"] = lambda: engine.split_prefix(prefix, engine.merge_rows([row] * rows, skip=P))
            times = {k: [] for k in layouts}
            for _ in range(args.repeats):
                for name, make in layouts.items():
                    times[name].append(step_ms(model, make(), rows, args.steps))
            for name in layouts:
                results.append({"rows": rows, "context": ctx, "layout": name,
                                "ms_per_step": statistics.median(times[name])})
            print("  " + ", ".join(f"{r['layout']} {r['ms_per_step']:.0f} ms" for r in results[-len(layouts):])
                  + f"  (rows {rows}, context {ctx})", flush=True)

    print("\n| rows | context | layout | ms / step | ms / row |\n| ---: | ---: | --- | ---: | ---: |")
    for r in results:
        print(f"| {r['rows']} | {r['context']} | {r['layout']} | {r['ms_per_step']:.1f} | "
              f"{r['ms_per_step'] / r['rows']:.1f} |")
    fits = {}
    for layout in sorted({r["layout"] for r in results}):
        for ctx in args.contexts:
            pts = [(r["rows"], r["ms_per_step"]) for r in results if r["layout"] == layout and r["context"] == ctx]
            if len(pts) >= 2:
                r_, F = np.polyfit(*zip(*pts), 1)
                fits[f"{layout}@{ctx}"] = {"F_ms": round(float(F), 1), "r_ms_per_row": round(float(r_), 2)}
    for k, v in fits.items():
        print(f"{k}: step ~ {v['F_ms']:.0f} ms + {v['r_ms_per_row']:.1f} ms per live row")
    print(json.dumps({"settings": vars(args), "steps": results, "fit": fits}))


if __name__ == "__main__":
    main()
