"""End to end: the embedded SmolLM2-135M (float32 fast path) through the real engine, then the CLI resuming
the same run directory and `mlxhv compare` reading it."""

import json

from click.testing import CliRunner

from cli import main
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
