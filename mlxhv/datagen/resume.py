"""The plan file next to OUT, and resuming: which planned examples OUT already holds.

OUT.plan.json (the plan's items and fingerprint) is written atomically before the first call. A later run of
the same command reads OUT (a partial last line is cut), checks that every record belongs to this plan and cell,
and does only the missing items, so no id is written twice. An OUT made by a different plan (other topics, n,
seed, levels, domains or id prefix) is refused unless `force`, which deletes OUT and its side files.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from mlxhv.data.io import DataError, LineError, OutputExists, load_records, read_records, repair_tail, write_json_atomic
from mlxhv.datagen.plan import PlanItem, plan_examples, plan_fingerprint
from mlxhv.datagen.job import SIDE_FILES, DatagenSettings, side_path
from mlxhv.schema import Example, Topic


def make_plan(settings: DatagenSettings) -> tuple[list[Topic], list[PlanItem], str]:
    """Load the topics and plan the run: (topics, items in run order, fingerprint)."""
    topics = load_records(settings.topics, Topic)
    items = plan_examples(topics, settings.n, seed=settings.seed, domains=settings.domains,
                          levels=settings.levels, id_prefix=settings.id_prefix)
    return topics, items, plan_fingerprint(items)


def read_done(out: Path, items: list[PlanItem]) -> dict[str, Example]:
    """The examples already in `out`, checked against the plan; raises DataError listing every problem."""
    by_id = {it.id: it for it in items}

    def against_plan(ex: Example):
        item = by_id.get(ex.id)
        if item is None:
            return "id", f"{ex.id!r} is not in this plan"
        if (ex.metadata.domain, ex.metadata.difficulty_level, ex.expected_decision.value) != (
                item.domain, item.level, item.decision):
            return "metadata", (f"{ex.id} is {ex.metadata.domain} level {ex.metadata.difficulty_level} "
                                f"{ex.expected_decision.value}, the plan has {item.domain} level {item.level} "
                                f"{item.decision}")
        return None

    records, errors = read_records(out, Example, allow_empty=True, check=against_plan)
    if errors:
        raise DataError(errors)
    return {ex.id: ex for ex in records}


def read_stored_plan(plan_file: Path) -> Optional[dict]:
    """The record in OUT.plan.json, or None when there is none; raises DataError when it is not JSON."""
    if not plan_file.exists():
        return None
    try:
        return json.loads(plan_file.read_text())
    except ValueError as e:
        raise DataError([LineError(str(plan_file), 0, "", f"malformed JSON: {e}")]) from None


def check_output(settings: DatagenSettings, fingerprint: str) -> Optional[dict]:
    """Refuse an OUT that a run could not resume (another plan's, or not a plan's at all) unless --force; return
    its stored plan (None: none yet). Reads only."""
    out = settings.out
    plan_file = side_path(out, "plan.json")
    if out.exists() and out.is_dir():
        raise OutputExists(f"{out}: is a directory, expected a .jsonl file")
    if settings.force:
        return None
    stored = read_stored_plan(plan_file)
    if stored is not None:
        if stored.get("fingerprint") != fingerprint:
            raise OutputExists(
                f"{out}: was written for a different plan (n={stored.get('n')}, seed={stored.get('seed')}, "
                f"fingerprint {stored.get('fingerprint')}; this plan: n={settings.n}, seed={settings.seed}, "
                f"fingerprint {fingerprint}); use --force to discard it and start over")
    elif out.exists() and out.stat().st_size > 0:
        raise OutputExists(f"{out}: already exists and has no {plan_file.name}, so it is not from this plan "
                           "(use --force to discard it and start over)")
    return stored


def open_output(settings: DatagenSettings, items: list[PlanItem], fingerprint: str) -> dict[str, Example]:
    """Start or resume OUT: check the stored plan, cut partial lines, return the examples already done."""
    out = settings.out
    plan_file = side_path(out, "plan.json")
    if settings.force:
        for p in [out] + [side_path(out, s) for s in SIDE_FILES]:
            p.unlink(missing_ok=True)
    stored = check_output(settings, fingerprint)
    if stored is None:
        write_json_atomic(plan_file, {
            "fingerprint": fingerprint, "n": settings.n, "seed": settings.seed, "levels": list(settings.levels),
            "domains": sorted({it.domain for it in items}), "id_prefix": settings.id_prefix,
            "topics": str(settings.topics), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "items": [asdict(it) for it in items]}, indent=1)
    for p in (out, side_path(out, "qa.jsonl"), side_path(out, "rejects.jsonl")):
        repair_tail(p)
    return read_done(out, items) if out.exists() else {}
