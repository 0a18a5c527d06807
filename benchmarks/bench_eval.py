"""The same examples evaluated one at a time vs batched, through `mlxhv.eval.evaluate`.

    python benchmarks/bench_eval.py [--model smollm2-135m] [--data data/holdout.jsonl] [-n 16] [--batch-size 16]
                                    [--max-tokens 64]

One-at-a-time is a plain loop, `for prompt in prompts: generate(model, tokenizer, [prompt], ...)`: one engine call per
example, so nothing is batched or shared between examples. Batched is one engine call over all examples with
`--batch-size` (continuous batching, the judge prompts' shared prefix prefilled once); same prompts, same greedy
settings. A warm-up generation runs first so neither
side pays the first-call cost. Prints a markdown table, then, as the last line, a JSON object with
`examples_per_s` for each mode and `speedup`.
"""

from __future__ import annotations

import argparse
import json
import time

from mlxhv.data import load_examples
from mlxhv.eval import EvalSettings, evaluate
from mlxhv.eval.evaluator import subset


def one_at_a_time(model, tokenizer, prompts, settings, progress=False, on_batch=None):
    """`mlxhv.engine.generate`'s signature, run as a plain loop: one call (batch size 1) per prompt."""
    import dataclasses

    from mlxhv.engine import GenerationStats, generate

    total, comps = GenerationStats(batch_size=1), []
    for i, prompt in enumerate(prompts):
        (c,), st = generate(model, tokenizer, [prompt], dataclasses.replace(settings, batch_size=1))
        comps.append(c)
        if on_batch is not None:
            on_batch([i], [c])
        for k in ("prompt_tokens", "cached_prompt_tokens", "generation_tokens", "prompt_s", "generation_s", "wall_s",
                  "batches", "steps"):
            setattr(total, k, getattr(total, k) + getattr(st, k))
        total.peak_memory_gb = max(total.peak_memory_gb, st.peak_memory_gb)
    total.prompt_tps = total.prompt_tokens / total.prompt_s if total.prompt_s else 0.0
    total.generation_tps = total.generation_tokens / total.generation_s if total.generation_s else 0.0
    return comps, total


def run_mode(model, tokenizer, examples, settings: EvalSettings, generate_fn=None) -> dict:
    t0 = time.perf_counter()
    run = evaluate(model, tokenizer, examples, settings, generate_fn=generate_fn)
    wall = time.perf_counter() - t0
    m = run.metrics
    return {
        "batch_size": settings.batch_size,
        "wall_s": wall,
        "examples_per_s": len(examples) / wall,
        "prompt_tps": m["prompt_tps"],
        "generation_tps": m["generation_tps"],
        "generation_tokens": sum(p.completion_tokens for p in run.predictions),
        "peak_memory_gb": m["peak_memory_gb"],
        "accuracy": m["accuracy"],
        "decisions": [str(getattr(p.decision, "value", p.decision)) for p in run.predictions],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--data", default="data/holdout.jsonl")
    ap.add_argument("-n", "--examples", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args(argv)

    from mlxhv.engine import GenerationSettings, generate
    from mlxhv.models import load

    examples = subset(load_examples(args.data), args.examples)
    model, tokenizer = load(args.model, precision=args.precision)
    generate(model, tokenizer, ["Hello"], GenerationSettings(max_tokens=4, batch_size=1))  # warm-up

    common = dict(model=args.model, precision=args.precision, max_tokens=args.max_tokens, temperature=0.0,
                  top_p=1.0, progress=False)
    one = run_mode(model, tokenizer, examples, EvalSettings(batch_size=1, **common), generate_fn=one_at_a_time)
    batched = run_mode(model, tokenizer, examples, EvalSettings(batch_size=args.batch_size, **common))
    agree = sum(a == b for a, b in zip(one["decisions"], batched["decisions"])) / len(examples)

    def fmt(v, d=2):
        return "–" if v is None else f"{v:.{d}f}"

    print(f"{len(examples)} examples of {args.data}, model {args.model}, max_tokens {args.max_tokens}, greedy")
    print("| mode | batch | wall s | examples/s | prompt tok/s | generation tok/s | gen tokens | peak GB | accuracy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in (("one at a time", one), ("batched", batched)):
        print(f"| {name} | {r['batch_size']} | {r['wall_s']:.1f} | {r['examples_per_s']:.3f} | "
              f"{fmt(r['prompt_tps'], 1)} | {fmt(r['generation_tps'], 1)} | {r['generation_tokens']} | "
              f"{fmt(r['peak_memory_gb'])} | {100 * r['accuracy']:.1f}% |")
    print(f"speedup {batched['examples_per_s'] / one['examples_per_s']:.2f}x; decisions agree on {100 * agree:.0f}% "
          "of examples (batched greedy decoding differs from single-stream only by float rounding)")
    print(json.dumps({
        "examples": len(examples), "max_tokens": args.max_tokens, "batch_size": args.batch_size,
        "one_at_a_time": {k: one[k] for k in ("examples_per_s", "wall_s", "prompt_tps", "generation_tps")},
        "batched": {k: batched[k] for k in ("examples_per_s", "wall_s", "prompt_tps", "generation_tps")},
        "speedup": batched["examples_per_s"] / one["examples_per_s"],
        "decision_agreement": agree,
    }))


if __name__ == "__main__":
    main()
