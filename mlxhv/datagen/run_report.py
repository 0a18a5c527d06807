"""The report of one `mlxhv data generate` run: counts, rejections by domain × level and by kind, cells that fail most.

It is saved as OUT.report.json and printed at the end of every run (interrupted or stopped ones too).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from mlxhv.datagen.ledger import Ledger
from mlxhv.datagen.job import DatagenSettings, side_path

HOT_CELL_RATE = 0.5  # a domain × level cell is flagged when at least this share of its attempts was rejected


@dataclass
class DatagenReport:
    """Counts of one run (`done_before` and `cumulative` cover the earlier runs of the plan too)."""

    planned: int
    fingerprint: str
    done_before: int = 0
    accepted: int = 0
    accepted_first_try: int = 0
    attempts: Counter = field(default_factory=Counter)  # (domain, level) -> writer attempts
    rejects: Counter = field(default_factory=Counter)  # (domain, level) -> failed attempts
    rejects_by_kind: Counter = field(default_factory=Counter)
    reasons: dict = field(default_factory=dict)  # (domain, level) -> Counter of reasons
    failed: list = field(default_factory=list)  # (id, cell text, last reasons)
    aborted: Optional[str] = None  # why the run stopped before the plan was done (an API failure, Ctrl-C)
    ledger: Optional[Ledger] = None
    cumulative: Optional[Ledger] = None
    elapsed_s: float = 0.0

    @property
    def missing(self) -> int:
        return self.planned - self.done_before - self.accepted

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def hot_cells(self, min_rejects: int = 2) -> list[tuple[tuple[str, int], int, int]]:
        """(cell, rejected, attempts) for domain × level cells where ≥ HOT_CELL_RATE of attempts failed."""
        hot = [(cell, r, self.attempts[cell]) for cell, r in self.rejects.items()
               if r >= min_rejects and r >= HOT_CELL_RATE * self.attempts[cell]]
        return sorted(hot, key=lambda h: (-h[1] / max(h[2], 1), -h[1], h[0]))

    def to_json(self) -> dict:
        def cells(c: Counter) -> dict:
            table: dict = {}
            for (d, lv), v in sorted(c.items()):
                table.setdefault(d, {})[str(lv)] = v
            return table

        return {
            "planned": self.planned, "fingerprint": self.fingerprint, "done_before": self.done_before,
            "accepted": self.accepted, "accepted_first_try": self.accepted_first_try, "missing": self.missing,
            "attempts_by_domain_level": cells(self.attempts), "rejects_by_domain_level": cells(self.rejects),
            "rejects_by_kind": dict(self.rejects_by_kind),
            "hot_cells": [{"domain": c[0], "level": c[1], "rejected": r, "attempts": a}
                          for c, r, a in self.hot_cells()],
            "top_reasons": {f"{d}/{lv}": cnt.most_common(5) for (d, lv), cnt in sorted(self.reasons.items())},
            "failed": [{"id": i, "cell": c, "reasons": r} for i, c, r in self.failed],
            "aborted": self.aborted, "elapsed_s": round(self.elapsed_s, 2),
            "ledger": self.ledger.to_json() if self.ledger else {},
        }


def short(text: str, limit: int = 140) -> str:
    """`text` on one line, cut to `limit` characters (ending in …)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_report(report: DatagenReport, settings: DatagenSettings) -> str:
    """What a person reads at the end of a run: progress, rejections by domain × level, hot cells, the ledger."""
    have = report.done_before + report.accepted
    first = f", {report.accepted_first_try} at the first attempt" if report.accepted else ""
    lines = [f"{settings.out}: {have} of {report.planned} planned examples (plan {report.fingerprint}; "
             f"{report.done_before} from earlier runs, {report.accepted} accepted now{first}) "
             f"in {report.elapsed_s:.1f}s"]
    n_att, n_rej = sum(report.attempts.values()), sum(report.rejects.values())
    if n_att:
        kinds = ", ".join(f"{k} {v}" for k, v in report.rejects_by_kind.most_common()) or "none"
        lines.append(f"writer attempts {n_att}, rejected {n_rej} ({kinds})")
    if n_rej:
        domains = sorted({d for d, _ in report.attempts})
        levels = sorted({lv for _, lv in report.attempts})
        lines += ["", "rejected / attempts by domain × level:",
                  "| domain \\ level | " + " | ".join(str(lv) for lv in levels) + " |",
                  "|---" * (len(levels) + 1) + "|"]
        for d in domains:
            lines.append(f"| {d} | " + " | ".join(
                f"{report.rejects[(d, lv)]}/{report.attempts[(d, lv)]}" if report.attempts[(d, lv)] else "-"
                for lv in levels) + " |")
        hot = report.hot_cells()
        if hot:
            lines += ["", f"cells that fail most (≥ {HOT_CELL_RATE:.0%} of attempts rejected):"]
            for (d, lv), r, a in hot[:10]:
                top = report.reasons.get((d, lv), Counter()).most_common(2)
                why = "; ".join(f"{txt} (×{c})" for txt, c in top)
                lines.append(f"  {d} level {lv}: {r} of {a} attempts rejected — {why}")
    if report.failed:
        lines += ["", f"gave up after {settings.max_attempts} attempts on {len(report.failed)} example(s):"]
        for i, cell, reasons in report.failed[:10]:
            lines.append(f"  {i} ({cell}): {short('; '.join(reasons), 200)}")
        if len(report.failed) > 10:
            lines.append(f"  … and {len(report.failed) - 10} more (see {side_path(settings.out, 'report.json')})")
    if report.aborted:
        lines += ["", f"stopped early: {report.aborted}"]
    lines += ["", report.ledger.format("token ledger (this run)")]
    if report.done_before and report.cumulative is not None:
        total = report.cumulative.total_cost()
        lines.append(f"  all runs of this plan: {'?' if total is None else f'${total:.4f}'}")
    if not report.complete:
        lines += ["", f"incomplete: {report.missing} of {report.planned} planned examples are missing; "
                      "run the same command again to retry them"]
    return "\n".join(lines)
