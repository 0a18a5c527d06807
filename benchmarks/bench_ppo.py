"""One PPO iteration, split into rollout / reference / update, on the quantised and the fast-path base.

    python benchmarks/bench_ppo.py                     # 2 prompts x 2 samples, ~100-token prompts, 16 new tokens
    python benchmarks/bench_ppo.py --prompts 8 --samples 2 --max-tokens 48 --skip-quantized
    python benchmarks/bench_ppo.py --judge --prompts 2 --samples 8 --num-layers 8 --rows --skip-quantized

rollout = sampling k answers per prompt through the batched engine; reference = the no-grad forwards for old
log-probs/values (LoRA on) and reference log-probs (LoRA off); update = the PPO epochs (forward + backward +
AdamW). Both runs use the same prompts, seeds and settings. `--rows` adds a fast-path run that feeds whole rows
(prompt + answer, `share_prompts=False`) instead of running each prompt once for its k answers with the frozen
trunk cached (rl/prefix.py). `--judge` uses the real judge prompts (compact system prompt, answer prefix).
Prints a table, then as its last line a JSON object with the figures of each run, `update_speedup` = update
time quantised / update time fast path, and `sharing_speedup` = wall time whole rows / shared prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import mlxhv  # noqa: F401  (fast BLAS before mlx.core)
import mlx.core as mx

from mlxhv import _blas
from mlxhv.data import synth_examples
from mlxhv.models import apply_chat_template, load
from mlxhv.rl.lora import LoRASettings
from mlxhv.rl.trainer import RLSettings, init_state, rl_iteration

INSTRUCTION = ("Is this hypothesis VALIDATED, REJECTED or REFINED by the evidence? Answer with JSON "
               '{"decision": ..., "confidence": ...}.')


def make_prompts(tokenizer, n: int, judge: bool = False) -> list[list[int]]:
    exs = synth_examples(n, seed=0, levels=(1,))
    if judge:
        from mlxhv.prompts import JSON_ANSWER_PREFIX, load_system_prompt, render_prompt

        system = load_system_prompt("configs/prompts/compact.txt")
        return [render_prompt(tokenizer, e, system, answer_prefix=JSON_ANSWER_PREFIX) for e in exs]
    msgs = [f"{INSTRUCTION}\nHypothesis: {e.hypothesis}\nEvidence: {e.evidence[0].content}" for e in exs]
    return [apply_chat_template(tokenizer, [{"role": "user", "content": m}]) for m in msgs]


def score(_, completion):
    # any deterministic number: only time is measured here
    return SimpleNamespace(reward=float(len(completion.tokens) % 3) / 2)


def run(precision: str, args, share: bool = True) -> dict:
    model, tokenizer = load(args.model, precision=precision)
    s = RLSettings(prompts_per_step=args.prompts, samples_per_prompt=args.samples, max_new_tokens=args.max_tokens,
                    temperature=1.0, ppo_epochs=args.epochs, minibatch_size=max(args.minibatch, args.samples) if share else args.minibatch, seed=0,
                    lora=LoRASettings(rank=8, alpha=16, num_layers=args.num_layers), share_prompts=share)
    state = init_state(model, tokenizer, s)
    prompts = make_prompts(tokenizer, args.prompts, args.judge)
    mx.reset_peak_memory()
    t = time.perf_counter()
    m, _ = rl_iteration(state, prompts, score, step=1)
    wall = time.perf_counter() - t
    seq_tokens = sum(len(p) for p in prompts) * args.samples + m["response_length"] * args.prompts * args.samples
    return {"precision": precision if share else f"{precision}-rows", "wall_s": wall, "rollout_s": m["rollout_s"],
            "reference_s": m["reference_s"], "update_s": m["update_s"], "rollout_gen_tok_s": m["rollout_gen_tok_s"],
            "rollout_prompt_tok_s": m["rollout_prompt_tok_s"],
            "reference_tok_s": 2 * seq_tokens / max(m["reference_s"], 1e-9),
            "update_tok_s": args.epochs * seq_tokens / max(m["update_s"], 1e-9),
            "peak_memory_gb": mx.get_peak_memory() / 1e9, "sequences": args.prompts * args.samples,
            "tokens_per_sequence": seq_tokens / (args.prompts * args.samples)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--minibatch", type=int, default=4)
    ap.add_argument("--num-layers", type=int, default=-1, help="LoRA on the last N blocks (-1: all)")
    ap.add_argument("--judge", action="store_true", help="real judge prompts (~340 tokens) instead of ~110")
    ap.add_argument("--rows", action="store_true", help="also time whole rows on the fast path")
    ap.add_argument("--skip-quantized", action="store_true", help="the 4-bit CPU run is ~10x slower")
    args = ap.parse_args()

    blas = _blas.status()
    print(f"BLAS: {blas.library} ({blas.reason}); device: {mx.default_device()}")
    results = [run("float32", args)]
    if args.rows:
        results.append(run("float32", args, share=False))
    if not args.skip_quantized:
        results.append(run("quantized", args))
    cols = ["precision", "wall_s", "rollout_s", "reference_s", "update_s", "rollout_gen_tok_s", "reference_tok_s",
            "update_tok_s", "peak_memory_gb"]
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for r in results:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    out = {r["precision"]: r for r in results}
    if "quantized" in out:
        out["update_speedup"] = out["quantized"]["update_s"] / out["float32"]["update_s"]
        out["iteration_speedup"] = out["quantized"]["wall_s"] / out["float32"]["wall_s"]
    if "float32-rows" in out:
        out["sharing_speedup"] = out["float32-rows"]["wall_s"] / out["float32"]["wall_s"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
