"""Deterministic stratified train/holdout split.

Strata are (domain, decision, level). Within a stratum examples are ordered by id, then shuffled with
`random.Random(f"{seed}:{stratum}")`, so the split depends only on the set of examples and the seed — not on
file order. The holdout size per stratum is decided by largest remainder so the total is round(n * holdout).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

from mlxhv.errors import SettingsError
from mlxhv.schema import Example


def stratum(e: Example) -> tuple:
    return (e.metadata.domain, e.expected_decision.value, e.metadata.difficulty_level)


def stratified_split(examples: list[Example], holdout: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Return (train, holdout) lists, each in the input order."""
    if not 0.0 < holdout < 1.0:
        raise SettingsError(f"holdout must be in (0, 1), got {holdout}")
    groups: dict[tuple, list[Example]] = defaultdict(list)
    for e in examples:
        groups[stratum(e)].append(e)
    keys = sorted(groups)
    total = round(len(examples) * holdout)
    quotas = {k: len(groups[k]) * holdout for k in keys}
    take = {k: math.floor(q) for k, q in quotas.items()}
    # hand the remaining slots to the largest remainders (ties broken by a seeded shuffle, not by key order)
    rest = total - sum(take.values())
    order = sorted(keys, key=lambda k: (-(quotas[k] - take[k]), random.Random(f"{seed}:tie:{k}").random()))
    for k in order[: max(rest, 0)]:
        take[k] += 1
    held_ids = set()
    for k in keys:
        members = sorted(groups[k], key=lambda e: e.id)
        random.Random(f"{seed}:{k}").shuffle(members)
        held_ids.update(e.id for e in members[: take[k]])
    train = [e for e in examples if e.id not in held_ids]
    held = [e for e in examples if e.id in held_ids]
    return train, held


def content_key(e: Example) -> tuple:
    """What a judge sees of an example: the hypothesis and the evidence texts (ids and labels left out)."""
    return (e.hypothesis.strip(), tuple(ev.content.strip() for ev in e.evidence))


def drop_overlap(examples: list[Example], others: list[Example]) -> list[Example]:
    """The examples whose hypothesis and evidence are not those of any example in `others` (in order), so a
    holdout shares no prompt with a training set."""
    seen = {content_key(e) for e in others}
    return [e for e in examples if content_key(e) not in seen]


def group_split(examples: list[Example], holdout: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split by claim group (`metadata.topic`): every group goes wholly to one side, so no claim is in both.

    Groups are ordered by name, shuffled with `random.Random(f"{seed}:groups")`, and taken into the holdout until
    it holds at least round(n * holdout) examples. Return (train, holdout), each in the input order."""
    if not 0.0 < holdout < 1.0:
        raise SettingsError(f"holdout must be in (0, 1), got {holdout}")
    groups: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        groups[e.metadata.topic].append(e)
    if len(groups) < 2:
        raise SettingsError(f"a group split needs at least 2 groups (metadata.topic), found {len(groups)}")
    names = sorted(groups)
    random.Random(f"{seed}:groups").shuffle(names)
    target, held = round(len(examples) * holdout), set()
    for name in names[:-1]:
        if sum(len(groups[g]) for g in held) >= target:
            break
        held.add(name)
    return ([e for e in examples if e.metadata.topic not in held], [e for e in examples if e.metadata.topic in held])
