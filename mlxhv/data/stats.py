"""Dataset statistics and the class-balance check.

Balance targets (docs/design.md) for a 350-example set: VALIDATED 150-200, REJECTED 100-150, REFINED 50-100.
For a set of n examples each bound is scaled by n/350 (lower bound floored, upper bound ceiled).
"""

from __future__ import annotations

import math
from collections import Counter

from mlxhv.schema import DECISIONS, Example

BALANCE_TARGETS_350 = {"VALIDATED": (150, 200), "REJECTED": (100, 150), "REFINED": (50, 100)}


def balance_targets(n: int) -> dict[str, tuple[int, int]]:
    """Target (min, max) count per decision for a set of n examples."""
    s = n / 350
    return {d: (math.floor(lo * s), math.ceil(hi * s)) for d, (lo, hi) in BALANCE_TARGETS_350.items()}


def confidence_histogram(values: list[float], bins: int = 10) -> list[int]:
    """Counts in `bins` equal-width bins over [0, 1]; 1.0 falls in the last bin."""
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    return counts


def compute_stats(examples: list[Example]) -> dict:
    n = len(examples)
    by_decision = Counter(e.expected_decision.value for e in examples)
    targets = balance_targets(n)
    balance = {
        d: {"count": by_decision.get(d, 0), "min": lo, "max": hi, "ok": lo <= by_decision.get(d, 0) <= hi}
        for d, (lo, hi) in targets.items()
    }
    return {
        "n": n,
        "by_decision": {d: by_decision.get(d, 0) for d in DECISIONS},
        "by_level": dict(sorted(Counter(e.metadata.difficulty_level for e in examples).items())),
        "by_domain": dict(sorted(Counter(e.metadata.domain for e in examples).items())),
        "by_decision_level": _cross(examples, lambda e: e.expected_decision.value, lambda e: e.metadata.difficulty_level),
        "by_domain_level": _cross(examples, lambda e: e.metadata.domain, lambda e: e.metadata.difficulty_level),
        "by_domain_decision": _cross(examples, lambda e: e.metadata.domain, lambda e: e.expected_decision.value),
        "confidence_histogram": confidence_histogram([e.confidence for e in examples]),
        "evidence_per_example": dict(sorted(Counter(len(e.evidence) for e in examples).items())),
        "balance": balance,
        "balance_ok": all(b["ok"] for b in balance.values()),
    }


def _cross(examples, row, col) -> dict:
    table: dict = {}
    for e in examples:
        r, c = row(e), col(e)
        table.setdefault(r, {}).setdefault(c, 0)
        table[r][c] += 1
    return {r: dict(sorted(cols.items())) for r, cols in sorted(table.items())}


def format_stats(stats: dict) -> str:
    """A human-readable report (markdown tables)."""
    lines = [f"examples: {stats['n']}", ""]

    def table(title: str, data: dict, cols: list) -> None:
        lines.append(f"| {title} | " + " | ".join(str(c) for c in cols) + " | total |")
        lines.append("|---" * (len(cols) + 2) + "|")
        for r, row in data.items():
            vals = [row.get(c, 0) for c in cols]
            lines.append(f"| {r} | " + " | ".join(str(v) for v in vals) + f" | {sum(vals)} |")
        tot = [sum(row.get(c, 0) for row in data.values()) for c in cols]
        lines.append("| total | " + " | ".join(str(v) for v in tot) + f" | {sum(tot)} |")
        lines.append("")

    levels = [1, 2, 3, 4]
    table("decision \\ level", stats["by_decision_level"], levels)
    table("domain \\ level", stats["by_domain_level"], levels)
    table("domain \\ decision", stats["by_domain_decision"], list(DECISIONS))
    hist = stats["confidence_histogram"]
    lines.append("confidence histogram:")
    peak = max(hist) or 1
    for i, c in enumerate(hist):
        lines.append(f"  {i / 10:.1f}-{(i + 1) / 10:.1f} {c:5d} " + "#" * round(40 * c / peak))
    lines.append("")
    lines.append(f"balance targets (scaled to n={stats['n']}):")
    for d, b in stats["balance"].items():
        mark = "ok" if b["ok"] else "OUT OF RANGE"
        lines.append(f"  {d:<10} {b['count']:4d}  target {b['min']}-{b['max']}  {mark}")
    return "\n".join(lines)
