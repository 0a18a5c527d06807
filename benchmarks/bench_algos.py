"""PPO vs GRPO side by side at an equal number of sampled answers, on the same seam and the same rollouts budget.

    python benchmarks/bench_algos.py [--seeds 0 1 2] [--steps 12]

Task: the tiny in-process llama of the tests (tests/rl_tiny.py) and the reward of tests/test_rl_learning.py, the
share of an answer's tokens equal to a target token (~3 % at random): a clear signal, so the numbers measure how
fast each algorithm climbs, not whether the judge task is learnable. Every run samples steps x 4 prompts x 4
answers. Prints the mean reward of the first 2 and last 3 steps per algorithm and seed, seconds per iteration,
and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mlxhv  # noqa: E402,F401  (fast BLAS before mlx.core)
from mlxhv.rl.grpo import GRPOSettings  # noqa: E402
from mlxhv.rl.lora import LoRASettings  # noqa: E402
from mlxhv.rl.trainer import RLSettings, init_state, rl_iteration  # noqa: E402
from tests.rl_tiny import tiny_model  # noqa: E402

TARGET = 7
TOKENIZER = SimpleNamespace(eos_token_id=2, eos_token_ids={2}, decode=lambda ids: " ".join(map(str, ids)))
PROMPTS = [[1, 3, 4], [1, 5], [1, 9, 10, 11], [1, 12, 13]]


def score(_, completion):
    toks = completion.tokens
    return SimpleNamespace(reward=float(np.mean([t == TARGET for t in toks])) if toks else 0.0)


def run(algo: str, seed: int, steps: int) -> dict:
    common = dict(steps=steps, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=6, temperature=1.0,
                  ppo_epochs=4, minibatch_size=8, lr=3e-2, kl_coef=0.01, kl_target=None, seed=seed,
                  lora=LoRASettings(rank=4, alpha=8, keys=["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"]))
    extra = dict(value_inner=16) if algo == "ppo" else dict(algo="grpo", grpo=GRPOSettings(loss_type="dapo"))
    s = RLSettings(**common, **extra)
    state = init_state(tiny_model(seed=1, hidden=32, layers=2), TOKENIZER, s)
    t = time.perf_counter()
    rewards = [rl_iteration(state, PROMPTS, score, step)[0]["reward_mean"] for step in range(1, steps + 1)]
    return {"algo": algo, "seed": seed, "first": float(np.mean(rewards[:2])), "last": float(np.mean(rewards[-3:])),
            "s_per_iter": (time.perf_counter() - t) / steps, "rewards": [round(r, 3) for r in rewards]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    rows = [run(a, seed, args.steps) for seed in args.seeds for a in ("ppo", "grpo")]
    print("| algo | seed | reward, steps 1-2 | reward, last 3 | s / iteration |\n| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['algo']} | {r['seed']} | {r['first']:.3f} | {r['last']:.3f} | {r['s_per_iter']:.2f} |")
    summary = {a: float(np.mean([r["last"] for r in rows if r["algo"] == a])) for a in ("ppo", "grpo")}
    print(json.dumps({"runs": rows, "mean_last": summary}))


if __name__ == "__main__":
    main()
