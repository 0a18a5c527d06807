"""Sampled decisions per gold class from a run's samples.jsonl (mlxhv train decisions)."""

import json

from click.testing import CliRunner

from mlxhv.cli import main
from mlxhv.prompts import JSON_ANSWER_PREFIX
from mlxhv.rl.task import decisions_by_gold, format_decisions


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


def test_curriculum_steps_follow_the_level_schedule():
    """With curriculum "levels" the judge task draws through curriculum.Sampler: step 1 holds level-1 prompts only,
    the last step every level, the draws replay for a resumed run, and the level mix is logged."""
    from mlxhv.data import synth_examples
    from mlxhv.rl.task import JudgeTask
    from mlxhv.rl.reward import RewardSettings

    exs = synth_examples(40, seed=1)
    task = JudgeTask(exs, [[1]] * len(exs), RewardSettings(), "", curriculum="levels", total_steps=10)
    first, last = task.select(1, 8, seed=0), task.select(10, 8, seed=0)
    assert {exs[i].metadata.difficulty_level for i in first} == {1}
    assert task.select(1, 8, seed=0) == first  # deterministic in (seed, step)
    assert task.level_mix(first) == {"1": 8}
    steps = [task.select(t, 8, seed=0) for t in range(6, 11)]  # ramp 0.5: from step ~6 all levels equally
    seen = {exs[i].metadata.difficulty_level for idx in steps for i in idx}
    assert seen == {1, 2, 3, 4} and len(last) == 8
    from types import SimpleNamespace

    scored = [task.score(i, SimpleNamespace(text='{"decision": "VALIDATED", "confidence": 0.9}', finish_reason="stop"))
              for i in first]
    assert task.step_metrics(scored, first)["level_mix"] == {"1": 8}
    plain = JudgeTask(exs, [[1]] * len(exs), RewardSettings(), "")
    assert "level_mix" not in plain.step_metrics(scored, first)  # no curriculum: the metrics of before
