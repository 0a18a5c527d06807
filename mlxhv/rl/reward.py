"""Reward for a judge's answer: correctness + calibration + format.

For an answer with decision d, stated confidence q and gold label y (c = 1[d == y]):

    R = w_correct * c + w_calibration * (1 - (q - c)^2)          if the answer parsed
    R = r_invalid                                                if it did not (INVALID)
    R -= truncation_penalty                                      if generation hit the token budget

The calibration term is one minus the Brier score of the stated confidence: an answer that is right with
q = 1 gets the full term, a wrong answer with q = 1 gets 0 — a confident wrong answer costs most (RLCR,
DESIGN.md). A parsed answer without a confidence is scored with q = 0.5. With the defaults (1.0, 0.5, -1.0)
a parsed answer earns R in [0, 1.5] and an unparseable one -1, the lowest reward possible.
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
    missing_confidence: float = 0.5


def reward(decision: str, confidence: float | None, gold: str, truncated: bool = False,
           settings: RewardSettings = RewardSettings()) -> float:
    """The scalar reward of one answer; see the module docstring for the formula."""
    s = settings
    if decision == INVALID or decision is None:
        r = s.r_invalid
    else:
        c = 1.0 if decision == gold else 0.0
        q = s.missing_confidence if confidence is None else min(max(float(confidence), 0.0), 1.0)
        r = s.w_correct * c + s.w_calibration * (1.0 - (q - c) ** 2)
    if truncated:
        r -= s.truncation_penalty
    return r
