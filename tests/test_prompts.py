"""The judge prompt and the answer parser, on outputs shaped like what QwQ and small models write."""

import pytest

from mlxhv.data import synth_examples
from mlxhv.answer import (
    _DECISION_ALIASES, json_objects, normalize_confidence, normalize_decision, parse_answer, strip_think,
)
from mlxhv.prompts import (
    JSON_ANSWER_PREFIX, SYSTEM_PROMPT, build_messages, prompt_opens_think, render_prompt, resolve_answer_prefix,
)
from mlxhv.schema import DECISIONS, INVALID


def test_messages_show_hypothesis_and_numbered_evidence():
    ex = synth_examples(1, seed=3)[0]
    msgs = build_messages(ex)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == SYSTEM_PROMPT
    assert '"decision"' in SYSTEM_PROMPT and '"confidence"' in SYSTEM_PROMPT and "refined_hypothesis" in SYSTEM_PROMPT
    user = msgs[1]["content"]
    assert ex.hypothesis in user
    for i, ev in enumerate(ex.evidence, 1):
        assert f"{i}. [source: {ev.source}; relevance: {ev.relevance:.2f}] {ev.content}" in user
    assert ex.expected_decision.value not in user  # the label never leaks into the prompt


class FakeTokenizer:
    """Chat template: '<|role|>content' per message, then '<|assistant|>' (+ '<think>\\n' like QwQ)."""

    chat_template = "fake"

    def __init__(self, think=False):
        self.think = think

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, **kw):
        text = "".join(f"<|{m['role']}|>{m['content']}" for m in messages)
        text += "<|assistant|>" + ("<think>\n" if self.think else "")
        return [ord(c) for c in text] if tokenize else text

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_render_prompt_and_think_detection():
    ex = synth_examples(1, seed=0)[0]
    ids = render_prompt(FakeTokenizer(), ex)
    assert FakeTokenizer().decode(ids).startswith("<|system|>" + SYSTEM_PROMPT)
    assert not prompt_opens_think(FakeTokenizer(), ids)
    ids = render_prompt(FakeTokenizer(think=True), ex)
    assert prompt_opens_think(FakeTokenizer(think=True), ids)


def test_answer_prefix_opens_the_answer():
    ex = synth_examples(1, seed=0)[0]
    tok = FakeTokenizer()
    plain = render_prompt(tok, ex)
    ids = render_prompt(tok, ex, answer_prefix=resolve_answer_prefix("json"))
    assert ids == plain + tok.encode('{"decision": "')
    assert resolve_answer_prefix("Answer: ") == "Answer: " and resolve_answer_prefix(None) == ""
    # the parser reads prefix + completion as one JSON answer
    p = parse_answer(JSON_ANSWER_PREFIX + 'REJECTED", "confidence": 0.35}')
    assert (p.decision, p.confidence, p.method) == ("REJECTED", 0.35, "json")
    with pytest.raises(ValueError, match="think"):
        render_prompt(FakeTokenizer(think=True), ex, answer_prefix=JSON_ANSWER_PREFIX)


QWQ = """Okay, let me look at the evidence. Evidence 1 is background. The hypothesis might be REJECTED if \
the effect is scoped... {"decision": "REJECTED", "confidence": 0.2} is one option, but no.
</think>

The evidence supports the claim only for firms with stable cash flow.

```json
{"decision": "REFINED", "confidence": 0.82, "refined_hypothesis": "For firms with stable free cash flow, raising the payout raises returns."}
```"""


@pytest.mark.parametrize("text, decision, confidence, method", [
    # a QwQ answer: reasoning (with a decoy JSON) closed by </think>, then prose and a fenced JSON
    (QWQ, "REFINED", 0.82, "json"),
    # prose around JSON
    ('After weighing the sources I conclude:\n{"decision": "VALIDATED", "confidence": 0.9, '
     '"refined_hypothesis": null}\nThis is my final answer.', "VALIDATED", 0.9, "json"),
    # trailing commas
    ('{"decision": "REJECTED", "confidence": 0.75, "refined_hypothesis": null,}', "REJECTED", 0.75, "json"),
    ('{"decision": "REJECTED", "confidence": 0.75, "refined_hypothesis": null ,\n}', "REJECTED", 0.75, "json"),
    # two JSON objects: the last one wins
    ('{"decision": "VALIDATED", "confidence": 0.6}\nOn reflection:\n{"decision": "REJECTED", "confidence": 0.7}',
     "REJECTED", 0.7, "json"),
    # a later JSON object without a decision does not hide the answer
    ('{"decision": "VALIDATED", "confidence": 0.66}\n{"note": "done"}', "VALIDATED", 0.66, "json"),
    # Python-style dict with single quotes, lower-case decision, percentage confidence
    ("{'decision': 'rejected', 'confidence': '80%', 'refined_hypothesis': None}", "REJECTED", 0.8, "json"),
    # nested object, braces inside strings
    ('{"answer": {"decision": "VALIDATED", "confidence": 95, "refined_hypothesis": "a {weird} one"}}',
     "VALIDATED", 0.95, "json"),
    # fallbacks: truncated JSON, "Decision: X", an upper-case word, then any case
    ('Final answer: {"decision": "REJECTED", "confidence": 0.85, "refined_hyp', "REJECTED", 0.85, "fallback"),
    ("Decision: Validated\nConfidence: 0.7", "VALIDATED", 0.7, "fallback"),
    ("Evidence 1 and 2 contradict it, so the hypothesis is REJECTED (confidence 90%).", "REJECTED", 0.9,
     "fallback"),
    ("Evidence 1 and 2 contradict it. REJECTED", "REJECTED", None, "fallback"),  # bare integers are not confidences
    ("The hypothesis should be refined. I am fairly sure: .7", "REFINED", 0.7, "fallback"),
    # negated words are skipped; prose naming several decisions (a small model echoing the options) is no answer
    ("It cannot be VALIDATED; the data show it is REJECTED", "REJECTED", None, "fallback"),
    ("The hypothesis is REJECTED, not VALIDATED.", "REJECTED", None, "fallback"),
    ("The hypothesis isn't validated by this evidence, it should be refined.", "REFINED", None, "fallback"),
    ("The hypothesis is not validated, rejected, or refined.", INVALID, None, "none"),
    ("The hypothesis is indeed validated, rejected, refined, and refined.", INVALID, None, "none"),
    # nothing usable
    ("", INVALID, None, "none"),
    ("I am not sure what to say about this hypothesis.", INVALID, None, "none"),
    ('{"decision": "MAYBE", "confidence": 0.5}', INVALID, None, "none"),
    # a think block the model opened and never closed: nothing after it is an answer
    ("<think>It could be VALIDATED or REJECTED", INVALID, None, "none"),
])
def test_parse_answer(text, decision, confidence, method):
    p = parse_answer(text)
    assert (p.decision, p.method) == (decision, method)
    assert p.confidence == (pytest.approx(confidence) if confidence is not None else None)


def test_parse_keeps_refined_hypothesis():
    p = parse_answer(QWQ)
    assert p.refined_hypothesis == "For firms with stable free cash flow, raising the payout raises returns."
    assert parse_answer('{"decision": "VALIDATED", "confidence": 0.9, "refined_hypothesis": "null"}') \
        .refined_hypothesis is None


def test_unfinished_think_when_prompt_opened_it():
    # QwQ's template opens <think> in the prompt; a completion cut by the token budget never closes it
    text = 'Hmm, {"decision": "VALIDATED", "confidence": 0.9} could be right but let me check evidence 3'
    assert parse_answer(text, in_think=True).method == "unfinished_think"
    assert parse_answer(text, in_think=True).decision == INVALID
    assert parse_answer(text + '</think>{"decision": "REJECTED", "confidence": 0.6}', in_think=True).decision \
        == "REJECTED"
    assert parse_answer(text).decision == "VALIDATED"  # without a think block the JSON counts


def test_last_think_close_wins():
    text = 'a</think>{"decision": "VALIDATED", "confidence": 0.5}</think>{"decision": "REFINED", "confidence": 0.4}'
    assert parse_answer(text).decision == "REFINED"


def test_helpers():
    assert json_objects('x {"a": "}"} y {"b": {"c": 1}} {unclosed') == ['{"a": "}"}', '{"b": {"c": 1}}']
    assert normalize_decision(" Validated. ") == "VALIDATED"
    assert normalize_decision("INVALID") is None and normalize_decision(3) is None
    assert normalize_confidence(0.5) == 0.5 and normalize_confidence(1) == 1.0
    assert normalize_confidence(85) == 0.85 and normalize_confidence("85 %") == 0.85
    assert normalize_confidence(0.5) == 0.5 and normalize_confidence("0.5%") == pytest.approx(0.005)
    for bad in (-0.1, 150, "high", True, None, float("nan")):
        assert normalize_confidence(bad) is None


def test_single_quoted_value_with_a_brace_stays_one_object():
    """`_loads_lenient` reads Python-style '…' strings, so the span finder must skip braces inside them too; an
    apostrophe in unquoted text opens no string (else it would swallow the objects after it)."""
    text = ("Answer: {'decision': 'REFINED', 'confidence': 0.7, "
            "'refined_hypothesis': 'margins rise (except Q4 :-}) in retail'}")
    assert json_objects(text) == [text[len("Answer: "):]]
    p = parse_answer(text)
    assert (p.decision, p.confidence, p.method) == ("REFINED", 0.7, "json")
    assert p.refined_hypothesis == "margins rise (except Q4 :-}) in retail"
    text = "{note: don't know} then {'decision': 'REJECTED', 'confidence': 0.8} and {\"a\": \"it's }\"}"
    assert json_objects(text) == ["{note: don't know}", "{'decision': 'REJECTED', 'confidence': 0.8}",
                                  '{"a": "it\'s }"}']


@pytest.mark.parametrize("text, answer, value", [
    ('<think>{"a": 1}</think> {"a": 2}', ' {"a": 2}', {"a": 2}),
    ('x</think>{"a": 1}</think>{"a": 2}', '{"a": 2}', {"a": 2}),
    ('{"a": 3} <think>{"a": 1}', '{"a": 3} ', {"a": 3}),  # a think block the model opened and never closed
    ('{"a": 4}', '{"a": 4}', {"a": 4}),
    ('<think>{"a": 1} still thinking', '', None),        # only reasoning: no answer to read
])
def test_one_think_rule_for_judge_and_client(text, answer, value):
    """The judge parser and the OpenAI client's JSON reader read the same answer part of a reply."""
    from mlxhv.datagen.client import extract_json

    assert strip_think(text) == answer
    if value is None:
        with pytest.raises(ValueError, match="no JSON object"):
            extract_json(text)
    else:
        assert extract_json(text) == value


def test_decision_aliases_cover_the_decisions():
    """Was a module-level `assert` in mlxhv/prompts.py (gone under `python -O`)."""
    assert set(_DECISION_ALIASES.values()) == set(DECISIONS)
    assert {normalize_decision(d) for d in DECISIONS} == set(DECISIONS)


def test_no_module_level_asserts():
    """An invariant checked by a top-level `assert` vanishes under `python -O`: such checks belong in tests."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = [f"{path.relative_to(root)}:{node.lineno}"
             for pkg in ("mlxhv", "cli") for path in sorted((root / pkg).rglob("*.py"))
             for node in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(node, ast.Assert)]
    assert found == []
