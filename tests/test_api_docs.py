"""docs/api.md runs as written: its Python blocks, in order, as one script, in an empty folder (shipped names
resolve from there), and what they print matches what the objects they built hold."""

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_every_entry_point_has_an_example():
    import mlxhv

    code = "\n".join(blocks())
    missing = [name for name in mlxhv.__all__ if name != "__version__" and not re.search(rf"\b{name}\b", code)]
    assert not missing, f"docs/api.md has no example for {missing}"


def test_the_examples_run_in_an_empty_folder(tmp_path, monkeypatch, smollm_dir):
    monkeypatch.chdir(tmp_path)
    ns, out = {}, io.StringIO()
    for i, block in enumerate(blocks()):
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"docs/api.md block {i + 1}", "exec"), ns)
    printed = out.getvalue().splitlines()

    p, preds, run, sft, state = ns["p"], ns["preds"], ns["run"], ns["sft"], ns["state"]
    assert p.decision in ("VALIDATED", "REJECTED", "REFINED", "INVALID") and 0.0 <= p.confidence <= 1.0
    assert printed[1] == "48 16" and [q.id for q in preds] == ["a", "b"]
    assert printed[3] == "True VALIDATED"
    assert printed[4] == "ValidationError True" and printed[5].startswith("error: ") and "no-such-adapter" in printed[5]
    assert len(run.predictions) == 4 and run.metrics["n"] == 4
    assert sft.step == 2 and (tmp_path / "runs/sft-demo/adapters.safetensors").is_file()
    assert state.step == 1 and (tmp_path / "runs/grpo-demo/adapters.safetensors").is_file()
    assert not (tmp_path / "data").exists()  # the shipped files were read from the package, not copied here


@pytest.mark.parametrize("name", ["data/holdout.jsonl", "data/train.jsonl"])
def test_shipped_names_resolve_for_load_examples(tmp_path, monkeypatch, name):
    from mlxhv import load_examples

    here = load_examples(Path(__file__).resolve().parent.parent / name)
    monkeypatch.chdir(tmp_path)
    assert [e.id for e in load_examples(name)] == [e.id for e in here]
