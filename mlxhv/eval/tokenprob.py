"""The judge's own probability of its decision, read from the log-probs of the tokens it generated.

For a completion of generated ids t_1 … t_n with log-probs ℓ_k = log p(t_k | prompt, t_<k) (the engine's
`Completion.logprobs`: log softmax(logits / T), with T = 1 under greedy decoding), the decision probability is

    p_decision = exp(Σ_{k ∈ K} ℓ_k),   K = the generated tokens whose text overlaps the decision word's span

— the probability, under the distribution the answer was drawn from (top-p truncation not applied), that the
model spells that word there given what came before. A token that straddles an edge of the word (`ED",`) counts
whole. With the answer prefix `{"decision": "` the word is the first thing generated, so p_decision is the
model's probability of choosing that decision; after free text it is conditioned on the reasoning before it.

Span of the decision word in the completion text (prefix excluded, it was not generated):
1. the completion's first word, when the prompt ended with an answer prefix and that word names the decision;
2. else the last `decision … WORD` (up to 6 non-word characters between, as the parser reads it);
3. else the last whole word naming the decision, in any case (aliases such as VALID count: `normalize_decision`).
Token spans come from decoding prefixes of the ids (`decode(ids[:k])`, found by bisection), so any tokenizer
works without offsets.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Optional, Sequence

from mlxhv.prompts import normalize_decision
from mlxhv.schema import DECISIONS

_FIRST_WORD = re.compile(r"^\W*?([A-Za-z]+)")
_KEYED = re.compile(r"decision\W{0,6}([A-Za-z]+)", re.IGNORECASE)
_ANY_WORD = re.compile(r"\b([A-Za-z]+)\b")


def decision_span(text: str, decision: str, at_start: bool = False) -> Optional[tuple[int, int]]:
    """(start, end) character span of the word in `text` that states `decision` (rules 1-3 of the module doc),
    or None when `decision` is not a decision or no such word is there."""
    if decision not in DECISIONS:
        return None
    if at_start:
        m = _FIRST_WORD.match(text)
        if m and normalize_decision(m.group(1)) == decision:
            return m.span(1)
    keyed = [m for m in _KEYED.finditer(text) if normalize_decision(m.group(1)) == decision]
    if keyed:
        return keyed[-1].span(1)
    words = [m for m in _ANY_WORD.finditer(text) if normalize_decision(m.group(1)) == decision]
    return words[-1].span(1) if words else None


def token_range(tokenizer, tokens: Sequence[int], start: int, end: int) -> tuple[int, int]:
    """Indices [k0, k1) of the tokens whose decoded text overlaps characters [start, end) of decode(tokens).

    With L(k) = len(decode(tokens[:k])) (non-decreasing in k): k0 = the first k with L(k + 1) > start, and
    k1 = the first k with L(k) >= end."""
    tokens = list(tokens)

    class _Lengths:  # L(k) on demand, so bisect decodes O(log n) prefixes
        def __len__(self):
            return len(tokens) + 1

        def __getitem__(self, k):
            return len(tokenizer.decode(tokens[:k]))

    lengths = _Lengths()
    k0 = max(bisect.bisect_right(lengths, start) - 1, 0)  # last k with L(k) <= start
    k1 = bisect.bisect_left(lengths, end)
    return k0, max(min(k1, len(tokens)), k0)


def decision_prob(tokenizer, tokens: Sequence[int], logprobs: Sequence[float], decision: str,
                  answer_prefix: str = "") -> Optional[float]:
    """exp(Σ log-probs of the tokens that spell `decision`) in one completion (module doc); None when the
    decision is INVALID, the completion carries no log-probs, or the word cannot be found in its text."""
    if decision not in DECISIONS or not tokens or len(logprobs) != len(tokens):
        return None
    text = tokenizer.decode(list(tokens))
    span = decision_span(text, decision, at_start=bool(answer_prefix))
    if span is None:
        return None
    k0, k1 = token_range(tokenizer, tokens, *span)
    if k1 <= k0:
        return None
    return min(1.0, math.exp(sum(float(x) for x in logprobs[k0:k1])))
