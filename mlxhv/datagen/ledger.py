"""Token and cost ledger, per model.

    cost = prompt_tokens / 1e6 * price_in + completion_tokens / 1e6 * price_out     (USD)

Prices are USD per million tokens, a setting (`DEFAULT_PRICES`, overridden with `--price MODEL=IN,OUT`); reasoning
tokens of o-series models are part of `completion_tokens` and billed as output. A model name matches its longest
priced prefix (`o1-2024-12-17` → `o1`, `o1-mini` stays `o1-mini`). A model with no price shows cost "?".
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from mlxhv.data.io import write_json_atomic

# USD per 1M tokens (input, output): OpenAI list prices, standard tier, as published in 2025 — check before a big run.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


def price_for(model: str, prices: dict[str, tuple[float, float]]) -> Optional[tuple[float, float]]:
    """The (input, output) price of `model`: an exact entry, else the longest key that is a `key-` prefix."""
    if model in prices:
        return prices[model]
    best = None
    for key in prices:
        if model.startswith(key + "-") and (best is None or len(key) > len(best)):
            best = key
    return prices[best] if best else None


def parse_price(text: str) -> tuple[str, tuple[float, float]]:
    """'o1=15,60' -> ('o1', (15.0, 60.0)); raises ValueError naming the bad part."""
    model, sep, rest = text.partition("=")
    parts = rest.split(",")
    if not sep or not model.strip() or len(parts) != 2:
        raise ValueError(f"price {text!r}: expected MODEL=INPUT,OUTPUT (USD per 1M tokens)")
    try:
        return model.strip(), (float(parts[0]), float(parts[1]))
    except ValueError:
        raise ValueError(f"price {text!r}: INPUT and OUTPUT must be numbers") from None


@dataclass
class ModelUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    retries: int = 0  # transport retries (429 / 5xx / timeouts)

    def add(self, other: "ModelUsage") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


class Ledger:
    """Thread-safe token counts per model; `cost()` applies the price table."""

    def __init__(self, prices: Optional[dict[str, tuple[float, float]]] = None):
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)
        self.usage: dict[str, ModelUsage] = {}
        self._lock = threading.Lock()

    def record(self, model: str, usage: object) -> None:
        """Add one reply's `usage` (an SDK CompletionUsage, a dict, or None when the server sent none)."""
        def get(obj, name):
            return (obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)) if obj is not None else None

        details = get(usage, "completion_tokens_details")
        with self._lock:
            u = self.usage.setdefault(model, ModelUsage())
            u.requests += 1
            u.prompt_tokens += int(get(usage, "prompt_tokens") or 0)
            u.completion_tokens += int(get(usage, "completion_tokens") or 0)
            u.reasoning_tokens += int(get(details, "reasoning_tokens") or 0)

    def record_retry(self, model: str) -> None:
        with self._lock:
            self.usage.setdefault(model, ModelUsage()).retries += 1

    def snapshot(self) -> dict[str, ModelUsage]:
        with self._lock:
            return {m: ModelUsage(**asdict(u)) for m, u in self.usage.items()}

    def merge(self, other: "Ledger") -> None:
        theirs = other.snapshot()
        with self._lock:
            for model, u in theirs.items():
                self.usage.setdefault(model, ModelUsage()).add(u)

    def cost(self, model: str) -> Optional[float]:
        price = price_for(model, self.prices)
        if price is None:
            return None
        u = self.usage.get(model, ModelUsage())
        return u.prompt_tokens / 1e6 * price[0] + u.completion_tokens / 1e6 * price[1]

    def total_cost(self) -> Optional[float]:
        costs = [self.cost(m) for m in self.usage]
        return None if any(c is None for c in costs) else sum(costs)

    def to_json(self) -> dict:
        return {m: {**asdict(u), "cost_usd": self.cost(m)} for m, u in sorted(self.usage.items())}

    @classmethod
    def from_json(cls, data: dict, prices: Optional[dict] = None) -> "Ledger":
        ledger = cls(prices)
        for model, row in data.items():
            ledger.usage[model] = ModelUsage(**{k: int(row.get(k, 0)) for k in asdict(ModelUsage())})
        return ledger

    @classmethod
    def load(cls, path: Path, prices: Optional[dict] = None) -> "Ledger":
        """The ledger saved at `path`; empty when the file is missing or damaged (the count restarts)."""
        if path.exists():
            try:
                return cls.from_json(json.loads(path.read_text()), prices)
            except (ValueError, TypeError, AttributeError):
                pass
        return cls(prices)

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    def format(self, title: str = "token ledger") -> str:
        lines = [f"{title}:", f"  {'model':<22} {'requests':>8} {'prompt':>10} {'completion':>11} "
                 f"{'(reasoning)':>11} {'retries':>7} {'cost USD':>9}"]
        for model, u in sorted(self.usage.items()):
            c = self.cost(model)
            lines.append(f"  {model:<22} {u.requests:>8} {u.prompt_tokens:>10} {u.completion_tokens:>11} "
                         f"{u.reasoning_tokens:>11} {u.retries:>7} {'?' if c is None else f'{c:.4f}':>9}")
        total = self.total_cost()
        lines.append(f"  total cost: {'? (a model has no price; use --price MODEL=IN,OUT)' if total is None else f'${total:.4f}'}")
        return "\n".join(lines)
