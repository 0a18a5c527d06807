"""The judge prompt and the answer parser, shared by `mlxhv eval` and the PPO trainer.

Prompt: a system message stating the three decisions and the answer format, and a user message with the
hypothesis and the numbered evidence (source, relevance, content), rendered with the model's chat template
(`render_prompt`). The model may reason first; it must end with one JSON object

    {"decision": "VALIDATED" | "REJECTED" | "REFINED", "confidence": 0.0-1.0, "refined_hypothesis": "…" | null}

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
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from mlxhv.errors import SettingsError
from mlxhv.schema import INVALID, Example

SYSTEM_PROMPT = """You are a rigorous research analyst. You judge a business hypothesis against the evidence given.

Decide one of:
- VALIDATED: the evidence, weighted by relevance, supports the hypothesis as stated.
- REJECTED: the evidence contradicts the hypothesis or fails to support it.
- REFINED: the evidence supports the hypothesis only in a narrower scope or under a condition; then rewrite the \
hypothesis so that it holds.

Give little weight to evidence of low relevance, however strongly it is worded. Your confidence is the \
probability, from 0 to 1, that your decision is correct.

End your answer with exactly one JSON object on its own line:
{"decision": "VALIDATED" | "REJECTED" | "REFINED", "confidence": <number from 0 to 1>, \
"refined_hypothesis": <the rewritten hypothesis if REFINED, else null>}"""

USER_TEMPLATE = """Hypothesis: {hypothesis}

Evidence:
{evidence}

Is the hypothesis validated, rejected or refined by this evidence? Weigh it, then end your answer with the JSON \
object {{"decision": …, "confidence": …, "refined_hypothesis": …}}."""

# The question is in lower case on purpose: a small model that echoes it names all three decisions, which the
# parser's fallback reads as no answer (an upper-case echo would read as REFINED, the last word).


def format_evidence(example: Example) -> str:
    """Numbered evidence lines: `1. [source: …; relevance: 0.75] content`."""
    return "\n".join(
        f"{i}. [source: {ev.source}; relevance: {ev.relevance:.2f}] {ev.content}"
        for i, ev in enumerate(example.evidence, start=1)
    )


def build_messages(example: Example, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """The chat messages (system + user) for one example."""
    user = USER_TEMPLATE.format(hypothesis=example.hypothesis, evidence=format_evidence(example))
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


# An answer prefix ("prefill") opens the assistant's turn with the start of the JSON answer, so the model's first
# token is the decision. Small models that cannot follow the format on their own then always answer, and ECE
# measures their calibration instead of counting refusals as "confidence 0, wrong". No reasoning happens before
# the answer, so it is for small non-reasoning judges; models whose template opens <think> reject it.
JSON_ANSWER_PREFIX = '{"decision": "'


def load_system_prompt(path: str | None) -> str:
    """The system prompt: SYSTEM_PROMPT, or the text of the file at `path` (a prompt variant for a run)."""
    if not path:
        return SYSTEM_PROMPT
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"{path}: system prompt file not found")
    text = p.read_text(encoding="utf-8").strip()
    if not text:
        raise SettingsError(f"{path}: system prompt file is empty")
    return text


def resolve_answer_prefix(value: str | None) -> str:
    """Settings and the CLI accept "json" as a name for JSON_ANSWER_PREFIX; anything else is used as given."""
    return JSON_ANSWER_PREFIX if value == "json" else (value or "")


PROMPT_CONFIG_FILE = "judge_prompt.json"


@dataclass(frozen=True)
class PromptConfig:
    """How a judge adapter was trained to be prompted; saved beside its weights so every user prompts it alike.

    `system_prompt` is the full text (None: SYSTEM_PROMPT), so an adapter directory is self-contained offline."""

    system_prompt: Optional[str] = None
    answer_prefix: str = ""
    max_tokens: Optional[int] = None

    @property
    def system_prompt_text(self) -> str:
        return self.system_prompt or SYSTEM_PROMPT


def write_prompt_config(adapter_dir, config: PromptConfig) -> None:
    """Write `adapter_dir/judge_prompt.json` (mlx-lm ignores the file; `read_prompt_config` reads it back)."""
    from pathlib import Path

    d = dataclasses.asdict(config)
    if d["system_prompt"] == SYSTEM_PROMPT:
        d["system_prompt"] = None
    (Path(adapter_dir) / PROMPT_CONFIG_FILE).write_text(json.dumps(d, indent=2) + "\n")


def read_prompt_config(adapter_dir) -> Optional[PromptConfig]:
    """The PromptConfig saved with an adapter, or None for an adapter without one (made by mlx_lm.lora, say)."""
    from pathlib import Path

    from mlxhv.errors import ModelLoadError

    path = Path(adapter_dir) / PROMPT_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return PromptConfig(**d)
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelLoadError(f"{path}: not a judge prompt config ({e})") from None


def render_prompt(tokenizer, example: Example, system_prompt: str = SYSTEM_PROMPT,
                  answer_prefix: str = "") -> list[int]:
    """Token ids of the example's messages in the model's chat template, ending with the generation prompt
    and then `answer_prefix` (the opening of the assistant's answer; the parser reads prefix + completion)."""
    messages = build_messages(example, system_prompt)
    try:
        from mlxhv.models import apply_chat_template
    except ImportError:  # the loader is optional for callers that bring their own tokenizer
        apply_chat_template = None
    if apply_chat_template is not None:
        ids = list(apply_chat_template(tokenizer, messages))
    else:
        ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    if answer_prefix:
        if prompt_opens_think(tokenizer, ids):
            raise SettingsError("answer_prefix: this model's chat template opens a <think> block; an answer prefix "
                             "would land inside its reasoning. Leave it empty for reasoning models.")
        ids += list(tokenizer.encode(answer_prefix, add_special_tokens=False))
    return ids


def prompt_opens_think(tokenizer, prompt_ids: list[int]) -> bool:
    """True when the rendered prompt ends inside an open `<think>` block (QwQ's template does this)."""
    tail = tokenizer.decode(list(prompt_ids[-8:]))
    return tail.rstrip().endswith("<think>")


# ---------------------------------------------------------------------------------------------------- parser


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
