"""The generation plan: which example (domain × curriculum level × decision × topic) each id will be.

The plan is made before any call, so the balance comes from the plan, not from luck:

1. decisions: `apportion(n, decision_weights)` (largest remainder), checked against `balance_targets(n)`
   (VALIDATED 150-200, REJECTED 100-150, REFINED 50-100 for 350, scaled) — out of range is an error;
2. levels per decision: `apportion(count, level_weights[decision])` over the chosen levels (REFINED leans to
   level 3, docs/design.md);
3. domains: the (decision, level) slots, in order, are dealt round-robin over the domains (order shuffled by the
   seed), so each domain gets n/D ± 1 examples and each (decision, level) cell is spread evenly;
4. topics: within a domain, slots cycle through that domain's topics (shuffled by the seed);
5. ids: `{prefix}-{abbr}-{k:04d}` numbered per domain; the run order is a seeded shuffle, so a partial run is
   itself roughly balanced.

Same topics + settings + seed → same plan; `plan_fingerprint` (sha256 of the items) is stored next to the
output so a resumed run can tell its own plan from another.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from mlxhv.data.stats import balance_targets
from mlxhv.schema import DECISIONS, DOMAINS, LEVELS, Topic

DECISION_WEIGHTS = {"VALIDATED": 0.5, "REJECTED": 0.3, "REFINED": 0.2}
LEVEL_WEIGHTS = {
    "VALIDATED": {1: 0.3, 2: 0.3, 3: 0.2, 4: 0.2},
    "REJECTED": {1: 0.3, 2: 0.3, 3: 0.2, 4: 0.2},
    "REFINED": {1: 0.1, 2: 0.2, 3: 0.45, 4: 0.25},  # mixed evidence (level 3) is where most REFINED cases live
}
DOMAIN_ABBR = {"finance": "fin", "management": "mgt", "risk": "rsk", "marketing": "mkt", "operations": "ops"}


@dataclass(frozen=True)
class PlanItem:
    id: str
    domain: str
    level: int
    decision: str
    topic_id: str
    topic_title: str
    topic_description: str = ""


def apportion(total: int, weights: dict) -> dict:
    """Split `total` into integer parts proportional to `weights` (largest remainder; ties by key order)."""
    wsum = sum(weights.values())
    if total < 0 or wsum <= 0:
        raise ValueError(f"cannot split {total} by weights {weights}")
    exact = {k: total * w / wsum for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    order = sorted(weights, key=lambda k: -(exact[k] - out[k]))  # sorted() is stable: ties keep key order
    for k in order[: total - sum(out.values())]:
        out[k] += 1
    return out


def domain_abbreviations(domains: Sequence[str]) -> dict[str, str]:
    """Short id parts: fin, mgt, rsk, mkt, ops; the first 3 letters otherwise, the full name on a clash."""
    abbr = {d: DOMAIN_ABBR.get(d, d[:3]) for d in domains}
    counts = Counter(abbr.values())
    return {d: (a if counts[a] == 1 else d) for d, a in abbr.items()}


def ordered_domains(topics: Sequence[Topic], domains: Optional[Sequence[str]] = None) -> list[str]:
    """The domains to plan over: `domains` if given, else those in the topics (DESIGN order first)."""
    if domains:
        return list(dict.fromkeys(domains))
    present = list(dict.fromkeys(t.domain for t in topics))
    return [d for d in DOMAINS if d in present] + [d for d in present if d not in DOMAINS]


def plan_examples(topics: Sequence[Topic], n: int, *, seed: int = 0, domains: Optional[Sequence[str]] = None,
                  levels: Sequence[int] = LEVELS, decision_weights: Optional[dict] = None,
                  level_weights: Optional[dict] = None, id_prefix: str = "gen") -> list[PlanItem]:
    """The plan for n examples, in run order (see module doc). Raises ValueError for an impossible request."""
    if n < 1:
        raise ValueError(f"-n must be at least 1, got {n}")
    decision_weights = decision_weights or DECISION_WEIGHTS
    level_weights = level_weights or LEVEL_WEIGHTS
    levels = sorted(set(levels))
    if not levels or any(lv not in LEVELS for lv in levels):
        raise ValueError(f"levels {levels}: each must be one of {LEVELS}")
    domains = ordered_domains(topics, domains)
    by_domain = {d: [t for t in topics if t.domain == d] for d in domains}
    missing = [d for d, ts in by_domain.items() if not ts]
    if missing:
        raise ValueError(f"no topic for domain(s) {', '.join(missing)} in the topics file")
    rng = random.Random(seed)

    per_decision = apportion(n, {d: decision_weights.get(d, 0.0) for d in DECISIONS})
    for d, (lo, hi) in balance_targets(n).items():
        if not lo <= per_decision[d] <= hi:
            raise ValueError(f"the decision weights give {d}={per_decision[d]} of {n}, outside the balance "
                             f"target {lo}-{hi}")
    slots: list[tuple[str, int]] = []
    for d in DECISIONS:
        w = {lv: level_weights.get(d, {}).get(lv, 0.0) for lv in levels}
        if sum(w.values()) <= 0:
            w = {lv: 1.0 for lv in levels}
        for lv, count in apportion(per_decision[d], w).items():
            slots += [(d, lv)] * count

    domain_order = list(domains)
    rng.shuffle(domain_order)
    topic_order = {d: rng.sample(ts, len(ts)) for d, ts in by_domain.items()}
    abbr = domain_abbreviations(domains)
    used = Counter()
    items = []
    for i, (decision, level) in enumerate(slots):
        domain = domain_order[i % len(domain_order)]
        k = used[domain]
        used[domain] += 1
        topic = topic_order[domain][k % len(topic_order[domain])]
        prefix = f"{id_prefix}-" if id_prefix else ""
        items.append(PlanItem(id=f"{prefix}{abbr[domain]}-{k + 1:04d}", domain=domain, level=level,
                              decision=decision, topic_id=topic.id, topic_title=topic.title,
                              topic_description=topic.description))
    rng.shuffle(items)
    return items


def plan_fingerprint(items: Sequence[PlanItem]) -> str:
    """sha256 of the plan's items (ids, cells, topics, order): equal plans, equal fingerprints."""
    blob = json.dumps([asdict(it) for it in items], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _table(title: str, rows: list, cols: list, counts: Counter) -> list[str]:
    lines = [f"| {title} | " + " | ".join(str(c) for c in cols) + " | total |", "|---" * (len(cols) + 2) + "|"]
    for r in rows:
        vals = [counts[(r, c)] for c in cols]
        lines.append(f"| {r} | " + " | ".join(str(v) for v in vals) + f" | {sum(vals)} |")
    tot = [sum(counts[(r, c)] for r in rows) for c in cols]
    lines.append("| total | " + " | ".join(str(v) for v in tot) + f" | {sum(tot)} |")
    return lines + [""]


def format_plan(items: Sequence[PlanItem]) -> str:
    """Markdown tables of the plan: decision × level, domain × level, domain × decision, and the balance check."""
    n = len(items)
    domains = list(dict.fromkeys(sorted(it.domain for it in items)))
    levels = sorted({it.level for it in items})
    lines = [f"plan: {n} examples over {len(domains)} domain(s), levels {', '.join(map(str, levels))}", ""]
    lines += _table("decision \\ level", list(DECISIONS), levels, Counter((it.decision, it.level) for it in items))
    lines += _table("domain \\ level", domains, levels, Counter((it.domain, it.level) for it in items))
    lines += _table("domain \\ decision", domains, list(DECISIONS), Counter((it.domain, it.decision) for it in items))
    per = Counter(it.decision for it in items)
    lines.append(f"balance targets (scaled to n={n}):")
    for d, (lo, hi) in balance_targets(n).items():
        lines.append(f"  {d:<10} {per[d]:4d}  target {lo}-{hi}  {'ok' if lo <= per[d] <= hi else 'OUT OF RANGE'}")
    topics_used = Counter(it.topic_id for it in items)
    lines.append(f"topics used: {len(topics_used)}, examples per topic {min(topics_used.values())}-"
                 f"{max(topics_used.values())}")
    return "\n".join(lines)
