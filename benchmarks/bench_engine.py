"""The engine against mlx-lm on the same weights and prompts, in one process: our `generate`, mlx-lm's
`batch_generate` (continuous batching) and a loop of `mlx_lm.stream_generate` (one prompt at a time).

    python benchmarks/bench_engine.py                          # both workloads
    python benchmarks/bench_engine.py --workload judge --prompts 16 --loop-prompts 4

(a) judge: the holdout prompts (data/holdout.jsonl through the judge prompt; all share the system prompt and the
    template's opening), greedy, up to --max-tokens new tokens, natural EOS. Tokens are compared across runs.
(b) reasoning: --reasoning-prompts prompts with per-prompt budgets drawn from a lognormal (median
    --median-budget, sigma --sigma, at least --min-budget; seed 0), EOS ignored so every run generates the same
    tokens: the engine with static batching (a batch runs until its longest row), the engine with continuous
    batching, and batch_generate (per-prompt max_tokens; --skip-batch-generate leaves it out).
The judge workload also runs the engine without its shared-prefix cache and on mlx-lm's own blocks
(`fast_kernels=False`: MLX's attention and SiLU instead of `mlxhv.kernels`) to show what each part buys.
Precision: the float32 fast path on a CPU, the stored 4-bit weights on Metal / CUDA (`--precision`). Batch
--batch-size for every batched run (batch_generate: completion_batch_size; its prefill_batch_size stays at its
default 8, or the batch size if smaller). The mlx_lm loop runs on the first --loop-prompts prompts only (it is
the slowest by far) and is compared per prompt.

Prints a table per workload, then as its last line a JSON object: wall_s, prompt_tok_s, gen_tok_s,
peak_memory_gb per run, and the ratios (wall time of the slower ÷ wall time of the engine).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import mlxhv  # noqa: F401  (fast BLAS before mlx.core)
import mlx.core as mx
import numpy as np

from mlxhv import _blas
from mlxhv.data import load_examples
from mlxhv.engine import GenerationSettings, generate
from mlxhv.models import load
from mlxhv.prompts import load_system_prompt, render_prompt


def judge_prompts(tokenizer, path: str, n: int | None) -> list[list[int]]:
    examples = load_examples(path)
    system = load_system_prompt(None)
    prompts = [render_prompt(tokenizer, ex, system) for ex in examples]
    return prompts[:n] if n else prompts


def lognormal_budgets(n: int, median: int, sigma: float, lo: int, hi: int, seed: int = 0) -> list[int]:
    """n budgets round(median · exp(sigma · z)), z ~ N(0, 1), clipped to [lo, hi]."""
    z = np.random.default_rng(seed).standard_normal(n)
    return [int(b) for b in np.clip(np.round(median * np.exp(sigma * z)), lo, hi)]


def run_engine(model, tok, prompts, budgets, batch, ignore_eos, continuous=True, prefix_cache=True,
               fast_kernels=True) -> dict:
    s = GenerationSettings(max_tokens=budgets, batch_size=batch, ignore_eos=ignore_eos, continuous=continuous,
                           prefix_cache=prefix_cache, fast_kernels=fast_kernels)
    comps, st = generate(model, tok, prompts, s)
    return {"wall_s": st.wall_s, "prompt_tok_s": st.prompt_tps, "gen_tok_s": st.generation_tps,
            "peak_memory_gb": st.peak_memory_gb, "generation_tokens": st.generation_tokens,
            "prompt_tokens_run": st.prompt_tokens, "steps": st.steps, "tokens": [c.tokens for c in comps]}


class _NoEos:
    """Within the block the tokenizer has no EOS ids (mlx-lm then stops at max_tokens only)."""

    def __init__(self, tok, active: bool):
        self.tok, self.active = tok, active

    def __enter__(self):
        self.saved = self.tok.eos_token_ids
        if self.active:
            self.tok.eos_token_ids = set()

    def __exit__(self, *exc):
        self.tok.eos_token_ids = self.saved


def run_batch_generate(model, tok, prompts, budgets, batch, ignore_eos) -> dict:
    from mlx_lm import batch_generate

    mx.reset_peak_memory()
    t0 = time.perf_counter()
    with _NoEos(tok, ignore_eos):
        r = batch_generate(model, tok, prompts, max_tokens=list(budgets), return_token_ids=True,
                           completion_batch_size=batch, prefill_batch_size=min(8, batch))
    wall = time.perf_counter() - t0
    st = r.stats
    return {"wall_s": wall, "prompt_tok_s": st.prompt_tps, "gen_tok_s": st.generation_tps,
            "peak_memory_gb": mx.get_peak_memory() / 1e9, "generation_tokens": st.generation_tokens,
            "tokens": r.token_ids}


def run_loop(model, tok, prompts, budgets, ignore_eos) -> dict:
    import mlx_lm

    mx.reset_peak_memory()
    prompt_s = gen_s = 0.0
    n_prompt = n_gen = 0
    tokens = []
    t0 = time.perf_counter()
    with _NoEos(tok, ignore_eos):
        for ids, m in zip(prompts, budgets):
            out = []
            for r in mlx_lm.stream_generate(model, tok, ids, max_tokens=m):
                if r.finish_reason != "stop":
                    out.append(r.token)
            prompt_s += r.prompt_tokens / r.prompt_tps
            gen_s += r.generation_tokens / r.generation_tps if r.generation_tps else 0.0
            n_prompt += r.prompt_tokens
            n_gen += len(out)
            tokens.append(out)
    return {"wall_s": time.perf_counter() - t0, "prompt_tok_s": n_prompt / prompt_s, "gen_tok_s": n_gen / gen_s,
            "peak_memory_gb": mx.get_peak_memory() / 1e9, "generation_tokens": n_gen, "tokens": tokens}


def same(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b))


def table(title: str, runs: dict[str, dict]) -> None:
    print(f"\n{title}\n| run | prompts | wall s | prompt tok/s | gen tok/s | gen tokens | peak GB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        print(f"| {name} | {r['prompts']} | {r['wall_s']:.1f} | {r['prompt_tok_s']:.1f} | {r['gen_tok_s']:.1f} | "
              f"{r['generation_tokens']} | {r['peak_memory_gb']:.2f} |")


def judge_workload(model, tok, args) -> dict:
    prompts = judge_prompts(tok, args.data, args.prompts)
    budgets = [args.max_tokens] * len(prompts)
    lengths = [len(p) for p in prompts]
    print(f"(a) judge: {len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens (mean "
          f"{np.mean(lengths):.0f}), greedy, up to {args.max_tokens} new tokens, natural EOS", flush=True)
    runs = {}
    runs["engine"] = run_engine(model, tok, prompts, budgets, args.batch_size, False)
    print("  engine done", flush=True)
    runs["engine_no_prefix"] = run_engine(model, tok, prompts, budgets, args.batch_size, False, prefix_cache=False)
    print("  engine without the prefix cache done", flush=True)
    runs["engine_mlx_lm_blocks"] = run_engine(model, tok, prompts, budgets, args.batch_size, False, fast_kernels=False)
    print("  engine on mlx-lm's blocks (fast_kernels=False) done", flush=True)
    runs["mlx_lm_batch_generate"] = run_batch_generate(model, tok, prompts, budgets, args.batch_size, False)
    print("  batch_generate done", flush=True)
    n_loop = min(args.loop_prompts, len(prompts))
    if n_loop:
        runs["mlx_lm_generate_loop"] = run_loop(model, tok, prompts[:n_loop], budgets[:n_loop], False)
        print("  mlx_lm loop done", flush=True)
    for name, r in runs.items():
        r["prompts"] = len(r["tokens"])
    table("(a) judge workload", runs)
    eng = runs["engine"]
    out = {"prompts": len(prompts), "mean_prompt_tokens": round(float(np.mean(lengths)), 1),
           "max_tokens": args.max_tokens, "prefix_tokens": _prefix(prompts),
           "same_tokens_vs_batch_generate": same(eng["tokens"], runs["mlx_lm_batch_generate"]["tokens"]),
           "same_tokens_no_prefix": same(eng["tokens"], runs["engine_no_prefix"]["tokens"]),
           "same_tokens_mlx_lm_blocks": same(eng["tokens"], runs["engine_mlx_lm_blocks"]["tokens"]),
           "x_fast_kernels": runs["engine_mlx_lm_blocks"]["wall_s"] / eng["wall_s"],
           "x_vs_batch_generate": runs["mlx_lm_batch_generate"]["wall_s"] / eng["wall_s"],
           "x_prefix_cache": runs["engine_no_prefix"]["wall_s"] / eng["wall_s"]}
    if n_loop:
        loop = runs["mlx_lm_generate_loop"]
        out["same_tokens_vs_loop"] = same(eng["tokens"][:n_loop], loop["tokens"])
        out["x_vs_loop_per_prompt"] = (loop["wall_s"] / n_loop) / (eng["wall_s"] / len(prompts))
    print(f"engine vs batch_generate: {out['x_vs_batch_generate']:.2f}x wall; tokens identical "
          f"{out['same_tokens_vs_batch_generate']}/{len(prompts)}")
    out["runs"] = runs
    return out


def _prefix(prompts) -> int:
    from mlxhv.engine import common_prefix_length

    return common_prefix_length(prompts)


def reasoning_workload(model, tok, args) -> dict:
    prompts = judge_prompts(tok, args.data, args.reasoning_prompts)
    budgets = lognormal_budgets(len(prompts), args.median_budget, args.sigma, args.min_budget, args.max_budget)
    print(f"(b) reasoning-like: {len(prompts)} prompts, budgets {min(budgets)}-{max(budgets)} (median "
          f"{int(np.median(budgets))}, total {sum(budgets)}), EOS ignored, batch {args.batch_size}", flush=True)
    runs = {}
    runs["engine_static"] = run_engine(model, tok, prompts, budgets, args.batch_size, True, continuous=False)
    print("  static done", flush=True)
    runs["engine_continuous"] = run_engine(model, tok, prompts, budgets, args.batch_size, True)
    print("  continuous done", flush=True)
    if not args.skip_batch_generate:
        runs["mlx_lm_batch_generate"] = run_batch_generate(model, tok, prompts, budgets, args.batch_size, True)
        print("  batch_generate done", flush=True)
    for name, r in runs.items():
        r["prompts"] = len(r["tokens"])
        assert [len(t) for t in r["tokens"]] == budgets, name
    table("(b) reasoning-like workload", runs)
    cont, static = runs["engine_continuous"], runs["engine_static"]
    ideal = sum(budgets) / args.batch_size  # decode steps with every slot always busy
    bg = runs.get("mlx_lm_batch_generate")
    out = {"prompts": len(prompts), "budgets": budgets, "batch_size": args.batch_size,
           "x_continuous_vs_static": static["wall_s"] / cont["wall_s"],
           "x_continuous_vs_batch_generate": bg["wall_s"] / cont["wall_s"] if bg else None,
           "steps_static": static["steps"], "steps_continuous": cont["steps"], "steps_ideal": round(ideal, 1),
           "straggler_cost_static": static["steps"] / ideal, "straggler_cost_continuous": cont["steps"] / ideal,
           "same_tokens_static_continuous": same(static["tokens"], cont["tokens"])}
    vs_bg = f"{out['x_continuous_vs_batch_generate']:.2f}x" if bg else "not run"
    print(f"continuous vs static: {out['x_continuous_vs_static']:.2f}x wall; vs batch_generate {vs_bg}; decode "
          f"steps static {static['steps']}, continuous {cont['steps']}, ideal {ideal:.0f}")
    out["runs"] = runs
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--data", default="data/holdout.jsonl")
    ap.add_argument("--workload", choices=["judge", "reasoning", "both"], default="both")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=0, help="judge prompts (0: all)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--loop-prompts", type=int, default=16, help="prompts for the mlx_lm.generate loop (0: skip)")
    ap.add_argument("--reasoning-prompts", type=int, default=32)
    ap.add_argument("--median-budget", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--min-budget", type=int, default=4)
    ap.add_argument("--max-budget", type=int, default=1024)
    ap.add_argument("--skip-batch-generate", action="store_true", help="(b): only static vs continuous")
    args = ap.parse_args()

    t_start = time.perf_counter()
    model, tok = load(args.model, precision=args.precision)
    info = getattr(model, "mlxhv_info", {})
    print(f"{args.model} ({info.get('precision', '?')}), {platform.machine()}, {mx.default_device()}, BLAS "
          f"{'OpenBLAS' if _blas.status().active else 'reference'} threads {_blas.get_threads()}", flush=True)
    warm = judge_prompts(tok, args.data, 2)
    generate(model, tok, warm, GenerationSettings(max_tokens=2))  # first calls at new shapes
    out = {"settings": {**vars(args), "precision_loaded": info.get("precision"), "device": str(mx.default_device())}}
    if args.workload in ("judge", "both"):
        out["judge"] = judge_workload(model, tok, args)
    if args.workload in ("reasoning", "both"):
        out["reasoning"] = reasoning_workload(model, tok, args)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    for w in ("judge", "reasoning"):
        for r in out.get(w, {}).get("runs", {}).values():
            r.pop("tokens")
    print(json.dumps(_rounded(out)))


def _rounded(x):
    if isinstance(x, float):
        return round(x, 3)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


if __name__ == "__main__":
    main()
