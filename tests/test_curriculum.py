"""The curriculum schedule (rl/curriculum.py): stated level mixes, the sampler's draws, several training files."""

import json
from collections import Counter

import numpy as np
import pytest

from mlxhv.errors import DataError
from mlxhv.rl.curriculum import Sampler, level_mix, level_weights, load_training_sets


def test_level_weights_hand_computed():
    # 101 steps, ramp 0.5: p = (step - 1) / 100, frontier f = 1 + 3 * min(1, p / 0.5) = 1 + 6p (until p = 0.5)
    assert level_weights(1, 101) == {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0}
    w = level_weights(11, 101)  # f = 1.6: raw (1, 0.6, 0, 0)
    assert w == pytest.approx({1: 1 / 1.6, 2: 0.6 / 1.6, 3: 0.0, 4: 0.0})
    w = level_weights(26, 101)  # f = 2.5: raw (1, 1, 0.5, 0)
    assert w == pytest.approx({1: 0.4, 2: 0.4, 3: 0.2, 4: 0.0})
    for step in (51, 80, 101):  # f = 4 from p = ramp on: every level equally
        assert level_weights(step, 101) == pytest.approx({1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25})
    w = level_weights(21, 101, ramp=1.0)  # f = 1 + 3 * 0.2 = 1.6
    assert w == pytest.approx({1: 0.625, 2: 0.375, 3: 0.0, 4: 0.0})
    assert level_weights(5, 101, levels=(2, 4)) == pytest.approx({2: 1 / 1.08, 4: 0.08 / 1.08})  # f = 1 + 0.08
    assert level_weights(7, 10, "none") is None
    with pytest.raises(ValueError, match="curriculum"):
        level_weights(1, 10, "hardest")
    with pytest.raises(ValueError, match="ramp"):
        level_weights(1, 10, ramp=0.0)


def test_level_weights_move_towards_the_top_level():
    means = [sum(lv * w for lv, w in level_weights(s, 200).items()) for s in range(1, 201)]
    assert means[0] == 1.0 and means[-1] == 2.5
    assert all(b >= a - 1e-12 for a, b in zip(means, means[1:]))  # never moves back towards level 1


def test_sampler_yields_the_scheduled_level_mix():
    levels = [1 + i % 4 for i in range(400)]  # 100 per level
    labels = ["VALIDATED"] * 400
    s = Sampler(levels, labels, batch_size=8, total_steps=201, seed=3, curriculum="levels", ramp=0.5)
    assert {levels[i] for i in s.draw(1)} == {1}  # step 1: level 1 only
    counts, expected = Counter(), Counter()
    for step in range(1, 201):
        drawn = [levels[i] for i in s.draw(step)]
        counts.update(drawn)
        for lv, w in s.weights(step).items():
            expected[lv] += 8 * w
        if step <= 33:  # f = 1 + 6 (step - 1) / 200 < 2 until step 34: never above level 2
            assert max(drawn) <= 2
    n = 200 * 8
    for lv in (1, 2, 3, 4):  # drawn fractions follow the schedule (binomial sd <= 0.0125 at n = 1600)
        assert abs(counts[lv] / n - expected[lv] / n) < 0.04, (lv, counts, expected)
    late = Counter(levels[i] for step in range(101, 201) for i in s.draw(step))  # uniform after the ramp
    assert all(abs(late[lv] / 800 - 0.25) < 0.05 for lv in (1, 2, 3, 4)), late


def test_sampler_is_deterministic_in_seed_and_step():
    levels = [1 + i % 4 for i in range(50)]
    labels = [("VALIDATED", "REJECTED", "REFINED")[i % 3] for i in range(50)]
    kw = dict(batch_size=4, total_steps=30, seed=7, curriculum="levels", balance_classes=True)
    a = Sampler(levels, labels, **kw)
    seq = [a.draw(s) for s in range(1, 31)]
    b = Sampler(levels, labels, **kw)
    assert b.draw(17) == seq[16]  # reached directly (a resumed run)
    assert b.draw(3) == seq[2]  # and backwards
    assert Sampler(levels, labels, **{**kw, "seed": 8}).draw(5) != seq[4]


def test_sampler_without_curriculum_visits_every_example_once_per_epoch():
    s = Sampler([1] * 40, ["VALIDATED"] * 40, batch_size=4, total_steps=100, seed=0)
    assert s.weights(1) is None
    first_epoch = [i for step in range(1, 11) for i in s.draw(step)]
    assert sorted(first_epoch) == list(range(40))
    second = [i for step in range(11, 21) for i in s.draw(step)]
    assert sorted(second) == list(range(40)) and second != first_epoch


def test_balanced_classes_within_levels():
    # level 1: 30 VALIDATED, 3 REJECTED; level 2: 10 REFINED, 10 REJECTED
    levels = [1] * 33 + [2] * 20
    labels = ["VALIDATED"] * 30 + ["REJECTED"] * 3 + ["REFINED"] * 10 + ["REJECTED"] * 10
    s = Sampler(levels, labels, batch_size=10, total_steps=100, seed=1, balance_classes=True)
    drawn = Counter(labels[i] for step in range(1, 101) for i in s.draw(step))
    assert all(abs(drawn[c] / 1000 - 1 / 3) < 0.05 for c in ("VALIDATED", "REJECTED", "REFINED")), drawn
    s = Sampler(levels, labels, batch_size=10, total_steps=1000, seed=1, curriculum="levels", balance_classes=True)
    early = Counter(labels[i] for i in s.draw(1))  # step 1: level 1 only, its two classes in equal shares
    assert set(early) == {"VALIDATED", "REJECTED"}


def test_level_mix_log():
    assert level_mix([1, 3, 1, 4]) == {"1": 2, "3": 1, "4": 1}


def _write(path, examples):
    path.write_text("".join(json.dumps(e.model_dump(mode="json")) + "\n" for e in examples))


def test_load_training_sets_mixes_files_and_synth(tmp_path):
    from mlxhv.data.synth import synth_examples

    a, b = synth_examples(6, seed=1, prefix="a"), synth_examples(4, seed=2, prefix="b")
    _write(tmp_path / "a.jsonl", a)
    _write(tmp_path / "b.jsonl", b)
    got = load_training_sets([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], synth=40, synth_seed=5)
    assert [e.id for e in got[:10]] == [e.id for e in a + b]
    extra = got[10:]
    assert len(extra) == 40 and {e.metadata.difficulty_level for e in extra} == {1, 2, 3, 4}
    assert len({e.id for e in got}) == len(got)
    _write(tmp_path / "dup.jsonl", a[:1])
    with pytest.raises(DataError, match="also in"):
        load_training_sets([tmp_path / "a.jsonl", tmp_path / "dup.jsonl"])


def test_synth_examples_never_repeat_an_excluded_prompt(tmp_path):
    from mlxhv.data.split import content_key
    from mlxhv.data.synth import synth_examples

    pool = synth_examples(30, seed=9, prefix="x")
    got = load_training_sets([], synth=30, synth_seed=9, exclude=pool[:10])  # the same generator and seed
    keys = {content_key(e) for e in pool[:10]}
    assert len(got) == 20 and not any(content_key(e) in keys for e in got)
    assert np.all([e.id.startswith("sft-syn") for e in got])
