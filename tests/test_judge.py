"""The Judge library call and `mlxhv judge`: same prompt and decision as eval, adapter prompt settings, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from mlxhv.data import synth_examples, write_jsonl
from mlxhv.errors import DataError, SettingsError
from mlxhv.eval import EvalSettings, evaluate
from mlxhv.judge import (Judge, JudgeInput, JudgeSettings, PromptTooLong, as_input, judge_file, resolve_prompt_config,
                         run_info_path)
from mlxhv.prompts import JSON_ANSWER_PREFIX, SYSTEM_PROMPT, PromptConfig, render_prompt, write_prompt_config
from mlxhv.schema import Prediction

ADAPTER_SYSTEM = SYSTEM_PROMPT + "\n\nAnswer with the JSON object only."
ADAPTER_MAX_TOKENS = 5


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A LoRA adapter in mlx-lm's format (q, v of the last 2 of 30 blocks, non-zero B) with judge_prompt.json."""
    d = tmp_path_factory.mktemp("adapter")
    rank, weights = 4, {}
    for layer in (28, 29):
        for name, out_dim in (("q_proj", 576), ("v_proj", 192)):
            key = f"model.layers.{layer}.self_attn.{name}"
            weights[f"{key}.lora_a"] = 0.05 * mx.random.normal((576, rank), key=mx.random.key(layer))
            weights[f"{key}.lora_b"] = 0.05 * mx.random.normal((rank, out_dim), key=mx.random.key(layer + 100))
    mx.save_safetensors(str(d / "adapters.safetensors"), weights)
    (d / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": 2,
        "lora_parameters": {"rank": rank, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "self_attn.v_proj"]}}))
    write_prompt_config(d, PromptConfig(system_prompt=ADAPTER_SYSTEM, answer_prefix=JSON_ANSWER_PREFIX,
                                        max_tokens=ADAPTER_MAX_TOKENS))
    return d


@pytest.fixture(scope="module")
def adapted_judge(adapter_dir, smollm_dir):
    return Judge.load("smollm2-135m", adapter=adapter_dir, precision="float32", batch_size=2)


@pytest.fixture
def base_judge(smollm):
    model, tokenizer = smollm
    # a short system prompt keeps these prompts (and the tests) short
    return Judge(model, tokenizer, PromptConfig("Judge the hypothesis against the evidence.", JSON_ANSWER_PREFIX),
                 JudgeSettings(max_tokens=3, batch_size=2), name="smollm2-135m")


def _records(examples):
    return [{"id": e.id, "hypothesis": e.hypothesis, "evidence": [v.model_dump() for v in e.evidence]}
            for e in examples]


# ------------------------------------------------------------------------------------------ settings, inputs


def test_prompt_settings_come_from_the_adapter(adapter_dir, tmp_path):
    cfg = resolve_prompt_config(str(adapter_dir))
    assert (cfg.system_prompt_text, cfg.answer_prefix, cfg.max_tokens) == (ADAPTER_SYSTEM, JSON_ANSWER_PREFIX,
                                                                           ADAPTER_MAX_TOKENS)
    same = tmp_path / "same.txt"
    same.write_text(ADAPTER_SYSTEM)
    assert resolve_prompt_config(str(adapter_dir), str(same), "json") == cfg  # agreeing settings are fine
    other = tmp_path / "other.txt"
    other.write_text("You are a judge.")
    with pytest.raises(SettingsError, match="differs from the system prompt the adapter was trained with"):
        resolve_prompt_config(str(adapter_dir), str(other))
    with pytest.raises(SettingsError, match="answer_prefix '': the adapter was trained with"):
        Judge.load("smollm2-135m", adapter=adapter_dir, answer_prefix="")  # refused before any weights load
    with pytest.raises(SettingsError, match="unknown judge setting.*temprature"):
        Judge.load("smollm2-135m", temprature=0.5)
    with pytest.raises(SettingsError, match="not an adapter directory"):
        Judge.load("smollm2-135m", adapter=tmp_path)
    # no adapter: eval's defaults, or what the caller gives
    assert resolve_prompt_config(None) == PromptConfig(system_prompt=None, answer_prefix="")
    assert resolve_prompt_config(None, str(other), "json") == PromptConfig("You are a judge.", JSON_ANSWER_PREFIX)


def test_inputs_accept_evidence_objects_dicts_and_examples():
    ex = synth_examples(1, seed=3)[0]
    from_objects = as_input({"hypothesis": ex.hypothesis, "evidence": ex.evidence})
    from_dicts = as_input(_records([ex])[0])
    assert from_objects.evidence == from_dicts.evidence == ex.evidence
    assert as_input(ex).id == ex.id and as_input(ex).evidence == ex.evidence
    assert JudgeInput.model_validate(ex.model_dump(mode="json")).hypothesis == ex.hypothesis  # gold fields ignored
    with pytest.raises(DataError) as e:
        as_input({"hypothesis": "h", "evidence": {"source": "s"}}, "item")
    assert [str(x) for x in e.value.errors] == ["item: evidence: Input should be a valid list"]
    with pytest.raises(DataError) as e:
        as_input({"hypothesis": "h", "evidence": [{"source": "s", "content": "c", "relevance": 2}], "note": 1})
    assert {x.field for x in e.value.errors} == {"evidence[0].relevance", "note"}


# ------------------------------------------------------------------------------------- the embedded model


def test_judge_matches_eval_on_the_same_adapter(adapted_judge, adapter_dir, smollm, tmp_path):
    judge = adapted_judge
    model, tokenizer = smollm
    assert judge.settings.max_tokens == ADAPTER_MAX_TOKENS and judge.prompt.answer_prefix == JSON_ANSWER_PREFIX
    tokens = mx.array([tokenizer.encode("The evidence supports the hypothesis because")])
    delta = np.abs(np.array(judge.model(tokens)[0, -1]) - np.array(model(tokens)[0, -1])).max()
    assert delta > 0.01, delta  # the adapter was applied

    examples = synth_examples(2, seed=11)
    # The prompt is eval's prompt with the adapter's system prompt and answer prefix.
    assert judge.encode(as_input(examples[0])) == render_prompt(tokenizer, examples[0], ADAPTER_SYSTEM,
                                                                 answer_prefix=JSON_ANSWER_PREFIX)
    system_file = tmp_path / "system.txt"
    system_file.write_text(ADAPTER_SYSTEM)
    settings = EvalSettings(model="smollm2-135m", precision="float32", adapter_path=str(adapter_dir),
                            max_tokens=ADAPTER_MAX_TOKENS, batch_size=2, answer_prefix="json",
                            system_prompt_file=str(system_file), progress=False)
    run = evaluate(judge.model, judge.tokenizer, examples, settings)
    by_eval = {p.id: p for p in run.predictions}

    mine = judge.judge_many(_records(examples))
    assert [p.id for p in mine] == [e.id for e in examples]
    for p in mine:
        q = by_eval[p.id]
        assert (p.decision, p.confidence, p.raw, p.prompt_tokens, p.completion_tokens, p.truncated) == (
            q.decision, q.confidence, q.raw, q.prompt_tokens, q.completion_tokens, q.truncated)
        assert p.raw.startswith(JSON_ANSWER_PREFIX)

    one = judge.judge(examples[1].hypothesis, [v.model_dump() for v in examples[1].evidence], id="x")
    assert one.id == "x" and one.decision == by_eval[examples[1].id].decision


def test_prompt_too_long_is_refused(base_judge):
    ex = synth_examples(1, seed=0)[0]
    long = {"hypothesis": ex.hypothesis,
            "evidence": [{"source": "dump", "content": "revenue grew " * 6000, "relevance": 0.5}]}
    with pytest.raises(PromptTooLong, match=r"exceeds the model's context of 8192 tokens"):
        base_judge.encode(as_input(long))
    with pytest.raises(DataError) as e:
        base_judge.judge_many([_records([ex])[0], long])  # refused before anything runs
    assert len(e.value.errors) == 1 and str(e.value.errors[0]).startswith("items[1]: evidence: prompt of ")
    capped = Judge(base_judge.model, base_judge.tokenizer, base_judge.prompt, JudgeSettings(max_prompt_tokens=100))
    with pytest.raises(PromptTooLong, match="longer than max_prompt_tokens 100"):
        capped.encode(as_input(ex))


def test_judge_file_resumes_and_reports_bad_lines(base_judge, tmp_path):
    recs = _records(synth_examples(3, seed=5))
    del recs[2]["id"]  # judged as line-4 (the bad line below is line 2)
    src = tmp_path / "in.jsonl"
    lines = [json.dumps(recs[0]), json.dumps({"hypothesis": "h", "evidence": "none"}), json.dumps(recs[1]),
             json.dumps(recs[2]), json.dumps(recs[0])]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    # A killed earlier run: recs[1] done, then half a line.
    earlier = base_judge.judge_many([recs[1]])[0]
    out.write_text(earlier.model_dump_json() + "\n" + '{"id": "syn-')
    with pytest.raises(SettingsError, match="exists without out.jsonl.run.json"):  # which judge wrote it?
        judge_file(base_judge, str(src), out)
    run_info_path(out).write_text(json.dumps(base_judge.run_info()))  # as the killed run left it

    result = judge_file(base_judge, str(src), out)
    assert [str(e) for e in result.errors] == [f"{src}:2: evidence: Input should be a valid list",
                                               f"{src}:5: id: duplicate id '{recs[0]['id']}' (first on line 1)"]
    assert (result.judged, result.skipped) == (2, 1)
    got = [Prediction.model_validate_json(x) for x in out.read_text().splitlines()]
    assert [p.id for p in got] == [recs[1]["id"], recs[0]["id"], "line-4"]  # one line per record
    # the same answers as one judge_many call over the records left to do
    ref = base_judge.judge_many([recs[0], {**recs[2], "id": "line-4"}])
    assert [(p.id, p.decision, p.raw) for p in got[1:]] == [(p.id, p.decision, p.raw) for p in ref]
    again = judge_file(base_judge, str(src), out)  # nothing left
    assert (again.judged, again.skipped) == (0, 3) and len(out.read_text().splitlines()) == 3
    other = Judge(base_judge.model, base_judge.tokenizer, base_judge.prompt, JudgeSettings(max_tokens=5, batch_size=2),
                  name="smollm2-135m")
    with pytest.raises(SettingsError, match="another judge.*max_tokens: 3 -> 5"):
        judge_file(other, str(src), out)


def test_cli_judge_stdin_to_stdout(base_judge, monkeypatch, tmp_path):
    import mlxhv.cli.judge
    from mlxhv.cli import main

    monkeypatch.setattr(mlxhv.cli.judge, "load_judge", lambda *a, **k: base_judge)
    recs = _records(synth_examples(2, seed=8))
    text = json.dumps(recs[0]) + "\n{oops\n" + json.dumps(recs[1]) + "\n"
    result = CliRunner().invoke(main, ["judge", "-"], input=text)
    assert result.exit_code == 2, result.output
    preds = [Prediction.model_validate_json(x) for x in result.stdout.splitlines()]
    assert [p.id for p in preds] == [r["id"] for r in recs]
    ref = base_judge.judge_many(recs)
    assert [p.raw for p in preds] == [p.raw for p in ref]
    assert "<stdin>:2: malformed JSON" in result.stderr and "judged 2 record(s)" in result.stderr


@pytest.mark.slow
def test_cli_judge_resumes_after_sigkill(smollm_dir, tmp_path):
    """The real CLI in a subprocess, killed with SIGKILL after its first batch; the rerun completes the file."""
    recs = _records(synth_examples(6, seed=21))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, recs)
    cmd = [sys.executable, "-c", "from mlxhv.cli import main; main()", "judge", str(src), "-o", str(out),
           "--precision", "float32", "--answer-prefix", "json", "--max-tokens", "3", "--batch-size", "2", "-q"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = out.read_text().count("\n")
    assert 2 <= first < len(recs)
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == sorted(r["id"] for r in recs)  # one line per record
