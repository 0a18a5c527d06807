"""Sampled decisions per gold class from a run's samples.jsonl (mlxhv train decisions)."""

import json

from click.testing import CliRunner

from cli import main
from mlxhv.prompts import JSON_ANSWER_PREFIX
from mlxhv.rl.judge import decisions_by_gold, format_decisions


def _run(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"answer_prefix": JSON_ANSWER_PREFIX}))
    ans = lambda d: f'{d}", "confidence": 0.9}}'  # noqa: E731
    steps = [
        (1, [("VALIDATED", ans("VALIDATED")), ("REJECTED", ans("VALIDATED")), ("REJECTED", "gibberish")]),
        (2, [("VALIDATED", ans("REJECTED")), ("REFINED", ans("REFINED"))]),
        (3, [("REJECTED", ans("REJECTED"))]),
    ]
    (tmp_path / "samples.jsonl").write_text("".join(
        json.dumps({"step": st, "samples": [{"gold": g, "reward": 0.0, "text": t} for g, t in ss]}) + "\n"
        for st, ss in steps))
    return tmp_path


def test_decisions_by_gold_counts_per_window(tmp_path):
    w = decisions_by_gold(_run(tmp_path), every=2)
    assert [x["steps"] for x in w] == [[1, 2], [3, 3]]
    assert w[0]["counts"] == {"VALIDATED": {"VALIDATED": 1, "REJECTED": 1},
                              "REJECTED": {"VALIDATED": 1, "INVALID": 1}, "REFINED": {"REFINED": 1}}
    assert w[1]["counts"] == {"REJECTED": {"REJECTED": 1}}
    table = format_decisions(w).splitlines()
    assert table[2] == ("| 1-2 | 0.50 / 0.50 / 0.00 / 0.00 (n=2) | 0.50 / 0.00 / 0.00 / 0.50 (n=2) "
                        "| 0.00 / 0.00 / 1.00 / 0.00 (n=1) |")
    assert table[3] == "| 3-3 | – | 0.00 / 1.00 / 0.00 / 0.00 (n=1) | – |"


def test_decisions_cli(tmp_path):
    r = CliRunner().invoke(main, ["train", "decisions", str(_run(tmp_path)), "--every", "3"])
    assert r.exit_code == 0, r.output
    assert "| 1-3 |" in r.output
    r = CliRunner().invoke(main, ["train", "decisions", str(tmp_path / "none")])
    assert r.exit_code != 0
