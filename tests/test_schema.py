import json

import pytest
from pydantic import ValidationError

from mlxhv.schema import Decision, Example, Prediction, Topic, json_schema


def ex(**over):
    base = {
        "id": "fin-0001",
        "hypothesis": "Buybacks raise returns.",
        "evidence": [{"source": "A study", "content": "Returns rose 3%.", "relevance": 0.9}],
        "expected_decision": "VALIDATED",
        "confidence": 0.8,
        "refined_hypothesis": None,
        "metadata": {"domain": "finance", "difficulty_level": 1, "topic": "Buybacks"},
    }
    base.update(over)
    return base


def test_round_trip():
    e = Example.model_validate(ex())
    again = Example.model_validate(json.loads(e.to_json()))
    assert again == e
    assert again.expected_decision is Decision.VALIDATED
    assert json.loads(e.to_json()) == ex()


@pytest.mark.parametrize(
    "over, field",
    [
        ({"confidence": 0.6}, "VALIDATED needs confidence"),
        ({"expected_decision": "REFINED"}, "REFINED needs a refined_hypothesis"),
        ({"expected_decision": "REJECTED", "refined_hypothesis": "x"}, "must be null"),
        ({"expected_decision": "MAYBE"}, "expected_decision"),
        ({"evidence": []}, "evidence"),
        ({"confidence": 1.2}, "confidence"),
        ({"extra": 1}, "extra"),
        ({"evidence": [{"source": "s", "content": "c", "relevance": -0.1}]}, "evidence.0.relevance"),
        ({"metadata": {"domain": "finance", "difficulty_level": 5, "topic": "t"}}, "difficulty_level"),
    ],
)
def test_rejections(over, field):
    with pytest.raises(ValidationError) as info:
        Example.model_validate(ex(**over))
    assert field in str(info.value)


def test_refined_accepts_refined_hypothesis():
    e = Example.model_validate(ex(expected_decision="REFINED", confidence=0.6, refined_hypothesis="Only for small caps."))
    assert e.refined_hypothesis == "Only for small caps."


def test_prediction_and_topic():
    p = Prediction(id="a", decision="INVALID")
    assert not p.is_valid
    assert Prediction(id="a", decision="REJECTED", confidence=0.4).is_valid
    with pytest.raises(ValidationError):
        Prediction(id="a", decision="MAYBE")
    Topic(id="fin-t01", domain="finance", title="Dividend policy")
    with pytest.raises(ValidationError):
        Topic(id="fin-t01", domain="Finance!", title="x")


def test_json_schema_strict():
    s = json_schema("example")
    assert s["additionalProperties"] is False
    assert set(s["required"]) >= {"id", "hypothesis", "evidence", "expected_decision", "confidence", "metadata"}
