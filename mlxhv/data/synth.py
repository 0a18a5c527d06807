"""A procedural generator of examples whose labels follow a known, checkable rule.

It feeds tests and RL smoke runs; it is not the shipped dataset (that is written by hand, data/README.md).

Each evidence item has a *stance* — support, contradict, scope (the effect holds only under a condition) or
neutral — written into its text with fixed marker phrases so `infer_stances` can read it back. The label rule:

    w[s]  = sum of relevance over items with stance s and relevance >= RELEVANCE_FLOOR (0.3)
    label = REFINED    if w[scope] > max(w[support], w[contradict])
            VALIDATED  elif w[support] > w[contradict]
            REJECTED   otherwise
    confidence = min(0.97, 0.5 + 0.5 * (w[winner] - w[runner_up]) / (w[support] + w[contradict] + w[scope]))

Curriculum (docs/design.md): level 1 — 2-3 items, all of the winning stance, high relevance; level 2 — one weaker
opposing or neutral item; level 3 — mixed evidence that must be weighed; level 4 — adds strong-sounding items of
low relevance (< 0.3, ignored by the rule) that point the wrong way. Items are drawn per level and re-drawn until
the rule gives the planned label (and VALIDATED reaches confidence 0.7), so labels never disagree with the rule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mlxhv.schema import DECISIONS, DOMAINS, Decision, Evidence, Example, Metadata

RELEVANCE_FLOOR = 0.3
STANCES = ("support", "contradict", "scope", "neutral")
MAIN_STANCE = {"VALIDATED": "support", "REJECTED": "contradict", "REFINED": "scope"}
DECISION_WEIGHTS = {"VALIDATED": 0.5, "REJECTED": 0.3, "REFINED": 0.2}  # inside the balance targets of docs/design.md
LEVEL_WEIGHTS = {1: 0.35, 2: 0.3, 3: 0.2, 4: 0.15}


@dataclass(frozen=True)
class Scenario:
    topic: str
    cause: str
    verb: str  # "raises" / "lowers"
    outcome: str
    population: str
    condition: str


SCENARIOS: dict[str, list[Scenario]] = {
    "finance": [
        Scenario("Dividend policy", "raising the dividend payout ratio", "raises", "12-month excess stock returns",
                 "mid-cap listed firms", "for firms with stable free cash flow"),
        Scenario("Share buybacks", "announcing a share buyback", "raises", "the stock price over the next quarter",
                 "S&P 500 companies", "when the stock trades below book value"),
        Scenario("Leverage", "increasing debt-to-equity", "lowers", "the weighted average cost of capital",
                 "manufacturing firms", "while interest coverage stays above 4x"),
        Scenario("Working capital", "shortening the cash conversion cycle", "raises", "return on assets",
                 "wholesale distributors", "in firms with more than $50M revenue"),
        Scenario("Hedging", "hedging currency exposure", "lowers", "earnings volatility",
                 "exporting SMEs", "when foreign sales exceed 30% of revenue"),
        Scenario("ESG funds", "holding a high ESG rating", "lowers", "the cost of equity",
                 "European utilities", "during periods of regulatory tightening"),
    ],
    "management": [
        Scenario("Remote work", "allowing two remote days a week", "raises", "employee retention",
                 "software teams", "for employees with commutes over 45 minutes"),
        Scenario("Span of control", "widening spans of control", "lowers", "decision latency",
                 "retail chains", "in stores with experienced supervisors"),
        Scenario("OKRs", "adopting quarterly OKRs", "raises", "goal attainment",
                 "growth-stage startups", "when goals are set jointly with teams"),
        Scenario("Training", "funding 40 hours of yearly training", "raises", "internal promotion rates",
                 "hospital staff", "for staff in their first three years"),
        Scenario("Pay transparency", "publishing salary bands", "lowers", "the gender pay gap",
                 "mid-sized employers", "in roles with standardised job levels"),
        Scenario("Meeting load", "banning meetings on one weekday", "raises", "self-reported productivity",
                 "knowledge workers", "for individual contributors rather than managers"),
    ],
    "risk": [
        Scenario("Credit scoring", "adding cash-flow data to credit scores", "lowers", "default rates",
                 "small-business loans", "for thin-file borrowers"),
        Scenario("Supplier concentration", "dual-sourcing critical parts", "lowers", "supply disruption losses",
                 "automotive suppliers", "for parts with lead times over 8 weeks"),
        Scenario("Cyber training", "running monthly phishing drills", "lowers", "successful phishing incidents",
                 "regional banks", "in branches with high staff turnover"),
        Scenario("Stress testing", "running quarterly liquidity stress tests", "lowers", "emergency funding costs",
                 "credit unions", "when deposits are concentrated in few members"),
        Scenario("Fraud detection", "real-time transaction monitoring", "lowers", "card fraud losses",
                 "card issuers", "for card-not-present transactions"),
        Scenario("Insurance", "raising deductibles", "lowers", "claim frequency",
                 "commercial property policies", "for clients with prior claims"),
    ],
    "marketing": [
        Scenario("Free shipping", "offering free shipping above a threshold", "raises", "average order value",
                 "online apparel stores", "when the threshold is within 20% of the median basket"),
        Scenario("Influencers", "partnering with micro-influencers", "raises", "conversion rates",
                 "direct-to-consumer beauty brands", "for first-time buyers"),
        Scenario("Loyalty", "launching a points-based loyalty programme", "raises", "repeat purchase rate",
                 "grocery chains", "among customers who shop weekly"),
        Scenario("Pricing", "ending prices in .99", "raises", "unit sales",
                 "consumer electronics retailers", "for products under $100"),
        Scenario("Email", "personalising email subject lines", "raises", "open rates",
                 "B2B software vendors", "for leads already in a trial"),
        Scenario("Brand ads", "cutting brand advertising", "lowers", "organic search traffic",
                 "travel booking sites", "over horizons longer than six months"),
    ],
    "operations": [
        Scenario("Lean", "introducing lean cells", "lowers", "work-in-progress inventory",
                 "electronics assembly plants", "on high-mix, low-volume lines"),
        Scenario("Automation", "automating order picking", "raises", "orders shipped per labour hour",
                 "e-commerce warehouses", "at volumes above 10,000 orders a day"),
        Scenario("Maintenance", "switching to predictive maintenance", "lowers", "unplanned downtime",
                 "food processing plants", "for rotating equipment"),
        Scenario("Forecasting", "using machine-learning demand forecasts", "lowers", "stockouts",
                 "regional pharmacies", "for fast-moving items"),
        Scenario("Nearshoring", "nearshoring production", "lowers", "total landed cost",
                 "furniture makers", "when freight rates are above their five-year average"),
        Scenario("Scheduling", "self-scheduling for shift workers", "lowers", "absenteeism",
                 "call centres", "for part-time staff"),
    ],
}

SOURCES = [
    "A peer-reviewed panel study", "Internal data from the last eight quarters", "An industry association report",
    "A survey of 400 practitioners", "A consultancy benchmark", "An expert interview", "A randomised field trial",
    "A regulator's annual review", "A meta-analysis of 23 studies", "A case study of three firms",
    "Trade press coverage", "An academic working paper",
]

# Marker phrases: each stance's templates contain exactly one of its markers and none of the others'.
TEMPLATES = {
    "support": [
        "{cause} was found to have {verbing} {outcome} among {population}, in line with the hypothesis.",
        "{population} that used {cause} showed a consistent effect: it {verb} {outcome}, in line with the hypothesis.",
    ],
    "contradict": [
        "{cause} showed no measurable effect on {outcome} among {population}, contrary to the hypothesis.",
        "Among {population}, {cause} moved {outcome} the opposite way, contrary to the hypothesis.",
    ],
    "scope": [
        "The effect of {cause} on {outcome} held only {condition}; elsewhere among {population} it was negligible.",
        "Among {population}, {cause} {verb} {outcome} only {condition}; outside that group the effect held only weakly.",
    ],
    "neutral": [
        "Describes recent trends in {outcome} among {population} without examining {cause}.",
        "Reports background figures on {outcome}; it does not examine {cause}.",
    ],
}
MARKERS = {
    "support": "in line with the hypothesis",
    "contradict": "contrary to the hypothesis",
    "scope": "held only",
    "neutral": "without examining|does not examine",
}


def infer_stance(content: str) -> str:
    """Read an item's stance back from its marker phrase."""
    found = [s for s, m in MARKERS.items() if any(p in content for p in m.split("|"))]
    if len(found) != 1:
        raise ValueError(f"ambiguous or unknown stance in: {content!r}")
    return found[0]


def stance_weights(items: list[tuple[str, float]]) -> dict[str, float]:
    w = {s: 0.0 for s in STANCES}
    for stance, rel in items:
        if rel >= RELEVANCE_FLOOR:
            w[stance] += rel
    return w


def rule_label(items: list[tuple[str, float]]) -> tuple[str, float]:
    """(label, confidence) from (stance, relevance) pairs — the rule in the module docstring."""
    w = stance_weights(items)
    decisive = {"support": w["support"], "contradict": w["contradict"], "scope": w["scope"]}
    total = sum(decisive.values())
    if total == 0:
        return "REJECTED", 0.5
    if w["scope"] > max(w["support"], w["contradict"]):
        label, win = "REFINED", "scope"
    elif w["support"] > w["contradict"]:
        label, win = "VALIDATED", "support"
    else:
        label, win = "REJECTED", "contradict"
    runner = max(v for k, v in decisive.items() if k != win)
    conf = min(0.97, 0.5 + 0.5 * (decisive[win] - runner) / total)
    return label, round(conf, 2)


def example_label(example: Example) -> tuple[str, float]:
    """Apply the rule to an example generated here (stances read back from its text)."""
    return rule_label([(infer_stance(ev.content), ev.relevance) for ev in example.evidence])


def _draw_items(rng: random.Random, label: str, level: int) -> list[tuple[str, float]]:
    main = MAIN_STANCE[label]
    others = [s for s in ("support", "contradict", "scope") if s != main]
    u = rng.uniform
    if level == 1:
        return [(main, round(u(0.8, 1.0), 2)) for _ in range(rng.randint(2, 3))]
    if level == 2:
        items = [(main, round(u(0.6, 0.95), 2)) for _ in range(rng.randint(2, 3))]
        items.append((rng.choice(others + ["neutral"]), round(u(0.3, 0.6), 2)))
        return items
    if level == 3:
        items = [(main, round(u(0.5, 0.9), 2)) for _ in range(2)]
        items += [(rng.choice(others), round(u(0.4, 0.8), 2)) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.5:
            items.append(("neutral", round(u(0.3, 0.7), 2)))
        return items
    items = [(main, round(u(0.5, 0.85), 2)) for _ in range(2)]
    items.append((rng.choice(others), round(u(0.3, 0.6), 2)))
    items += [(rng.choice(others), round(u(0.05, 0.28), 2)) for _ in range(rng.randint(1, 2))]  # misleading
    if rng.random() < 0.3:
        items.append(("neutral", round(u(0.3, 0.6), 2)))
    return items


def _render(sc: Scenario, stance: str, rng: random.Random) -> str:
    verbing = {"raises": "raised", "lowers": "lowered"}[sc.verb]
    text = rng.choice(TEMPLATES[stance]).format(
        cause=sc.cause, verb=sc.verb, verbing=verbing, outcome=sc.outcome, population=sc.population,
        condition=sc.condition,
    )
    return text[0].upper() + text[1:]


def synth_example(rng: random.Random, domain: str, label: str, level: int, ex_id: str) -> Example:
    sc = rng.choice(SCENARIOS[domain])
    for _ in range(1000):
        items = _draw_items(rng, label, level)
        got, conf = rule_label(items)
        if got == label and (label != "VALIDATED" or conf >= 0.7):
            break
    else:  # pragma: no cover - the level recipes always reach their label within a few draws
        raise RuntimeError(f"could not draw {label} at level {level}")
    rng.shuffle(items)
    evidence = [Evidence(source=rng.choice(SOURCES), content=_render(sc, s, rng), relevance=r) for s, r in items]
    hypothesis = f"For {sc.population}, {sc.cause} {sc.verb} {sc.outcome}."
    refined = f"For {sc.population}, {sc.cause} {sc.verb} {sc.outcome} {sc.condition}." if label == "REFINED" else None
    return Example(
        id=ex_id,
        hypothesis=hypothesis[0].upper() + hypothesis[1:],
        evidence=evidence,
        expected_decision=Decision(label),
        confidence=conf,
        refined_hypothesis=refined,
        metadata=Metadata(domain=domain, difficulty_level=level, topic=sc.topic),
    )


def _quota(n: int, weights: dict) -> list:
    """Exactly n keys in proportion to weights (largest remainder), in a fixed order."""
    total = sum(weights.values())
    raw = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return [k for k in weights for _ in range(counts[k])]


def parse_decision_weights(text: str) -> dict[str, float]:
    """`VALIDATED=1,REJECTED=1,REFINED=1` (or `balanced`) -> weights; unnamed decisions get weight 0."""
    if text.strip().lower() == "balanced":
        return {d: 1.0 for d in DECISIONS}
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().upper()
        if not sep or name not in DECISIONS:
            raise ValueError(f"decision weight {part!r}: expected DECISION=WEIGHT with DECISION in {', '.join(DECISIONS)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"decision weight {part!r}: {value!r} is not a number") from None
        if out[name] < 0:
            raise ValueError(f"decision weight {part!r}: must be >= 0")
    if not out or sum(out.values()) <= 0:
        raise ValueError(f"decision weights {text!r}: at least one must be positive")
    return out


def synth_examples(n: int, seed: int = 0, domains: tuple[str, ...] = DOMAINS, levels: tuple[int, ...] = (1, 2, 3, 4),
                   prefix: str = "syn", decision_weights: dict[str, float] | None = None) -> list[Example]:
    """n examples, balanced over domains, decisions (`decision_weights`, default DECISION_WEIGHTS) and levels;
    deterministic in seed."""
    rng = random.Random(seed)
    weights = {d: w for d, w in (decision_weights or DECISION_WEIGHTS).items() if w > 0}
    labels = _quota(n, weights)
    lv = _quota(n, {k: LEVEL_WEIGHTS[k] for k in levels})
    rng.shuffle(labels)
    rng.shuffle(lv)
    out = []
    for i in range(n):
        domain = domains[i % len(domains)]
        out.append(synth_example(rng, domain, labels[i], lv[i], f"{prefix}-{domain[:3]}-{i:05d}"))
    return out
