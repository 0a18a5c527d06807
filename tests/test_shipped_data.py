"""The shipped dataset: valid, balanced, no near-duplicate hypotheses, split reproducible by `mlxhv data split`."""

import itertools
import re
from collections import Counter
from pathlib import Path

import pytest

from mlxhv.data import compute_stats, load_examples, load_records, stratified_split
from mlxhv.schema import DOMAINS, Topic

DATA = Path(__file__).resolve().parent.parent / "data"
SPLIT_SEED = 0
STOP = set("a an the of in on for to and or by with at from that than is are be as its their this it".split())

needs_data = pytest.mark.skipif(not (DATA / "examples.jsonl").exists(), reason="shipped dataset not present")


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP}


def near_duplicates(texts: list[str], threshold: float = 0.6) -> list[tuple[int, int, float]]:
    """Pairs whose normalised word sets have Jaccard overlap >= threshold."""
    sets = [words(t) for t in texts]
    out = []
    for i, j in itertools.combinations(range(len(sets)), 2):
        inter = len(sets[i] & sets[j])
        jac = inter / max(len(sets[i] | sets[j]), 1)
        if jac >= threshold:
            out.append((i, j, jac))
    return out


def test_near_duplicate_detector_flags_rewording():
    pairs = near_duplicates(["Buybacks raise the stock price of S&P 500 firms within a quarter.",
                             "Buybacks raise the stock price of S&P 500 firms within one quarter!",
                             "Remote work lowers attrition among engineers."])
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]


@needs_data
def test_topics():
    topics = load_records(DATA / "topics.jsonl", Topic)
    assert len(topics) == 60
    assert Counter(t.domain for t in topics) == {d: 12 for d in DOMAINS}
    assert not near_duplicates([t.title for t in topics], 0.8)


@needs_data
def test_examples_valid_balanced_and_distinct():
    exs = load_examples(DATA / "examples.jsonl")
    assert len(exs) == 350
    assert Counter(e.metadata.domain for e in exs) == {d: 70 for d in DOMAINS}
    s = compute_stats(exs)
    assert s["balance_ok"], s["balance"]
    levels = Counter(e.metadata.difficulty_level for e in exs)
    assert levels[1] > levels[4] and levels[2] > levels[4]
    assert all(2 <= len(e.evidence) <= 6 for e in exs)
    topics = {(t.domain, t.title) for t in load_records(DATA / "topics.jsonl", Topic)}
    assert all((e.metadata.domain, e.metadata.topic) in topics for e in exs)
    dups = near_duplicates([e.hypothesis for e in exs])
    assert not dups, [(exs[i].id, exs[j].id, round(s, 2)) for i, j, s in dups]


@needs_data
def test_split_files_are_the_seeded_split():
    exs = load_examples(DATA / "examples.jsonl")
    train, held = stratified_split(exs, 0.2, seed=SPLIT_SEED)
    assert [e.id for e in load_examples(DATA / "train.jsonl")] == [e.id for e in train]
    assert [e.id for e in load_examples(DATA / "holdout.jsonl")] == [e.id for e in held]
