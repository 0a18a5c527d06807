"""Data parallelism on one machine: eval examples/s and PPO samples/s, 1 process vs `mlx.launch -n 2` ranks.

    python benchmarks/bench_distributed.py [--examples 16] [--prompts 4] [--samples 4]

Each rank runs 1 BLAS thread (MLXHV_BLAS_THREADS=1), so 2 ranks on a 2-core box use what one process with
2 threads would. Both layouts do the same work on the same float32 SmolLM2 weights and holdout prompts; only the
timed part (after the model is loaded) counts. Prints a table and, last, a JSON line with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def worker(job: str, out: str, args) -> None:
    import mlxhv  # noqa: F401  (fast BLAS before mlx.core)
    from mlxhv import distributed
    from mlxhv.data import load_examples
    from mlxhv.models import load

    model, tokenizer = load(args.model, precision="float32")
    exs = load_examples(ROOT / "data" / "holdout.jsonl")
    distributed.all_sum(0.0)  # start the clock together
    t = time.perf_counter()
    if job == "eval":
        from mlxhv.eval import EvalSettings, evaluate

        s = EvalSettings(model=args.model, max_tokens=args.max_tokens, temperature=0.0, progress=False,
                         answer_prefix="json", limit=args.examples, batch_size=args.examples)
        run = evaluate(model, tokenizer, exs, s)
        n = len(run.predictions)
    else:
        from mlxhv.prompts import SYSTEM_PROMPT, render_prompt
        from mlxhv.rl.lora import LoRASettings
        from mlxhv.rl.trainer import RLSettings, init_state, rl_iteration

        s = RLSettings(prompts_per_step=args.prompts, samples_per_prompt=args.samples, max_new_tokens=16,
                        temperature=1.0, ppo_epochs=1, minibatch_size=args.samples, train_threads=1,
                        answer_prefix="json", lora=LoRASettings(num_layers=8))
        state = init_state(model, tokenizer, s)
        prompts = [render_prompt(tokenizer, e, SYSTEM_PROMPT, s.answer_prefix) for e in exs[: args.prompts]]
        r, w = distributed.rank(), distributed.size()
        _, scored = rl_iteration(state, prompts[r::w], lambda j, c: SimpleNamespace(reward=len(c.tokens) % 3 / 2),
                                 1, prompt_ids=list(range(r, len(prompts), w)))
        n = args.prompts * args.samples
    distributed.all_sum(0.0)
    wall = time.perf_counter() - t
    if distributed.is_main():
        Path(out).write_text(json.dumps({"n": n, "wall_s": wall, "per_s": n / wall, "ranks": distributed.size()}))


def run(job: str, ranks: int, args) -> dict:
    env = {**os.environ, "MLXHV_BLAS_THREADS": "1"}
    env.pop("LD_PRELOAD", None)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        argv = [__file__, "--worker", job, "--out", str(out), "--examples", str(args.examples), "--prompts",
                str(args.prompts), "--samples", str(args.samples), "--max-tokens", str(args.max_tokens),
                "--model", args.model]
        cmd = [sys.executable, *argv] if ranks == 1 else [
            str(Path(sys.executable).with_name("mlx.launch")), "--backend", "ring", "-n", str(ranks), "--python",
            sys.executable, *argv]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if not out.exists():
            raise SystemExit(f"{job} on {ranks} rank(s) failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["eval", "ppo"])
    ap.add_argument("--out")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.out, args)
    rows = {(job, n): run(job, n, args) for job in ("eval", "ppo") for n in (1, 2)}
    print("| job | ranks | items | wall s | items/s |\n| --- | ---: | ---: | ---: | ---: |")
    for (job, n), r in rows.items():
        print(f"| {job} | {n} | {r['n']} | {r['wall_s']:.1f} | {r['per_s']:.3f} |")
    ratios = {f"{job}_2_vs_1": rows[(job, 2)]["per_s"] / rows[(job, 1)]["per_s"] for job in ("eval", "ppo")}
    print(json.dumps({"runs": {f"{j}_{n}": r for (j, n), r in rows.items()}, **ratios}))


if __name__ == "__main__":
    main()
