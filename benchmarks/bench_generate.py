"""Generation throughput: a loop of mlx_lm.generate (4-bit) vs our batched engine (4-bit, then the float32
CPU fast path), and the fast path at larger batches.

    python benchmarks/bench_generate.py                       # 16 prompts of ~150 tokens, 48 new tokens
    python benchmarks/bench_generate.py --prompts 32 --max-tokens 128

Every run generates exactly --max-tokens tokens per prompt (EOS ignored), so wall times compare like for like.
The 4-bit engine run uses only the first --quantized-prompts (2) prompts by default: on a CPU MLX's 4-bit matmul
costs the same per token at any batch size (one core, no BLAS), so the full set would only add ~6 minutes.
Prints a table, then as its last line a JSON object: prompt_tok_s, gen_tok_s, wall_s per run and
speedup_vs_mlx_lm = wall(mlx_lm loop) / wall(fast-path engine) on the same prompts and new tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import mlxhv  # noqa: F401  (fast BLAS before mlx.core)
import mlx.core as mx

from mlxhv import _blas
from mlxhv.data import synth_examples
from mlxhv.engine import GenerationSettings, generate
from mlxhv.models import apply_chat_template, load


def make_prompts(tokenizer, n: int, target: int) -> list[list[int]]:
    """n chat prompts of about `target` tokens (target ± 16, mean target) built from synthetic examples."""
    examples = synth_examples(max(n, 8), seed=0)
    probe = [apply_chat_template(tokenizer, [{"role": "user", "content": c}]) for c in ("x", "y z")]
    tail = 0
    while probe[0][-1 - tail] == probe[1][-1 - tail]:
        tail += 1  # the template's closing tokens (end of user turn + assistant header)
    prompts = []
    for i in range(n):
        length = target + (i % 5 - 2) * 8
        parts, j = [], i
        while True:
            ex = examples[j % len(examples)]
            parts.append(f"Hypothesis: {ex.hypothesis}\n" + "\n".join(
                f"- {e.source} (relevance {e.relevance}): {e.content}" for e in ex.evidence))
            text = "\n\n".join(parts) + "\n\nDecide VALIDATED, REJECTED or REFINED for the first hypothesis " \
                                        "and give a confidence between 0 and 1."
            ids = apply_chat_template(tokenizer, [{"role": "user", "content": text}])
            if len(ids) >= length:
                break
            j += 1
        prompts.append(ids[:length - tail] + ids[-tail:])
    return prompts


def run_mlx_lm(model, tokenizer, prompts, max_tokens) -> dict:
    """mlx_lm.generate's loop (stream_generate), one prompt at a time, EOS ignored."""
    import mlx_lm

    eos = tokenizer.eos_token_ids
    tokenizer.eos_token_ids = set()
    mx.reset_peak_memory()
    prompt_s = gen_s = 0.0
    n_prompt = n_gen = 0
    wall = time.perf_counter()
    try:
        for ids in prompts:
            for r in mlx_lm.stream_generate(model, tokenizer, ids, max_tokens=max_tokens):
                pass
            prompt_s += r.prompt_tokens / r.prompt_tps
            gen_s += r.generation_tokens / r.generation_tps
            n_prompt += r.prompt_tokens
            n_gen += r.generation_tokens
    finally:
        tokenizer.eos_token_ids = eos
    return {"prompts": len(prompts), "batch": 1, "prompt_tok_s": n_prompt / prompt_s, "gen_tok_s": n_gen / gen_s,
            "wall_s": time.perf_counter() - wall, "generation_tokens": n_gen,
            "peak_memory_gb": mx.get_peak_memory() / 1e9}


def run_engine(model, tokenizer, prompts, max_tokens, batch, threads) -> dict:
    s = GenerationSettings(max_tokens=max_tokens, batch_size=batch, ignore_eos=True, prefill_threads=threads,
                           decode_threads=threads)
    comps, st = generate(model, tokenizer, prompts, s)
    assert all(len(c.tokens) == max_tokens for c in comps)
    return {"prompts": len(prompts), "batch": batch, "prompt_tok_s": st.prompt_tps, "gen_tok_s": st.generation_tps,
            "wall_s": st.wall_s, "generation_tokens": st.generation_tokens, "peak_memory_gb": st.peak_memory_gb}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--prompt-tokens", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--scale-batches", default="32,64", help="fast path at these batch sizes (prompts repeated)")
    ap.add_argument("--quantized-prompts", type=int, default=2, help="prompts for the 4-bit engine run (0: all)")
    ap.add_argument("--threads", type=int, default=1, help="OpenBLAS threads for the fast path")
    ap.add_argument("--skip-mlx-lm", action="store_true", help="skip the slow mlx_lm loop (no speedup then)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    qmodel, tok = load(args.model, precision="quantized")
    fmodel, _ = load(args.model, precision="float32")
    prompts = make_prompts(tok, args.prompts, args.prompt_tokens)
    lengths = [len(p) for p in prompts]
    print(f"{args.model}: {len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens "
          f"(mean {sum(lengths) / len(lengths):.0f}), {args.max_tokens} new tokens each; "
          f"BLAS {'OpenBLAS' if _blas.status().active else 'reference'} "
          f"({_blas.measure_gflops(512):.0f} GFLOP/s at 512²), {platform.machine()}, {mx.default_device()}",
          flush=True)
    for m in (qmodel, fmodel):  # warm-up: first calls at new shapes
        generate(m, tok, [prompts[0][:16]], GenerationSettings(max_tokens=2))

    runs: dict[str, dict] = {}
    if not args.skip_mlx_lm:
        runs["mlx_lm_quantized"] = run_mlx_lm(qmodel, tok, prompts, args.max_tokens)
        print("  mlx_lm loop done", flush=True)
    nq = args.quantized_prompts or len(prompts)
    runs["engine_quantized"] = run_engine(qmodel, tok, prompts[:nq], args.max_tokens, args.batch_size, None)
    print("  engine quantized done", flush=True)
    runs["engine_fast"] = run_engine(fmodel, tok, prompts, args.max_tokens, args.batch_size, args.threads)
    for b in [int(x) for x in args.scale_batches.split(",") if x]:
        reps = (prompts * (b // len(prompts) + 1))[:b]
        runs[f"engine_fast_b{b}"] = run_engine(fmodel, tok, reps, args.max_tokens, b, args.threads)

    base = runs.get("mlx_lm_quantized")
    per_prompt = base["wall_s"] / base["prompts"] if base else None
    print("\n| run | prompts | batch | prompt tok/s | gen tok/s | wall s | peak GB | × mlx_lm (wall per prompt) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        x = f"{per_prompt / (r['wall_s'] / r['prompts']):.1f}" if per_prompt else "–"
        print(f"| {name} | {r['prompts']} | {r['batch']} | {r['prompt_tok_s']:.1f} | {r['gen_tok_s']:.1f} | "
              f"{r['wall_s']:.1f} | {r['peak_memory_gb']:.2f} | {x} |")
    speedup = base["wall_s"] / runs["engine_fast"]["wall_s"] if base else None
    print(f"\nspeedup_vs_mlx_lm (same {len(prompts)} prompts, {args.max_tokens} new tokens): "
          f"{speedup:.1f}×" if speedup else "\nspeedup_vs_mlx_lm: not measured (--skip-mlx-lm)")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    out = {name: {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for name, r in runs.items()}
    out["speedup_vs_mlx_lm"] = round(speedup, 2) if speedup else None
    out["settings"] = {"model": args.model, "prompts": len(prompts), "max_tokens": args.max_tokens,
                       "mean_prompt_tokens": round(sum(lengths) / len(lengths), 1), "threads": args.threads}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
