"""Reward for a judge's answer: correctness + calibration + format.

For an answer with decision d, stated confidence q and gold label y (c = 1[d == y]):

    R = w_correct * c + w_calibration * (1 - (q - c)^2)          if the answer parsed and states q
    R = w_correct * c                                            if it parsed but states no confidence
    R -= format_penalty                                          if it was not the JSON object asked for
    R = r_invalid                                                if it did not parse (INVALID)
    R -= truncation_penalty                                      if generation hit the token budget

The calibration term is one minus the Brier score of the stated confidence: an answer that is right with
q = 1 gets the full term, a wrong answer with q = 1 gets 0 — a confident wrong answer costs most (RLCR,
docs/design.md). An answer without a confidence earns no calibration credit, and one the parser could only read
from prose (its fallback) pays the format penalty: our first run on SmolLM2 found that with a neutral default
(q = 0.5 for a missing confidence, no format term) the policy learned to write "The hypothesis is validated."
and never state a confidence. With the defaults (1.0, 0.5, 0.5, -1.0) a JSON answer earns R in [0, 1.5], a
prose answer [-0.5, 0.5], and an unparseable one -1, the lowest reward possible.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxhv.schema import INVALID


@dataclass
class RewardSettings:
    w_correct: float = 1.0
    w_calibration: float = 0.5
    r_invalid: float = -1.0
    truncation_penalty: float = 0.5  # answers that never end (N implementation details of RLHF)
    format_penalty: float = 0.5  # parsed only by the prose fallback, not the JSON object asked for


def reward(decision: str, confidence: float | None, gold: str, truncated: bool = False,
           settings: RewardSettings = RewardSettings(), json_format: bool = True) -> float:
    """The scalar reward of one answer; see the module docstring for the formula."""
    s = settings
    if decision == INVALID or decision is None:
        r = s.r_invalid
    else:
        c = 1.0 if decision == gold else 0.0
        r = s.w_correct * c
        if confidence is not None:
            q = min(max(float(confidence), 0.0), 1.0)
            r += s.w_calibration * (1.0 - (q - c) ** 2)
        if not json_format:
            r -= s.format_penalty
    if truncated:
        r -= s.truncation_penalty
    return r
