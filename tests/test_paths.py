"""Shipped files by name: a local path wins, else the package's copy (repository top, or mlxhv/shipped/)."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import mlxhv.paths as paths

ROOT = Path(__file__).resolve().parents[1]


def test_names_find_the_repository_copies_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder: nothing named data/ or adapters/ here
    assert paths.resolve_path("data/holdout.jsonl") == ROOT / "data" / "holdout.jsonl"
    assert paths.resolve_path("configs/sft-run2.json") == ROOT / "configs" / "sft-run2.json"
    assert paths.resolve_path("smollm2-135m-judge") == ROOT / "adapters" / "smollm2-135m-judge"
    assert paths.resolve_path("adapters/smollm2-135m-judge") == ROOT / "adapters" / "smollm2-135m-judge"
    assert paths.shipped_adapter() == ROOT / "adapters" / "smollm2-135m-judge"
    for missing in ["data/nope.jsonl", "nope-adapter", "../data/holdout.jsonl", "mlxhv/paths.py", "runs/x"]:
        assert paths.shipped(missing) is None
        assert paths.resolve_path(missing) == Path(missing)  # unchanged: the caller reports it missing
    assert paths.shipped(str(ROOT / "data" / "holdout.jsonl")) is None  # absolute paths are the user's own


def test_a_local_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "holdout.jsonl").write_text("{}\n")
    assert paths.resolve_path("data/holdout.jsonl") == Path("data/holdout.jsonl")


def test_the_wheel_layout_is_found_first(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "mlxhv"
    (pkg / "shipped" / "data").mkdir(parents=True)
    (pkg / "shipped" / "data" / "holdout.jsonl").write_text("{}\n")
    (pkg / "shipped" / "adapters" / "j").mkdir(parents=True)
    (pkg / "shipped" / "adapters" / "j" / "adapter_config.json").write_text("{}")
    monkeypatch.setattr(paths, "__file__", str(pkg / "paths.py"))
    monkeypatch.chdir(tmp_path)
    assert paths.shipped_dir("data") == pkg / "shipped" / "data"
    assert paths.resolve_path("data/holdout.jsonl") == pkg / "shipped" / "data" / "holdout.jsonl"
    assert paths.resolve_path("j") == pkg / "shipped" / "adapters" / "j"
    with pytest.raises(ValueError):
        paths.shipped_dir("runs")


def test_cli_options_take_shipped_names(tmp_path, monkeypatch):
    import click

    from mlxhv.cli.common import ShippedPath

    @click.command()
    @click.option("--data", type=ShippedPath(exists=True, dir_okay=False))
    @click.option("--adapter", type=ShippedPath(exists=True, file_okay=False))
    def cmd(data, adapter):
        click.echo(f"{data} {adapter}")

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cmd, ["--data", "data/holdout.jsonl", "--adapter", "smollm2-135m-judge"])
    assert r.exit_code == 0, r.output
    assert r.output.split() == [str(ROOT / "data" / "holdout.jsonl"), str(ROOT / "adapters" / "smollm2-135m-judge")]
    r = CliRunner().invoke(cmd, ["--data", "data/nope.jsonl"])
    assert r.exit_code == 2 and "data/nope.jsonl" in r.output and "does not exist" in r.output
