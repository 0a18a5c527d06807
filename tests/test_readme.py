"""The README's commands run as written: every `mlxhv …` command in its shell blocks names a real command and
only options that command takes, with values of the right type (paths are not required to exist here)."""

import re
import shlex
from pathlib import Path

import click
import pytest

from mlxhv.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[list[str]]:
    text = README.read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            for part in re.split(r"&&|\|", line):
                words = shlex.split(part.replace(">", " > "))
                words = words[: words.index(">")] if ">" in words else words
                if words and words[0] in ("mlxhv", ".venv/bin/mlxhv"):
                    cmds.append(words[1:])
    return cmds


def parse(args: list[str]) -> click.Context:
    cmd, args, name = main, list(args), "mlxhv"
    while isinstance(cmd, click.Group):
        name = args.pop(0)
        cmd = cmd.get_command(click.Context(main), name)
        assert cmd is not None, f"no command {name!r}"
    return cmd.make_context(name, args)


def test_readme_has_the_commands_a_user_needs():
    first = {tuple(c[:2]) if c[0] in ("data", "train", "models") else (c[0],) for c in readme_commands()}
    for needed in [("eval",), ("compare",), ("judge",), ("serve",), ("data", "import"), ("data", "split"),
                   ("train", "sft"), ("train", "ppo")]:
        assert needed in first, needed


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(args, monkeypatch):
    monkeypatch.setattr(click.Path, "convert", lambda self, value, param, ctx: value)  # paths need not exist here
    parse(args)


def test_the_check_catches_a_wrong_option(monkeypatch):
    monkeypatch.setattr(click.Path, "convert", lambda self, value, param, ctx: value)
    with pytest.raises(click.NoSuchOption):
        parse(["eval", "--data", "x.jsonl", "--no-such-option"])
    with pytest.raises(click.BadParameter):
        parse(["eval", "--batch-size", "many", "--out", "x"])


def test_readme_python_runs_as_written(tmp_path, monkeypatch, smollm_dir):
    """The README's Python blocks (all but the one that needs a running server) run, from an empty folder."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "OpenAI(" not in b]
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    ns = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
    assert ns["p"].decision in ("VALIDATED", "REJECTED", "REFINED", "INVALID")
    assert [q.id for q in ns["preds"]] == ["h1"]
    assert len(ns["run"].predictions) == 10 and 0.0 <= ns["run"].metrics["accuracy"] <= 1.0
