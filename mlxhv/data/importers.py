"""Claim / evidence / label datasets (CSV or JSONL) → `Example` records.

One row becomes one example:

    hypothesis        = row[claim]
    evidence          = [Evidence(source=row[source] or the dataset's name, content=row[evidence], relevance=1.0)]
    expected_decision = labels[row[label]]        (a label mapped to None drops the row, counted)
    confidence        = `confidence` (the gold confidence the judge is trained to state)
    metadata          = domain, difficulty_level = `level`, topic = row[group] (the claim group a split keeps whole)
    id                = f"{prefix}-{row[id]}" (or the 1-based row number when there is no id column)

HealthVer (Sarrouti et al., EMNLP 2021) is a preset: Supports → VALIDATED, Refutes → REJECTED, Neutral dropped.
Neutral means "this passage does not address the claim", which none of the three decisions says: REFINED claims
that a narrower claim *is* supported, and REJECTED that the evidence argues against the claim. `neutral=` maps it
anyway for users who want "not supported" as REJECTED.

Errors name the file, the line and the field (`healthver_dev.csv:17: label: unknown label 'Maybe'`), every one of
them is collected before anything is written, and a refused import writes nothing (`write_jsonl` is atomic).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from pydantic import ValidationError

from mlxhv.data.io import LineError, PathLike, iter_jsonl, pydantic_errors
from mlxhv.errors import DataError, SettingsError
from mlxhv.schema import DECISIONS, Example


@dataclass
class ImportSpec:
    """How the columns of a claim dataset map onto an Example."""

    name: str = "claims"  # id prefix and default evidence source
    claim: str = "claim"
    evidence: str = "evidence"
    label: str = "label"
    id: Optional[str] = "id"  # None: ids are row numbers
    group: Optional[str] = None  # the claim-group column (metadata.topic); None: the claim text itself
    source: Optional[str] = None  # a column naming the evidence's source
    labels: dict = field(default_factory=dict)  # dataset label -> decision name, or None to drop the row
    domain: str = "general"
    level: int = 2
    confidence: float = 0.9

    def __post_init__(self):
        if not self.labels:
            raise SettingsError("labels: give at least one label mapping (e.g. Supports=VALIDATED)")
        for k, v in self.labels.items():
            if v is not None and v not in DECISIONS:
                raise SettingsError(f"labels: {k!r} maps to {v!r}, expected one of {', '.join(DECISIONS)} or drop")
        if "REFINED" in self.labels.values():
            raise SettingsError("labels: a claim dataset has no refined hypothesis to give a REFINED example")


def healthver_spec(neutral: Optional[str] = None, confidence: float = 0.9) -> ImportSpec:
    return ImportSpec(name="healthver", id="id", group="topic_ip", domain="health", level=2,
                      labels={"Supports": "VALIDATED", "Refutes": "REJECTED", "Neutral": neutral},
                      confidence=confidence)


FORMATS = ("healthver", "csv", "jsonl")


@dataclass
class ImportResult:
    examples: list[Example]
    dropped: Counter  # dataset label -> rows dropped
    rows: int


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict | LineError]]:
    """(line number, row) pairs; a CSV row's line number is where the row starts (quoted fields span lines)."""
    if fmt == "jsonl":
        for line, obj in iter_jsonl(path):
            if isinstance(obj, dict) or isinstance(obj, LineError):
                yield line, obj
            else:
                yield line, LineError(str(path), line, "", f"expected a JSON object, got {type(obj).__name__}")
        return
    if not path.is_file():
        yield 0, LineError(str(path), 0, "", "no such file")
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            yield 0, LineError(str(path), 0, "", "empty file: no header row")
            return
        yield 1, {"__header__": reader.fieldnames}
        start = reader.line_num + 1
        try:
            for row in reader:
                yield start, row
                start = reader.line_num + 1
        except (csv.Error, UnicodeDecodeError) as e:
            yield start, LineError(str(path), start, "", f"malformed CSV: {e}")


def import_claims(path: PathLike, spec: ImportSpec, fmt: str = "csv") -> ImportResult:
    """Read `path` (`fmt` "csv": a header row, or "jsonl": objects) into Examples; raise DataError listing every
    problem."""
    if fmt not in ("csv", "jsonl"):
        raise SettingsError(f"fmt: 'csv' or 'jsonl', not {fmt!r}")
    path = Path(path)
    # the columns a CSV header must name
    needed = [c for c in (spec.claim, spec.evidence, spec.label, spec.id, spec.group, spec.source) if c]
    examples, errors, dropped, seen = [], [], Counter(), {}
    n = 0
    for line, row in _rows(path, fmt):
        if isinstance(row, LineError):
            errors.append(row)
            continue
        if "__header__" in row:
            missing = [c for c in needed if c not in row["__header__"]]
            if missing:
                have = ", ".join(row["__header__"])
                raise DataError([LineError(str(path), 1, c, f"missing column (columns: {have})") for c in missing])
            continue
        n += 1
        bad = [c for c in needed if c != spec.source and (row.get(c) is None or str(row[c]).strip() == "")]
        if bad:
            errors.extend(LineError(str(path), line, c, "missing or empty") for c in bad)
            continue
        label = str(row[spec.label]).strip()
        if label not in spec.labels:
            errors.append(LineError(str(path), line, spec.label,
                                    f"unknown label {label!r} (known: {', '.join(spec.labels)})"))
            continue
        decision = spec.labels[label]
        if decision is None:
            dropped[label] += 1
            continue
        rid = f"{spec.name}-{str(row[spec.id]).strip() if spec.id else n}".replace(" ", "_")
        if rid in seen:
            errors.append(LineError(str(path), line, spec.id or "",
                                    f"duplicate id {rid!r} (first on line {seen[rid]})"))
            continue
        seen[rid] = line
        claim = " ".join(str(row[spec.claim]).split())
        source = str(row[spec.source]).strip() if spec.source and row.get(spec.source) else spec.name
        record = {
            "id": rid, "hypothesis": claim,
            "evidence": [{"source": source,
                          "content": " ".join(str(row[spec.evidence]).split()), "relevance": 1.0}],
            "expected_decision": decision, "confidence": spec.confidence, "refined_hypothesis": None,
            "metadata": {"domain": spec.domain, "difficulty_level": spec.level,
                         "topic": f"{spec.name}-{row[spec.group]}" if spec.group else claim},
        }
        try:
            examples.append(Example.model_validate(record))
        except ValidationError as e:
            errors.extend(pydantic_errors(e, str(path), line))
    if not errors and not examples:
        errors.append(LineError(str(path), 0, "", f"no examples: {n} row(s), all dropped ({dict(dropped)})"))
    if errors:
        raise DataError(errors)
    return ImportResult(examples, dropped, n)


def parse_label_map(items: list[str]) -> dict:
    """['Supports=VALIDATED', 'Neutral=drop'] -> {'Supports': 'VALIDATED', 'Neutral': None}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--label {item!r}: expected DATASET_LABEL=DECISION (or =drop)")
        value = value.strip()
        out[key.strip()] = None if value.lower() == "drop" else value.upper()
    return out

