"""Settings of `mlxhv data generate` and the names of the files it writes next to OUT."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mlxhv.datagen.client import ClientSettings
from mlxhv.datagen.ledger import DEFAULT_PRICES
from mlxhv.schema import LEVELS

DEFAULT_WRITER_MODEL = "o1"
DEFAULT_QA_MODEL = "gpt-4o-mini"
SIDE_FILES = ("plan.json", "qa.jsonl", "rejects.jsonl", "ledger.json", "report.json")


@dataclass
class DatagenSettings:
    """Settings of one `mlxhv data generate` job (the CLI builds this; use it directly from Python too)."""

    topics: Path
    out: Path
    n: int = 350
    seed: int = 0
    domains: Optional[tuple[str, ...]] = None  # None: every domain in the topics file
    levels: tuple[int, ...] = LEVELS
    id_prefix: str = "gen"
    writer_model: str = DEFAULT_WRITER_MODEL
    qa_model: str = DEFAULT_QA_MODEL
    qa: bool = True
    writer_max_tokens: Optional[int] = 16000  # o1-class reasoning tokens count against this
    qa_max_tokens: Optional[int] = 4000
    max_attempts: int = 4  # writer attempts per example (invalid replies and QA rejections alike)
    qa_attempts: int = 2  # QA requests per example before an unusable verdict discards it (kind qa-error)
    concurrency: int = 4
    force: bool = False
    progress: bool = True
    prices: dict = field(default_factory=lambda: dict(DEFAULT_PRICES))
    client: ClientSettings = field(default_factory=ClientSettings)
    # --dry-run cost estimate: completion tokens per call (o1 reasoning included) and expected share regenerated
    est_writer_completion_tokens: int = 2500
    est_qa_completion_tokens: int = 300
    est_reject_rate: float = 0.25


def side_path(out: Path, suffix: str) -> Path:
    """OUT.plan.json, OUT.qa.jsonl, … (`suffix` one of SIDE_FILES)."""
    return out.with_name(f"{out.name}.{suffix}")
