"""Data parallelism over mx.distributed: `mlx.launch --backend ring -n 2` on 127.0.0.1 against one process.

Each test starts real processes (the ring backend over loopback), so each takes ~10-50 s on a 2-core box.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist" / "ppo_step.py"
LAUNCH = Path(sys.executable).with_name("mlx.launch")


def launch(args, n=2, env=None, timeout=300):
    cmd = [str(LAUNCH), "--backend", "ring", "-n", str(n), "--python", sys.executable, *map(str, args)]
    e = {**os.environ, **(env or {})}
    e.pop("LD_PRELOAD", None)
    return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


def one_process(args, env=None, timeout=300):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_step_on_two_ranks_equals_one_process_on_the_union(tmp_path, algo):
    """Two ranks, each sampling half of the step's prompts, end with the LoRA weights one process gets on all of
    them: batch-wide whitening / batch std, the loss weighted by each rank's share, averaged gradients."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    r1 = one_process([SCRIPT, one, algo])
    assert r1.returncode == 0, r1.stderr
    r2 = launch([SCRIPT, two, algo])
    assert (two / "weights.safetensors").exists(), r2.stdout + r2.stderr
    m1, m2 = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert m1["world"] == 1 and m2["world"] == 2
    assert sorted(m1["texts"]) == sorted(m2["texts"])  # each answer drew from its own stream on either layout
    for key in ("reward_mean", "reward_std", "kl", "loss", "pg_loss", "grad_norm", "response_length"):
        assert m2["metrics"][key] == pytest.approx(m1["metrics"][key], rel=1e-4, abs=1e-6), key
    w1, w2 = mx.load(str(one / "weights.safetensors")), mx.load(str(two / "weights.safetensors"))
    lora = [k for k in w1 if "lora_" in k]
    assert lora and any(np.abs(np.array(w1[k])).sum() > 0 for k in lora if "lora_b" in k)  # the step moved B
    for k in lora:
        np.testing.assert_allclose(np.array(w2[k]), np.array(w1[k]), atol=1e-5, err_msg=k)


@pytest.mark.parametrize("fault", ["die", "die-at-init"])
def test_a_rank_that_dies_stops_the_others_with_a_clear_error(tmp_path, fault):
    t = time.monotonic()
    r = launch([SCRIPT, tmp_path, "ppo", fault], timeout=240)
    out = r.stdout + r.stderr
    assert "error: rank 0:" in out and not (tmp_path / "weights.safetensors").exists(), out
    assert time.monotonic() - t < 200


def test_a_rank_that_hangs_times_out(tmp_path):
    t = time.monotonic()
    r = launch([SCRIPT, tmp_path, "ppo", "hang"], env={"MLXHV_DIST_TIMEOUT": "5"}, timeout=240)
    out = r.stdout + r.stderr
    assert "error: rank 0: no answer from the other ranks within 5 s" in out, out
    assert time.monotonic() - t < 200


EVAL = ROOT / "tests" / "dist" / "eval_tiny.py"
KEYS = ("decision", "confidence", "raw", "completion_tokens", "prompt_tokens", "decision_prob")


def _predictions(run_dir):
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    return len(lines), {d["id"]: {k: d[k] for k in KEYS} for d in map(json.loads, lines)}


def test_eval_on_two_ranks_equals_one_process_and_resumes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = one_process([EVAL, one])
    assert r1.returncode == 0, r1.stderr
    r2 = launch([EVAL, two])
    n1, p1 = _predictions(one)
    n2, p2 = _predictions(two)
    assert n1 == n2 == 10 and p2 == p1, r2.stdout + r2.stderr
    assert json.loads((two / "metrics.json").read_text())["n"] == 10
    # a killed run: 4 whole lines and half of the 5th are on disk; the rerun on 2 ranks completes it
    lines = (two / "predictions.jsonl").read_text().splitlines(keepends=True)
    (two / "predictions.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
    launch([EVAL, two])
    n3, p3 = _predictions(two)
    assert n3 == 10 and p3 == p1
