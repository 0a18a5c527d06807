import json

from click.testing import CliRunner

from mlxhv.cli import main


def run(*args):
    r = CliRunner().invoke(main, list(args))
    return r


def test_version_and_help():
    assert "0.1.0" in run("--version").output
    assert "data" in run("--help").output


def test_synth_validate_stats_split(tmp_path):
    f = tmp_path / "ex.jsonl"
    r = run("data", "synth", "-n", "60", "--seed", "1", "-o", str(f))
    assert r.exit_code == 0, r.output
    assert run("data", "synth", "-n", "60", "-o", str(f)).exit_code != 0  # no overwrite without --force
    r = run("data", "validate", str(f))
    assert r.exit_code == 0 and "60 valid" in r.output
    r = run("data", "stats", str(f), "--json")
    assert json.loads(r.output)["n"] == 60
    r = run("data", "split", str(f), "--holdout", "0.2", "--seed", "3", "-o", str(tmp_path / "s"))
    assert r.exit_code == 0, r.output
    assert sum(1 for _ in open(tmp_path / "s" / "holdout.jsonl")) == 12
    assert sum(1 for _ in open(tmp_path / "s" / "train.jsonl")) == 48
    assert run("data", "split", str(f), "-o", str(tmp_path / "s")).exit_code != 0


def test_validate_reports_all_errors(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"id": 1}\nnot json\n')
    r = run("data", "validate", str(f))
    assert r.exit_code == 1
    assert f"{f}:1:" in r.output and f"{f}:2: malformed JSON" in r.output
    r = run("data", "stats", str(tmp_path))
    assert r.exit_code == 2 and "is a directory" in r.output


def test_schema_command():
    r = run("data", "schema")
    assert json.loads(r.output)["title"] == "Example"


def test_synth_decision_weights(tmp_path):
    f = tmp_path / "b.jsonl"
    r = run("data", "synth", "-n", "12", "--levels", "1", "--decision-weights", "balanced", "-o", str(f))
    assert r.exit_code == 0, r.output
    r = run("data", "stats", str(f), "--json")
    assert json.loads(r.output)["by_decision"] == {"VALIDATED": 4, "REJECTED": 4, "REFINED": 4}
    r = run("data", "synth", "-n", "12", "--decision-weights", "MAYBE=1", "-o", str(tmp_path / "c.jsonl"))
    assert r.exit_code == 2 and "--decision-weights" in r.output


def test_synth_exclude_leaves_no_shared_prompt(tmp_path):
    """--exclude drops exactly the examples whose hypothesis and evidence appear in the excluded file."""
    from mlxhv.data import load_examples, synth_examples
    from mlxhv.data.split import content_key

    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    assert run("data", "synth", "-n", "60", "--levels", "1", "--seed", "0", "-o", str(train)).exit_code == 0
    r = run("data", "synth", "-n", "40", "--levels", "1", "--seed", "1", "--exclude", str(train), "-o", str(held))
    assert r.exit_code == 0, r.output
    seen = {content_key(e) for e in load_examples(train)}
    full = synth_examples(40, seed=1, levels=(1,))
    expected = [e.id for e in full if content_key(e) not in seen]
    assert 0 < len(expected) < 40  # level 1 repeats itself: some overlap, not all
    assert [e.id for e in load_examples(held)] == expected
    assert f"{40 - len(expected)} examples left out" in r.output
