from collections import Counter

from mlxhv.data.synth import RELEVANCE_FLOOR, example_label, infer_stance, rule_label, synth_examples


def test_labels_agree_with_rule():
    exs = synth_examples(400, seed=11)
    for e in exs:
        label, conf = example_label(e)
        assert label == e.expected_decision.value, e.id
        assert conf == e.confidence
        assert 2 <= len(e.evidence) <= 7


def test_rule_by_hand():
    assert rule_label([("support", 0.9), ("support", 0.8)]) == ("VALIDATED", 0.97)
    # support 0.9 vs contradict 0.6: conf = 0.5 + 0.5 * 0.3 / 1.5 = 0.6
    assert rule_label([("support", 0.9), ("contradict", 0.6)]) == ("VALIDATED", 0.6)
    # low-relevance items are ignored
    assert rule_label([("contradict", 0.7), ("support", RELEVANCE_FLOOR - 0.01)])[0] == "REJECTED"
    assert rule_label([("scope", 0.8), ("support", 0.5), ("contradict", 0.2)])[0] == "REFINED"


def test_deterministic_and_balanced():
    a, b = synth_examples(50, seed=4), synth_examples(50, seed=4)
    assert [e.to_json() for e in a] == [e.to_json() for e in b]
    c = Counter(e.expected_decision.value for e in synth_examples(350, seed=0))
    assert c == {"VALIDATED": 175, "REJECTED": 105, "REFINED": 70}
    levels = Counter(e.metadata.difficulty_level for e in synth_examples(100, seed=0, levels=(1, 2)))
    assert set(levels) == {1, 2}


def test_level4_has_misleading_items_and_refined_text():
    exs = synth_examples(300, seed=2)
    l4 = [e for e in exs if e.metadata.difficulty_level == 4]
    assert l4 and all(any(ev.relevance < RELEVANCE_FLOOR for ev in e.evidence) for e in l4)
    for e in exs:
        if e.expected_decision.value == "REFINED":
            assert e.refined_hypothesis and e.refined_hypothesis != e.hypothesis
    assert infer_stance("It held only for small firms.") == "scope"


def test_decision_weights_balanced_and_validated():
    from collections import Counter

    import pytest

    from mlxhv.data.synth import parse_decision_weights

    assert parse_decision_weights("balanced") == {"VALIDATED": 1.0, "REJECTED": 1.0, "REFINED": 1.0}
    assert parse_decision_weights("rejected=2, VALIDATED=1") == {"REJECTED": 2.0, "VALIDATED": 1.0}
    exs = synth_examples(30, seed=3, levels=(1,), decision_weights=parse_decision_weights("balanced"))
    assert Counter(e.expected_decision.value for e in exs) == {"VALIDATED": 10, "REJECTED": 10, "REFINED": 10}
    exs = synth_examples(9, seed=3, decision_weights={"REJECTED": 2.0, "VALIDATED": 1.0, "REFINED": 0.0})
    assert Counter(e.expected_decision.value for e in exs) == {"REJECTED": 6, "VALIDATED": 3}
    for bad in ("VALID=1", "REJECTED", "REJECTED=x", "REJECTED=-1", "REJECTED=0"):
        with pytest.raises(ValueError, match="decision weight"):
            parse_decision_weights(bad)


def test_every_decision_has_a_main_stance():
    """Every decision has a main stance (a test, not an import-time assert: `python -O` drops asserts)."""
    from mlxhv.data.synth import MAIN_STANCE
    from mlxhv.schema import DECISIONS

    assert set(MAIN_STANCE) == set(DECISIONS)
