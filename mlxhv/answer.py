"""The answer → `Prediction` step, shared by the judge API, the server, `mlxhv eval` and the trainers: the
parser of the judge's text, the model's own probability of its decision, and the confidence returned.

Parser (`parse_answer`), in order:
1. Drop everything up to the last `</think>`. When the prompt itself opened a think block (QwQ's template ends
   with `<think>`, `in_think=True`) and no `</think>` came, the model never left its reasoning: INVALID
   ("unfinished_think"). A `<think>` the model opened itself and never closed is cut away with what follows it.
2. The last well-formed JSON object (balanced braces; trailing commas, single quotes and Python literals are
   repaired) that holds a `decision` key with a known value, searching nested objects too ("json").
3. Else the last `decision: WORD` pattern, else the last upper-case decision word, else a decision word in any
   case if the answer names only one of the three (prose listing "validated, rejected or refined" is no
   answer). Whole words only ("validated", not "valid"), and words negated just before ("not validated",
   "cannot be REFINED") are skipped. The confidence is the last `confidence: NUMBER` or, failing that, the
   last decimal or percentage after the decision word ("fallback").
4. Else INVALID ("none").
Confidences are floats in [0, 1]; a number in (1, 100] or written with `%` is read as a percentage; anything
else is dropped (None). The raw text is never changed here: callers keep it in `Prediction.raw`.

Decision-token probability (`decision_prob`): the judge's own probability of its decision, read from the
log-probs of the tokens it generated.

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

The returned confidence (`completion_prediction`): `Prediction.confidence` is the decision-token probability
when it is known, and the stated number otherwise (`confidence_source` says which); the stated number is kept
as `Prediction.stated_confidence`. A small model's stated confidence is a copy of its training targets (the
shipped judge states 0.9 almost always), while the probability it gives its own decision word ranks and
calibrates (docs/judge-real.md has the measured ECE of both).
"""

from __future__ import annotations

import ast
import bisect
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from mlxhv.schema import DECISIONS, INVALID, Prediction

@dataclass(frozen=True)
class ParsedAnswer:
    decision: str  # one of DECISIONS, or INVALID
    confidence: Optional[float]  # in [0, 1], or None when none was stated
    refined_hypothesis: Optional[str]
    method: str  # "json" | "fallback" | "none" | "unfinished_think"

    @property
    def is_valid(self) -> bool:
        return self.decision != INVALID


_DECISION_ALIASES = {
    "VALIDATED": "VALIDATED", "VALIDATE": "VALIDATED", "VALID": "VALIDATED", "SUPPORTED": "VALIDATED",
    "REJECTED": "REJECTED", "REJECT": "REJECTED",
    "REFINED": "REFINED", "REFINE": "REFINED",
}


def normalize_decision(value: Any) -> Optional[str]:
    """'validated', ' REJECT ', 'Refined.' -> the canonical decision; None when it is not one."""
    if not isinstance(value, str):
        return None
    word = re.sub(r"[^A-Za-z]", "", value).upper()
    return _DECISION_ALIASES.get(word)


def normalize_confidence(value: Any) -> Optional[float]:
    """A float in [0, 1]; 1 < v <= 100 and 'NN%' are percentages; bools, NaN and anything else give None."""
    percent = False
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        s = value.strip()
        percent = s.endswith("%")
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*%?", s)
        if not m:
            return None
        value = float(m.group(1))
    if not isinstance(value, (int, float)):
        return None
    v = float(value)
    if v != v:  # NaN
        return None
    if percent or 1.0 < v <= 100.0:
        v = v / 100.0
    if 0.0 <= v <= 1.0:
        return v
    return None


def strip_think(text: str, in_think: bool = False) -> Optional[str]:
    """The answer part of `text`: after the last `</think>`; None when the reasoning never closed."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if in_think:
        return None
    if "<think>" in text:  # opened by the model itself and never closed
        return text.split("<think>", 1)[0]
    return text


def json_objects(text: str) -> list[str]:
    """Every top-level `{…}` span with balanced braces, in order. Braces inside strings are ignored: `"…"`
    strings, and the `'…'` strings `_loads_lenient` accepts — a `'` opens one only where a key or value
    starts (after `{`, `[`, `,` or `:`), so an apostrophe in unquoted text ("don't") opens nothing."""
    spans, depth, start, in_str, esc, quote = [], 0, -1, False, False, ""
    prev = ""  # the last non-space character outside strings
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                in_str, prev = False, ch
            continue
        if depth > 0 and (ch == '"' or (ch == "'" and prev in ("{", "[", ",", ":"))):
            in_str, quote = True, ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
        if not ch.isspace():
            prev = ch
    return spans


def _loads_lenient(s: str) -> Any:
    """json.loads, then with trailing commas removed, then as a Python literal (single quotes, None, True)."""
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        pass
    no_trailing = re.sub(r",\s*([}\]])", r"\1", s)
    try:
        return json.loads(no_trailing)
    except json.JSONDecodeError:
        pass
    pythonish = re.sub(r"\bnull\b", "None", re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", no_trailing)))
    try:
        return ast.literal_eval(pythonish)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def _find_decision_dict(obj: Any) -> Optional[dict]:
    """The innermost-last dict holding a `decision` key with a known value (keys matched case-insensitively)."""
    if isinstance(obj, dict):
        for v in reversed(list(obj.values())):
            found = _find_decision_dict(v)
            if found is not None:
                return found
        keys = {str(k).strip().lower(): v for k, v in obj.items()}
        if normalize_decision(keys.get("decision")) is not None:
            return keys
    elif isinstance(obj, list):
        for v in reversed(obj):
            found = _find_decision_dict(v)
            if found is not None:
                return found
    return None


def _clean_refined(value: Any) -> Optional[str]:
    if not isinstance(value, str):
        return None
    s = value.strip()
    return None if s.lower() in ("", "null", "none", "n/a") else s


_WORD = r"VALIDATED|REJECTED|REFINED"
_NUMBER = r"([0-9]*\.?[0-9]+)\s*(%?)"
_LOOSE_NUMBER = r"(?<![\w.])([01]?\.[0-9]+|[0-9]{1,3}(?:\.[0-9]+)?\s*%)"  # 0.8, .8, 85% — not bare integers


_NEGATED = re.compile(r"\b(?:not|no|never|cannot|can't|\w+n't)\s+(?:\w+\s+){0,2}$", re.IGNORECASE)


def _decision_words(answer: str, flags: int) -> list:
    """Matches of a decision word (whole word) not negated by a "not", "cannot be", "isn't yet" just before."""
    return [m for m in re.finditer(rf"\b({_WORD})\b", answer, flags)
            if not _NEGATED.search(answer[max(0, m.start() - 40):m.start()])]


def _fallback(answer: str) -> Optional[ParsedAnswer]:
    decision, end = None, 0
    keyed = list(re.finditer(rf"decision\W{{0,6}}({_WORD}|VALIDATE|REJECT|REFINE)\b", answer, re.IGNORECASE))
    upper = _decision_words(answer, 0)
    anycase = _decision_words(answer, re.IGNORECASE)
    if keyed:  # "Decision: REJECTED", or a JSON object cut off after its decision
        decision, end = normalize_decision(keyed[-1].group(1)), keyed[-1].end()
    elif upper:  # the last upper-case decision word, as the format asks
        decision, end = normalize_decision(upper[-1].group(1)), upper[-1].end()
    elif len({m.group(1).upper() for m in anycase}) == 1:  # prose naming exactly one decision
        decision, end = normalize_decision(anycase[-1].group(1)), anycase[-1].end()
    if decision is None:
        return None
    conf = None
    keyed = list(re.finditer(rf"confidence\W{{0,6}}{_NUMBER}", answer, re.IGNORECASE))
    if keyed:
        conf = normalize_confidence(keyed[-1].group(1) + keyed[-1].group(2))
    else:
        after = list(re.finditer(_LOOSE_NUMBER, answer[end:]))
        if after:
            conf = normalize_confidence(after[-1].group(1))
    refined = None
    if decision == "REFINED":
        m = list(re.finditer(r"refined[_ ]hypothesis\W{0,6}\"?([^\"\n]+)", answer, re.IGNORECASE))
        refined = _clean_refined(m[-1].group(1)) if m else None
    return ParsedAnswer(decision, conf, refined, "fallback")


def parse_answer(text: str, in_think: bool = False) -> ParsedAnswer:
    """Read the judge's decision, confidence and refined hypothesis from a raw completion (see module doc)."""
    answer = strip_think(text or "", in_think)
    if answer is None:
        return ParsedAnswer(INVALID, None, None, "unfinished_think")
    for span in reversed(json_objects(answer)):
        found = _find_decision_dict(_loads_lenient(span))
        if found is not None:
            return ParsedAnswer(
                normalize_decision(found["decision"]),
                normalize_confidence(found.get("confidence")),
                _clean_refined(found.get("refined_hypothesis")),
                "json",
            )
    parsed = _fallback(answer)
    if parsed is not None:
        return parsed
    return ParsedAnswer(INVALID, None, None, "none")


# ---------------------------------------------------------------------------------------------------- token prob

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


# ---------------------------------------------------------------------------------------------------- prediction


def completion_prediction(id: str, completion, answer_prefix: str = "", in_think: bool = False,
                          latency_s: float = 0.0, tokenizer=None) -> Prediction:
    """The Prediction for one engine `Completion`: the parser reads `answer_prefix + completion.text`, which is
    kept as `raw`; `truncated` when the token budget, not EOS, ended it. With `tokenizer`, `decision_prob` is the
    model's probability of the decision word, and it is the returned `confidence` (module doc)."""
    raw = answer_prefix + completion.text
    parsed = parse_answer(raw, in_think=in_think)
    prob = None
    if tokenizer is not None:
        prob = decision_prob(tokenizer, completion.tokens, completion.logprobs, parsed.decision, answer_prefix)
    source = "decision_prob" if prob is not None else ("stated" if parsed.confidence is not None else None)
    return Prediction(
        id=id, decision=parsed.decision, confidence=prob if prob is not None else parsed.confidence,
        stated_confidence=parsed.confidence, confidence_source=source, refined_hypothesis=parsed.refined_hypothesis,
        raw=raw, prompt_tokens=completion.prompt_tokens, completion_tokens=len(completion.tokens),
        truncated=completion.finish_reason == "length", latency_s=round(latency_s, 4), decision_prob=prob)
