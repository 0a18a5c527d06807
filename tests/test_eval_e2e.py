"""End to end: the embedded SmolLM2-135M (float32 fast path) through the real engine, then the CLI resuming
the same run directory and `mlxhv compare` reading it."""

import json

from click.testing import CliRunner

from mlxhv.cli import main
from mlxhv.data import synth_examples, write_jsonl
from mlxhv.eval import EvalSettings, evaluate

N = 10
MAX_TOKENS = 12


def test_embedded_model_end_to_end(smollm, tmp_path):
    model, tokenizer = smollm
    data = tmp_path / "data.jsonl"
    write_jsonl(data, synth_examples(N, seed=0))
    out = tmp_path / "run"
    settings = EvalSettings(model="smollm2-135m", precision="float32", data=str(data), max_tokens=MAX_TOKENS,
                            batch_size=N // 2, progress=False)
    from mlxhv.data import load_examples

    run = evaluate(model, tokenizer, load_examples(data), settings, out_dir=out)
    for name in ("predictions.jsonl", "metrics.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == N and len({x["id"] for x in lines}) == N
    for x in lines:
        assert 0 < x["completion_tokens"] <= MAX_TOKENS and x["prompt_tokens"] > 100
        assert x["truncated"] == (x["completion_tokens"] == MAX_TOKENS)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == N and 0.0 <= m["accuracy"] <= 1.0 and m["generation_tps"] > 0 and m["prompt_tps"] > 0
    assert m["peak_memory_gb"] > 0 and m["n_timed"] == N
    assert run.metrics["accuracy"] == m["accuracy"]

    # The CLI resumes the same directory: nothing left to generate, same predictions, files rewritten.
    result = CliRunner().invoke(main, [
        "eval", "--model", "smollm2-135m", "--precision", "float32", "--data", str(data), "--out", str(out),
        "--max-tokens", str(MAX_TOKENS), "--batch-size", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{N} examples: accuracy" in result.output and "verdict:" in result.output
    assert (out / "predictions.jsonl").read_text().count("\n") == N

    result = CliRunner().invoke(main, ["compare", str(out), str(out)])
    assert result.exit_code == 0 and "Verdict:" in result.output


def _reference_decision_prob(model, tokenizer, prompt, tokens, decision, temperature):
    """exp(Σ log softmax(logits / T)) over the first k generated tokens, k the fewest whose text starts with the
    decision word, from one separate forward pass over prompt + completion."""
    import math

    import mlx.core as mx

    k = next(k for k in range(1, len(tokens) + 1) if tokenizer.decode(tokens[:k]).lstrip().startswith(decision))
    start = len(prompt) - 1  # the position whose logits predict the first generated token
    h = model.model(mx.array([list(prompt) + list(tokens[:k])]))[0, start:start + k]  # (k, D)
    head = model.lm_head if hasattr(model, "lm_head") else model.model.embed_tokens.as_linear  # SmolLM2: tied
    logits = head(h).astype(mx.float32)  # (k, V)
    t = temperature if temperature > 0 else 1.0
    logp = logits / t - mx.logsumexp(logits / t, axis=-1, keepdims=True)  # (k, V)
    return math.exp(sum(logp[j, tokens[j]].item() for j in range(k)))


def test_decision_prob_matches_a_separate_forward_pass(smollm):
    import pytest

    from mlxhv.engine import GenerationSettings, generate
    from mlxhv.answer import decision_prob
    from mlxhv.answer import parse_answer
    from mlxhv.prompts import JSON_ANSWER_PREFIX, render_prompt

    model, tokenizer = smollm
    prompts = [render_prompt(tokenizer, ex, answer_prefix=JSON_ANSWER_PREFIX) for ex in synth_examples(2, seed=2)]
    checked = 0
    for temperature in (0.0, 0.8):  # greedy: log-probs under softmax(logits); sampled: softmax(logits / T)
        comps, _ = generate(model, tokenizer, prompts, GenerationSettings(max_tokens=4, temperature=temperature,
                                                                          seed=1, batch_size=2))
        for prompt, c in zip(prompts, comps):
            decision = parse_answer(JSON_ANSWER_PREFIX + c.text).decision
            if decision == "INVALID":
                continue
            ours = decision_prob(tokenizer, c.tokens, c.logprobs, decision, JSON_ANSWER_PREFIX)
            ref = _reference_decision_prob(model, tokenizer, prompt, c.tokens, decision, temperature)
            assert 0.0 < ours <= 1.0 and ours == pytest.approx(ref, rel=2e-3, abs=1e-5), (c.text, ours, ref)
            checked += 1
    assert checked >= 3  # the untrained model answers the prefix with a decision word (4 chances)


def test_cli_eval_applies_the_adapter_prompt_settings_offline(smollm_dir, tmp_path, monkeypatch):
    import socket

    from mlxhv.prompts import prompt_sha
    from mlxhv.models import load
    from mlxhv.prompts import JSON_ANSWER_PREFIX, PromptConfig, write_prompt_config
    from mlxhv.rl.lora import LoRASettings, apply_lora, save_adapters

    model, _ = load("smollm2-135m", precision="float32")  # its own copy: LoRA goes into it
    lora = LoRASettings(rank=2, alpha=4, keys=["self_attn.q_proj"], num_layers=2)
    apply_lora(model, lora, seed=0)
    adapter = tmp_path / "adapter"
    save_adapters(model, lora, adapter)
    system = "You judge hypotheses. Answer with one JSON object."
    write_prompt_config(adapter, PromptConfig(system_prompt=system, answer_prefix=JSON_ANSWER_PREFIX, max_tokens=4))
    data = tmp_path / "data.jsonl"
    write_jsonl(data, synth_examples(2, seed=0))

    def no_network(*a, **kw):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    out = tmp_path / "run"
    args = ["eval", "--model", "smollm2-135m", "--precision", "float32", "--data", str(data), "--adapter",
            str(adapter), "--batch-size", "2", "--quiet"]
    result = CliRunner().invoke(main, args + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "prompt settings from" in result.output and "max_tokens 4" in result.output
    info = json.loads((out / "run.json").read_text())
    assert info["answer_prefix"] == JSON_ANSWER_PREFIX and info["max_tokens"] == 4
    assert info["prompt_sha"] == prompt_sha(system) and info["adapter_path"] == str(adapter)
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(p["raw"].startswith(JSON_ANSWER_PREFIX) and p["completion_tokens"] <= 4 for p in preds)
    assert all(p["decision_prob"] is not None for p in preds if p["decision"] != "INVALID")

    # as judge and serve: a prompt that differs from the adapter's is refused before the model loads
    result = CliRunner().invoke(main, args + ["--out", str(tmp_path / "plain"), "--answer-prefix", "",
                                              "--max-tokens", "3"])
    assert result.exit_code == 2 and "error: answer_prefix '': the adapter was trained with" in result.output
    other = tmp_path / "other.txt"
    other.write_text("Another system prompt.")
    result = CliRunner().invoke(main, args + ["--out", str(tmp_path / "plain"), "--system-prompt", str(other)])
    assert result.exit_code == 2 and "differs from the system prompt the adapter was trained with" in result.output
    assert not (tmp_path / "plain").exists()
    result = CliRunner().invoke(main, args + ["--out", str(tmp_path / "same"), "--answer-prefix", "json",
                                              "--max-tokens", "3"])  # the adapter's own prefix, another budget
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "same" / "run.json").read_text())
    assert info["answer_prefix"] == JSON_ANSWER_PREFIX and info["max_tokens"] == 3
    assert info["prompt_from_adapter"] == ["system_prompt"]
