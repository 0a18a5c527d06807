"""Unit tests of mlxhv.datagen without a server: plan, drafts, retry waits, redaction, dedupe, ledger."""

import json
import random
from collections import Counter

import httpx2 as httpx  # the HTTP library of the installed openai SDK
import pytest
from pydantic import ValidationError

from mlxhv.data.stats import balance_targets
from mlxhv.datagen.client import ClientSettings, extract_json, parse_retry_after, redact, retry_delay
from mlxhv.datagen.drafts import ExampleDraft, QAVerdict, draft_to_example, qa_accepts, qa_reasons
from mlxhv.datagen.ledger import Ledger, parse_price, price_for
from mlxhv.datagen.plan import apportion, plan_examples, plan_fingerprint
from mlxhv.datagen.topics import is_duplicate, normalize_title
from mlxhv.schema import DOMAINS, Topic


def topics(per_domain=3, domains=DOMAINS):
    return [Topic(id=f"{d[:3]}-t{i}", domain=d, title=f"{d} topic {i}") for d in domains for i in range(per_domain)]


def test_apportion_sums_and_is_proportional():
    assert apportion(350, {"a": 0.5, "b": 0.3, "c": 0.2}) == {"a": 175, "b": 105, "c": 70}
    assert apportion(3, {"a": 0.5, "b": 0.3, "c": 0.2}) == {"a": 1, "b": 1, "c": 1}
    assert apportion(7, {"x": 1, "y": 1, "z": 1}) == {"x": 3, "y": 2, "z": 2}
    for n in range(0, 40):
        assert sum(apportion(n, {"a": 0.37, "b": 0.41, "c": 0.22}).values()) == n


@pytest.mark.parametrize("n", [1, 5, 12, 60, 100, 350, 500])
def test_plan_is_balanced_even_and_unique(n):
    items = plan_examples(topics(), n, seed=3)
    assert len(items) == n and len({it.id for it in items}) == n
    per = Counter(it.decision for it in items)
    for d, (lo, hi) in balance_targets(n).items():
        assert lo <= per[d] <= hi, (d, per[d], lo, hi)
    per_domain = Counter(it.domain for it in items)
    assert max(per_domain.values()) - min(per_domain.values()) <= 1
    if n >= 100:  # every curriculum level present, REFINED leaning to level 3
        assert set(Counter(it.level for it in items)) == {1, 2, 3, 4}
        refined = Counter(it.level for it in items if it.decision == "REFINED")
        assert refined.most_common(1)[0][0] == 3


def test_plan_cells_spread_over_domains():
    items = plan_examples(topics(), 350, seed=0)
    cells = Counter((it.decision, it.level, it.domain) for it in items)
    for decision in ("VALIDATED", "REJECTED", "REFINED"):
        for level in (1, 2, 3, 4):
            counts = [cells[(decision, level, d)] for d in DOMAINS]
            assert max(counts) - min(counts) <= 1, (decision, level, counts)


def test_plan_is_deterministic_and_fingerprinted():
    a, b = plan_examples(topics(), 40, seed=1), plan_examples(topics(), 40, seed=1)
    assert a == b and plan_fingerprint(a) == plan_fingerprint(b)
    assert plan_fingerprint(plan_examples(topics(), 40, seed=2)) != plan_fingerprint(a)
    assert plan_fingerprint(plan_examples(topics(), 41, seed=1)) != plan_fingerprint(a)
    assert plan_fingerprint(plan_examples(topics(4), 40, seed=1)) != plan_fingerprint(a)


def test_plan_levels_domains_and_errors():
    items = plan_examples(topics(), 30, levels=(1, 2), domains=("finance", "risk"))
    assert {it.level for it in items} <= {1, 2} and {it.domain for it in items} == {"finance", "risk"}
    assert all(it.id.startswith(("gen-fin-", "gen-rsk-")) for it in items)
    with pytest.raises(ValueError, match="no topic for domain"):
        plan_examples(topics(domains=("finance",)), 10, domains=("finance", "risk"))
    with pytest.raises(ValueError, match="balance target"):
        plan_examples(topics(), 350, decision_weights={"VALIDATED": 1.0, "REJECTED": 0, "REFINED": 0})
    with pytest.raises(ValueError, match="levels"):
        plan_examples(topics(), 10, levels=(5,))


def test_draft_schemas_meet_strict_structured_output_rules():
    """What strict mode accepts: every property required, no extra properties, no defaults or range keywords."""
    from openai.lib._pydantic import to_strict_json_schema  # the SDK's own conversion, as parse() sends it

    banned = {"default", "minLength", "maxLength", "minimum", "maximum", "pattern", "minItems", "maxItems", "format"}

    def walk(node, path="$"):
        if isinstance(node, dict):
            assert not banned & set(node), f"{path}: {banned & set(node)}"
            if node.get("type") == "object":
                assert node.get("additionalProperties") is False, path
                assert set(node["required"]) == set(node["properties"]), path
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    for model in (ExampleDraft, QAVerdict):
        walk(to_strict_json_schema(model))
        # and pydantic agrees the fields are required (no defaults slipped in)
        assert all(f.is_required() for f in model.model_fields.values())


def draft(**kw):
    base = {"hypothesis": "H", "evidence": [{"source": "s", "content": "c", "relevance": 0.9}],
            "expected_decision": "VALIDATED", "confidence": 0.9, "refined_hypothesis": None}
    return ExampleDraft.model_validate({**base, **kw})


def test_draft_to_example_enforces_schema_rules_with_paths():
    ex = draft_to_example(draft(refined_hypothesis=""), id="gen-fin-0001", domain="finance", level=2, topic="T")
    assert ex.metadata.difficulty_level == 2 and ex.refined_hypothesis is None
    with pytest.raises(ValidationError, match="VALIDATED needs confidence"):
        draft_to_example(draft(confidence=0.3), id="x", domain="finance", level=1, topic="T")
    with pytest.raises(ValidationError) as e:
        draft_to_example(draft(evidence=[{"source": "s", "content": "c", "relevance": 1.7}]), id="x",
                         domain="finance", level=1, topic="T")
    assert e.value.errors()[0]["loc"] == ("evidence", 0, "relevance")
    with pytest.raises(ValidationError, match="REFINED needs"):
        draft_to_example(draft(expected_decision="REFINED", confidence=0.6), id="x", domain="finance", level=1,
                         topic="T")


def test_qa_acceptance_needs_every_check_and_same_decision():
    ex = draft_to_example(draft(), id="x", domain="finance", level=1, topic="T")
    ok = dict(judged_decision="VALIDATED", label_correct=True, difficulty_matches_level=True,
              confidence_consistent=True, evidence_realistic=True, accept=True, reasons=[])
    assert qa_accepts(QAVerdict(**ok), ex)
    assert not qa_accepts(QAVerdict(**{**ok, "evidence_realistic": False}), ex)
    v = QAVerdict(**{**ok, "judged_decision": "REJECTED"})
    assert not qa_accepts(v, ex)
    assert any("REJECTED" in r for r in qa_reasons(v, ex))
    v = QAVerdict(**{**ok, "accept": False, "difficulty_matches_level": False})
    assert qa_reasons(v, ex) == ["the difficulty does not match the curriculum level"]


def test_retry_after_parsing_and_backoff():
    h = httpx.Headers
    assert parse_retry_after(h({"retry-after": "3"})) == 3.0
    assert parse_retry_after(h({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert parse_retry_after(h({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # in the past
    assert parse_retry_after(h({})) is None and parse_retry_after(None) is None
    s = ClientSettings(backoff_base_s=1.0, backoff_max_s=5.0, max_retry_after_s=10.0)
    rng = random.Random(0)
    assert retry_delay(0, h({"retry-after": "2"}), s, rng) == 2.0
    assert retry_delay(0, h({"retry-after": "999"}), s, rng) == 10.0
    assert 0.75 <= retry_delay(0, None, s, rng) <= 1.0
    assert 3.0 <= retry_delay(2, None, s, rng) <= 4.0
    assert 3.75 <= retry_delay(10, None, s, rng) <= 5.0


def test_redact():
    assert redact("key sk-proj-abcDEF123456789 here") == "key sk-*** here"
    assert redact("token=mysecretvalue!", "mysecretvalue") == "token=***!"
    assert "sk-" not in redact("Incorrect API key provided: sk-test-*******7890.", "x").replace("sk-***", "")


def test_extract_json_tolerates_fences_prose_and_think():
    assert extract_json('Sure! ```json\n{"a": 1}\n``` done') == {"a": 1}
    assert extract_json('<think>{"no": 1}</think> {"a": {"b": [1, 2]}}') == {"a": {"b": [1, 2]}}
    assert extract_json('x {bad} then {"a": 2}') == {"a": 2}
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("nothing here")
    with pytest.raises(ValueError, match="malformed JSON"):
        extract_json('{"a": ')


def test_topic_duplicates():
    seen = [normalize_title("Dividend payout policy")]
    assert is_duplicate("The dividend payout policies", seen)
    assert is_duplicate("dividend  PAYOUT policy", seen)
    assert not is_duplicate("Share buybacks", seen)
    assert is_duplicate("  ", seen)


def test_ledger_prices_and_costs():
    assert price_for("o1-2024-12-17", {"o1": (15, 60), "o1-mini": (1, 4)}) == (15, 60)
    assert price_for("o1-mini-2024-09-12", {"o1": (15, 60), "o1-mini": (1, 4)}) == (1, 4)
    assert price_for("llama", {"o1": (15, 60)}) is None
    assert parse_price("my-model=1.5,2") == ("my-model", (1.5, 2.0))
    with pytest.raises(ValueError, match="MODEL=INPUT,OUTPUT"):
        parse_price("oops")
    led = Ledger({"o1": (15.0, 60.0)})
    led.record("o1", {"prompt_tokens": 1_000_000, "completion_tokens": 500_000,
                      "completion_tokens_details": {"reasoning_tokens": 400_000}})
    led.record("local", None)
    assert led.cost("o1") == pytest.approx(45.0)
    assert led.cost("local") is None and led.total_cost() is None
    back = Ledger.from_json(json.loads(json.dumps(led.to_json())), {"o1": (15.0, 60.0)})
    assert back.usage["o1"].reasoning_tokens == 400_000 and back.usage["local"].requests == 1


def test_read_done_checks_each_line_against_the_plan(tmp_path):
    from mlxhv.data import synth_examples
    from mlxhv.data.io import DataError
    from mlxhv.datagen.resume import read_done
    from mlxhv.datagen.plan import PlanItem

    a, b, c = synth_examples(3, seed=0)
    item = lambda ex, **kw: PlanItem(**{"id": ex.id, "domain": ex.metadata.domain,  # noqa: E731
                                        "level": ex.metadata.difficulty_level,
                                        "decision": ex.expected_decision.value, "topic_id": "t", "topic_title": "T",
                                        **kw})
    items = [item(a), item(b, level=4 if b.metadata.difficulty_level != 4 else 3)]
    out = tmp_path / "examples.jsonl"
    lines = [a.model_dump_json(), b.model_dump_json(), c.model_dump_json(), a.model_dump_json(), "{oops"]
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        read_done(out, items)
    got = [(err.line, err.field) for err in e.value.errors]
    assert got == [(2, "metadata"), (3, "id"), (4, "id"), (5, "")]
    msgs = [str(err) for err in e.value.errors]
    assert "the plan has" in msgs[0] and "is not in this plan" in msgs[1] and "first on line 1" in msgs[2]
    out.write_text(a.model_dump_json() + "\n")
    assert list(read_done(out, items)) == [a.id]
    out.write_text("")
    assert read_done(out, items) == {}
