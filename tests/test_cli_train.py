"""`mlxhv train ppo` end to end on the embedded model (1 step, then --resume to 2), config errors, plot."""

import json

from click.testing import CliRunner

from mlxhv.cli import main
from mlxhv.data import synth_examples, write_jsonl


def test_print_config_and_bad_config(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"steps": 7, "lora": {"rank": 4}}))
    r = CliRunner().invoke(main, ["train", "ppo", "--config", str(cfg), "--lr", "0.001", "--print-config"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["steps"] == 7 and d["lr"] == 0.001 and d["lora"]["rank"] == 4 and d["lora"]["alpha"] == 16.0
    cfg.write_text(json.dumps({"stepz": 7}))
    r = CliRunner().invoke(main, ["train", "ppo", "--config", str(cfg)])
    assert r.exit_code != 0 and "unknown RL setting(s): stepz" in r.output


def test_train_one_step_then_resume(smollm_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    write_jsonl(data, synth_examples(6, seed=0, levels=(1,)))
    out = tmp_path / "run"
    args = ["train", "ppo", "--train", str(data), "--out", str(out), "--prompts-per-step", "1",
            "--samples-per-prompt", "2", "--max-new-tokens", "6", "--ppo-epochs", "1", "--minibatch-size", "2",
            "--save-every", "1", "--precision", "float32"]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"holdout": None}))
    # a spent wall-clock budget makes the first step the last one: checkpoint and adapters at step 1, not 3
    r = CliRunner().invoke(main, args + ["--config", str(cfg), "--steps", "3", "--max-minutes", "0"])
    assert r.exit_code == 0, r.output
    assert (out / "checkpoints" / "step-000001" / "adapters.safetensors").exists()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    r = CliRunner().invoke(main, args + ["--config", str(cfg), "--steps", "2"])  # no --resume: refused
    assert r.exit_code != 0 and "--resume" in r.output
    r = CliRunner().invoke(main, args + ["--config", str(cfg), "--steps", "2", "--resume"])
    assert r.exit_code == 0, r.output
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("reward_mean", "kl", "clipfrac", "approx_kl", "pg_loss", "v_loss", "explained_variance",
                "update_tok_s", "peak_memory_gb", "ece", "accuracy", "frac_VALIDATED"):
        assert key in rec
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in samples] == [1, 2] and len(samples[1]["samples"]) == 2  # one line per step
    assert {"gold", "reward", "text"} <= set(samples[1]["samples"][0])
    assert (out / "adapter_config.json").exists() and (out / "curves.png").exists()
