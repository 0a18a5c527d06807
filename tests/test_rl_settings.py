"""RLSettings on resume and from an init adapter: the run's settings.json and the adapter's judge_prompt.json win,
and a setting that differs from them is refused (no model needed)."""

import json
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from mlxhv.errors import SettingsError
from mlxhv.prompts import JSON_ANSWER_PREFIX, SYSTEM_PROMPT, PromptConfig, write_prompt_config
from mlxhv.rl.trainer import RLSettings, apply_adapter_prompt, restore_settings


def _run(tmp_path, **kw):
    s = RLSettings.from_dict({"out": str(tmp_path / "run"), **kw})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "settings.json").write_text(json.dumps(asdict(s), indent=2))
    return s


def test_resume_restores_the_runs_settings(tmp_path):
    saved = _run(tmp_path, steps=7, lr=1e-4, algo="grpo", answer_prefix="json", train=["a.jsonl"],
                 lora={"rank": 4, "num_layers": 2})
    got = restore_settings({"out": saved.out})
    assert asdict(got) == asdict(saved) and got.steps == 7 and got.answer_prefix == JSON_ANSWER_PREFIX
    # the same values given again (in any spelling the settings accept) are fine
    same = restore_settings({"out": saved.out, "steps": 7, "answer_prefix": "json", "train": "a.jsonl",
                             "lora": {"rank": 4}})
    assert asdict(same) == asdict(saved)


def test_resume_refuses_settings_that_differ(tmp_path):
    saved = _run(tmp_path, steps=7, lora={"rank": 4, "num_layers": 2})
    with pytest.raises(SettingsError) as e:
        restore_settings({"out": saved.out, "seed": 9, "lr": 1e-3, "lora": {"rank": 8}})
    msg = str(e.value)
    assert "settings.json: --resume continues the run with its own settings" in msg
    assert "seed 9 (the run's: 0)" in msg and "lr 0.001 (the run's: 5e-05)" in msg
    assert "lora.rank 8 (the run's: 4)" in msg


def test_resume_may_extend_the_run(tmp_path):
    saved = _run(tmp_path, steps=7, max_minutes=0.0)
    got = restore_settings({"out": saved.out, "steps": 20, "max_minutes": 30.0, "eval_every": 5})
    assert (got.steps, got.max_minutes, got.eval_every, got.lr) == (20, 30.0, 5, saved.lr)
    cur = tmp_path / "cur"
    cur.mkdir()
    saved = _run(cur, steps=7, curriculum="levels")  # the level schedule is a share of the steps
    with pytest.raises(SettingsError, match=r"steps 20 \(the run's: 7\).*may change only max_minutes"):
        restore_settings({"out": saved.out, "steps": 20})


def test_resume_without_a_run_starts_one(tmp_path):
    got = restore_settings({"out": str(tmp_path / "new"), "steps": 3})
    assert got.steps == 3 and got.out == str(tmp_path / "new")


def test_cli_resume_prints_the_restored_settings_and_refuses_a_change(tmp_path):
    from mlxhv.cli import main

    saved = _run(tmp_path, steps=7, temperature=1.0)
    r = CliRunner().invoke(main, ["train", "ppo", "--out", saved.out, "--resume", "--print-config"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["steps"] == 7 and json.loads(r.output)["temperature"] == 1.0
    r = CliRunner().invoke(main, ["train", "ppo", "--out", saved.out, "--resume", "--temperature", "0.5"])
    assert r.exit_code == 2 and "error: " in r.output and "temperature 0.5 (the run's: 1.0)" in r.output


def _adapter(tmp_path, **prompt):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    write_prompt_config(d, PromptConfig(**prompt))
    return d


def test_init_adapter_prompt_applies_when_unset(tmp_path):
    adapter = _adapter(tmp_path, system_prompt="Judge briefly.", answer_prefix=JSON_ANSWER_PREFIX, max_tokens=64)
    s = RLSettings(init_adapter=str(adapter), out=str(tmp_path / "run"))
    apply_adapter_prompt(s, tmp_path / "run")
    assert s.answer_prefix == JSON_ANSWER_PREFIX
    assert s.system_prompt_file == str(tmp_path / "run" / "system_prompt.txt")
    assert (tmp_path / "run" / "system_prompt.txt").read_text() == "Judge briefly."
    apply_adapter_prompt(s, tmp_path / "run")  # on resume: the same values again
    assert s.answer_prefix == JSON_ANSWER_PREFIX


def test_init_adapter_with_the_builtin_prompt_names_no_file(tmp_path):
    adapter = _adapter(tmp_path, system_prompt=None, answer_prefix=JSON_ANSWER_PREFIX)
    s = RLSettings(init_adapter=str(adapter), answer_prefix="json")  # equal to the adapter's: fine
    apply_adapter_prompt(s, tmp_path / "run")
    assert s.answer_prefix == JSON_ANSWER_PREFIX and s.system_prompt_file is None
    assert not (tmp_path / "run").exists()


def test_init_adapter_refuses_a_different_prompt(tmp_path):
    adapter = _adapter(tmp_path, system_prompt=None, answer_prefix=JSON_ANSWER_PREFIX)
    with pytest.raises(SettingsError, match="answer_prefix 'VERDICT:': init_adapter was trained with"):
        apply_adapter_prompt(RLSettings(init_adapter=str(adapter), answer_prefix="VERDICT:"), tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("Another prompt.")
    with pytest.raises(SettingsError, match="differs from the system prompt init_adapter was trained with"):
        apply_adapter_prompt(RLSettings(init_adapter=str(adapter), system_prompt_file=str(other)), tmp_path)
    same = tmp_path / "same.txt"
    same.write_text(SYSTEM_PROMPT)
    s = RLSettings(init_adapter=str(adapter), system_prompt_file=str(same))
    apply_adapter_prompt(s, tmp_path)
    assert s.system_prompt_file == str(same)


def test_the_shipped_adapter_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = RLSettings(init_adapter="smollm2-135m-judge")
    apply_adapter_prompt(s, tmp_path / "run")
    assert s.answer_prefix == JSON_ANSWER_PREFIX  # the shipped judge_prompt.json


def test_nested_settings_given_as_dicts_are_built_or_refused():
    from mlxhv.rl.lora import LoRASettings
    from mlxhv.rl.sft import SFTSettings

    s = RLSettings(lora={"rank": 4, "alpha": 8}, loss={"clip_range": 0.1})
    assert s.lora == LoRASettings(rank=4, alpha=8) and s.loss.clip_range == 0.1
    assert SFTSettings(lora={"rank": 4, "num_layers": 2}).lora == LoRASettings(rank=4, num_layers=2)
    with pytest.raises(SettingsError, match="lora: unknown setting.*bogus"):
        RLSettings(lora={"rank": 4, "bogus": 1})
    with pytest.raises(SettingsError, match="lora: unknown setting.*bogus"):
        SFTSettings(lora={"bogus": 1})
