from collections import Counter

import pytest

from mlxhv.data import balance_targets, compute_stats, stratified_split, synth_examples
from mlxhv.data.split import stratum


def test_split_deterministic_and_order_independent():
    exs = synth_examples(200, seed=5)
    tr1, ho1 = stratified_split(exs, 0.2, seed=7)
    tr2, ho2 = stratified_split(list(reversed(exs)), 0.2, seed=7)
    assert {e.id for e in ho1} == {e.id for e in ho2}
    assert len(ho1) == 40 and len(tr1) == 160
    assert not ({e.id for e in tr1} & {e.id for e in ho1})
    _, ho3 = stratified_split(exs, 0.2, seed=8)
    assert {e.id for e in ho3} != {e.id for e in ho1}


def test_split_is_stratified():
    exs = synth_examples(350, seed=1)
    _, held = stratified_split(exs, 0.2, seed=0)
    full, part = Counter(map(stratum, exs)), Counter(map(stratum, held))
    for k, n in full.items():  # each stratum within one of its exact share
        assert abs(part.get(k, 0) - n * 0.2) < 1.0, k
    for key in (lambda e: e.expected_decision, lambda e: e.metadata.domain, lambda e: e.metadata.difficulty_level):
        f, h = Counter(map(key, exs)), Counter(map(key, held))
        for k in f:
            assert abs(h[k] - 0.2 * f[k]) <= 3, k


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError):
        stratified_split(synth_examples(10), 1.0, seed=0)


def test_balance_targets_scaled():
    assert balance_targets(350) == {"VALIDATED": (150, 200), "REJECTED": (100, 150), "REFINED": (50, 100)}
    assert balance_targets(70) == {"VALIDATED": (30, 40), "REJECTED": (20, 30), "REFINED": (10, 20)}


def test_stats_counts():
    exs = synth_examples(100, seed=0)
    s = compute_stats(exs)
    assert s["n"] == 100
    assert sum(s["by_decision"].values()) == 100
    assert s["by_decision"] == dict(Counter(e.expected_decision.value for e in exs)) | s["by_decision"]
    assert sum(s["confidence_histogram"]) == 100
    assert sum(sum(r.values()) for r in s["by_domain_level"].values()) == 100
    assert s["balance_ok"] == all(lo <= s["by_decision"][d] <= hi for d, (lo, hi) in balance_targets(100).items())
