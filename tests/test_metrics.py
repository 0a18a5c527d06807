"""Metrics against values computed by hand on a small fixed table (see the table in the comments)."""

import math

import pytest

from mlxhv.eval import metrics as M
from mlxhv.schema import INVALID, Example, Prediction

V, J, F = "VALIDATED", "REJECTED", "REFINED"

# id  gold  pred     conf  domain   level   correct
# 1   V     V        0.9   finance  1       1
# 2   V     V        0.8   finance  2       1
# 3   V     J        0.6   risk     3       0
# 4   J     J        0.7   risk     1       1
# 5   J     INVALID  None  finance  4       0
# 6   F     F        0.5   risk     3       1
# 7   F     V        1.0   finance  2       0
# 8   V     V        None  risk     1       1     (a decision stated without a confidence)
TABLE = [
    (V, V, 0.9, "finance", 1), (V, V, 0.8, "finance", 2), (V, J, 0.6, "risk", 3), (J, J, 0.7, "risk", 1),
    (J, INVALID, None, "finance", 4), (F, F, 0.5, "risk", 3), (F, V, 1.0, "finance", 2), (V, V, None, "risk", 1),
]
GOLD = [r[0] for r in TABLE]
PRED = [r[1] for r in TABLE]
CONF = [r[2] for r in TABLE]


def make_example(i, gold, domain="finance", level=1):
    return Example(
        id=f"ex-{i}", hypothesis="h", evidence=[{"source": "s", "content": "c", "relevance": 0.5}],
        expected_decision=gold, confidence=0.8, refined_hypothesis="r" if gold == F else None,
        metadata={"domain": domain, "difficulty_level": level, "topic": "t"})


def make_pred(i, pred, conf, **kw):
    return Prediction(id=f"ex-{i}", decision=pred, confidence=conf, **kw)


def approx(x):
    return pytest.approx(x, abs=1e-12)


def test_accuracy_and_parse_failures():
    assert M.accuracy(GOLD, PRED) == approx(5 / 8)
    assert M.parse_failure_rate(PRED) == approx(1 / 8)
    assert M.correctness(GOLD, PRED) == [True, True, False, True, False, True, False, True]


def test_per_class_and_macro_f1():
    prf = M.per_class_prf(GOLD, PRED)
    # VALIDATED: tp 3 (1,2,8), fp 1 (7), fn 1 (3)
    assert prf[V] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4, "predicted": 4}
    # REJECTED: tp 1 (4), fp 1 (3), fn 1 (5, INVALID)
    assert prf[J] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "predicted": 2}
    # REFINED: tp 1 (6), fp 0, fn 1 (7)
    assert prf[F]["precision"] == 1.0 and prf[F]["recall"] == 0.5 and prf[F]["f1"] == approx(2 / 3)
    assert M.macro_f1(prf) == approx((0.75 + 0.5 + 2 / 3) / 3)


def test_confusion_has_invalid_column():
    cm = M.confusion_matrix(GOLD, PRED)
    assert cm == {
        V: {V: 3, J: 1, F: 0, INVALID: 0},
        J: {V: 0, J: 1, F: 0, INVALID: 1},
        F: {V: 1, J: 0, F: 1, INVALID: 0},
    }


def test_brier_and_ece_score_invalid_as_confidence_zero():
    ok = M.correctness(GOLD, PRED)
    q = M.scored_confidences(PRED, CONF)
    assert q == [0.9, 0.8, 0.6, 0.7, 0.0, 0.5, 1.0, 0.0]
    # (0.1² + 0.2² + 0.6² + 0.3² + 0² + 0.5² + 0² ... ) : .01 + .04 + .36 + .09 + 0 + .25 + 1 + 1 = 2.75
    assert M.brier(q, ok) == approx(2.75 / 8)
    # bin 0 holds #5 (wrong) and #8 (right) at confidence 0: |0.5 - 0| · 2/8; every other item is alone in its
    # bin: (.1 + .2 + .6 + .3 + .5 + 1.0) / 8
    assert M.ece(q, ok) == approx(0.5 * 2 / 8 + 2.7 / 8)


def test_reliability_bins_edges():
    bins = M.reliability_bins([0.0, 1 / 15, 0.999, 1.0], [True, False, True, False])
    assert len(bins) == 15
    assert bins[0]["count"] == 1 and bins[1]["count"] == 1  # 1/15 starts bin 1
    assert bins[14]["count"] == 2 and bins[14]["accuracy"] == 0.5  # 1.0 falls in the last bin
    assert bins[5]["accuracy"] is None and bins[5]["confidence"] is None
    with pytest.raises(ValueError):
        M.reliability_bins([1.2], [True])


def test_mean_confidence_right_and_wrong():
    ok = M.correctness(GOLD, PRED)
    stated = [None if p == INVALID else c for p, c in zip(PRED, CONF)]
    out = M.mean_confidence_by_outcome(stated, ok)
    assert out["right"] == approx((0.9 + 0.8 + 0.7 + 0.5) / 4)  # #8 stated none
    assert out["wrong"] == approx((0.6 + 1.0) / 2)  # #5 is INVALID


def test_compute_metrics_overall_answered_and_breakdowns():
    exs = [make_example(i, g, d, lv) for i, (g, _, _, d, lv) in enumerate(TABLE, 1)]
    preds = [make_pred(i, p, c, completion_tokens=10 * i, prompt_tokens=100, truncated=(i == 7))
             for i, (_, p, c, _, _) in enumerate(TABLE, 1)]
    m = M.compute_metrics(exs, preds)
    assert m["n"] == 8 and m["n_missing"] == 0
    assert m["accuracy"] == approx(5 / 8)
    assert m["brier"] == approx(2.75 / 8)
    assert m["ece"] == approx(0.125 + 2.7 / 8)
    # answered only: #1,2,3,4,6,7 with conf .9 .8 .6 .7 .5 1.0 and correct 1 1 0 1 1 0
    assert m["n_answered"] == 6
    assert m["brier_answered"] == approx((0.01 + 0.04 + 0.36 + 0.09 + 0.25 + 1.0) / 6)
    assert m["ece_answered"] == approx((0.1 + 0.2 + 0.6 + 0.3 + 0.5 + 1.0) / 6)
    assert m["mean_confidence_right"] == approx(0.725)
    assert m["mean_confidence_wrong"] == approx(0.8)
    assert m["by_domain"]["finance"]["accuracy"] == 0.5 and m["by_domain"]["finance"]["n"] == 4
    assert m["by_domain"]["risk"]["accuracy"] == 0.75
    assert {k: v["accuracy"] for k, v in m["by_level"].items()} == {"1": 1.0, "2": 0.5, "3": 0.5, "4": 0.0}
    assert m["by_level"]["4"]["parse_failure_rate"] == 1.0
    assert m["mean_output_tokens"] == approx(45.0)
    assert m["truncated_rate"] == approx(1 / 8)
    assert sum(b["count"] for b in m["reliability"]) == 8


def test_all_invalid():
    gold = [V, J, F, V]
    pred = [INVALID] * 4
    conf = [None] * 4
    m = M.quality_metrics(gold, pred, conf)
    assert m["accuracy"] == 0.0 and m["parse_failure_rate"] == 1.0
    for k in (V, J, F):
        assert m["per_class"][k]["precision"] is None  # nothing predicted
        assert m["per_class"][k]["recall"] == 0.0 and m["per_class"][k]["f1"] == 0.0
    assert m["macro_f1"] == 0.0
    assert m["confusion"][V][INVALID] == 2
    # wrong with confidence 0: calibrated about saying nothing; the answered-only view is undefined
    assert m["ece"] == 0.0 and m["brier"] == 0.0
    assert m["n_answered"] == 0 and m["ece_answered"] is None and m["brier_answered"] is None
    assert m["mean_confidence_right"] is None and m["mean_confidence_wrong"] is None


def test_single_class():
    gold = [V, V, V]
    m = M.quality_metrics(gold, [V, V, V], [1.0, 1.0, 0.8])
    assert m["accuracy"] == 1.0
    assert m["per_class"][V]["f1"] == 1.0
    assert m["per_class"][J]["f1"] is None and m["per_class"][F]["f1"] is None  # absent from gold and pred
    assert m["macro_f1"] == 1.0
    assert m["brier"] == approx(0.04 / 3)
    # bins 14 (two at 1.0, both right) and 12 (0.8, right): |1-1|·2/3 + |1-0.8|·1/3
    assert m["ece"] == approx(0.2 / 3)
    m = M.quality_metrics(gold, [V, J, V], [0.9, 0.6, 0.7])
    assert m["per_class"][V]["f1"] == approx(0.8)  # tp 2, fn 1
    assert m["per_class"][J] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0, "predicted": 1}
    assert m["macro_f1"] == approx(0.4)


def test_empty():
    m = M.quality_metrics([], [], [])
    assert m["n"] == 0 and m["accuracy"] is None and m["ece"] is None and m["brier"] is None
    assert m["macro_f1"] is None


def test_missing_and_unknown_predictions():
    exs = [make_example(i, V) for i in range(3)]
    m = M.compute_metrics(exs, [make_pred(0, V, 0.9)])
    assert m["n"] == 1 and m["n_missing"] == 2 and m["accuracy"] == 1.0
    with pytest.raises(ValueError, match="ex-9"):
        M.compute_metrics(exs, [make_pred(9, V, 0.9)])
    with pytest.raises(ValueError, match="two predictions"):
        M.compute_metrics(exs, [make_pred(0, V, 0.9), make_pred(0, J, 0.9)])


def test_cost_metrics_aggregate_sessions():
    preds = [make_pred(0, V, 0.9, completion_tokens=10), make_pred(1, V, 0.9, completion_tokens=30)]
    sessions = [
        {"n": 1, "prompt_tokens": 100, "generation_tokens": 10, "prompt_tps": 50.0, "generation_tps": 5.0,
         "wall_s": 4.0, "peak_memory_gb": 1.0},
        {"n": 1, "prompt_tokens": 300, "generation_tokens": 30, "prompt_tps": 100.0, "generation_tps": 10.0,
         "wall_s": 6.0, "peak_memory_gb": 2.5},
    ]
    c = M.cost_metrics(preds, sessions)
    assert c["mean_output_tokens"] == 20.0
    assert c["prompt_tps"] == approx(400 / (2 + 3))  # Σ tokens / Σ (tokens / tps)
    assert c["generation_tps"] == approx(40 / (2 + 3))
    assert c["wall_s"] == 10.0 and c["examples_per_s"] == approx(0.2) and c["peak_memory_gb"] == 2.5
    assert M.cost_metrics(preds)["prompt_tps"] is None
    assert not math.isnan(M.cost_metrics([])["truncated_rate"] or 0.0)


# ------------------------------------------------------------------------------------------ AUROC, token metrics

AUROC_CASES = [
    # (scores, labels)
    ([0.9, 0.8, 0.3, 0.1], [True, True, False, False]),  # perfect
    ([0.1, 0.2, 0.8, 0.9], [True, True, False, False]),  # inverted
    ([0.5, 0.5, 0.5, 0.5], [True, False, True, False]),  # all tied: 0.5
    ([0.9, 0.7, 0.7, 0.7, 0.2], [True, True, False, False, True]),  # a tie across the classes
    ([1.0, 1.0, 0.0, 0.0, 0.0, 0.6], [True, False, False, False, True, True]),  # ties at both ends
    ([0.2, 0.9, 0.4, 0.4, 0.6, 0.1, 0.9, 0.3], [False, True, True, False, True, False, False, True]),
    ([0.0, 0.0, 0.85, 0.85, 0.85, 0.7, 0.7], [False, False, True, False, True, True, False]),
]


@pytest.mark.parametrize("scores,labels", AUROC_CASES)
def test_auroc_matches_sklearn(scores, labels):
    from sklearn.metrics import roc_auc_score

    assert M.auroc(scores, labels) == approx(roc_auc_score(labels, scores))


def test_auroc_matches_sklearn_on_random_tables():
    import random

    from sklearn.metrics import roc_auc_score

    rng = random.Random(0)
    for n in (2, 5, 17, 60):
        for _ in range(20):
            labels = [rng.random() < 0.6 for _ in range(n)]
            if len(set(labels)) < 2:
                continue
            scores = [rng.choice([0.0, 0.25, 0.5, 0.5, 0.75, 1.0]) if rng.random() < 0.5 else rng.random()
                      for _ in range(n)]  # many ties
            assert M.auroc(scores, labels) == approx(roc_auc_score(labels, scores))


def test_auroc_undefined_with_one_class_and_a_slow_reference():
    assert math.isnan(M.auroc([0.1, 0.9], [True, True])) and math.isnan(M.auroc([0.3], [False]))
    assert math.isnan(M.auroc([], []))
    scores, labels = AUROC_CASES[5]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    slow = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert M.auroc(scores, labels) == approx(slow)
    with pytest.raises(ValueError):
        M.auroc([0.1], [True, False])


# The decision-token probabilities of TABLE's predictions (None: unknown; #5 is INVALID, so it scores 0 anyway)
TOKEN = [0.6, 0.95, 0.9, 0.7, 0.3, None, 0.55, 0.8]


def test_auroc_and_token_metrics_in_quality_metrics():
    ok = M.correctness(GOLD, PRED)  # 1 1 0 1 0 1 0 1
    m = M.quality_metrics(GOLD, PRED, CONF, decision_prob=TOKEN)
    # stated, scored: .9 .8 .6 .7 0 .5 1.0 0 — right {.9, .8, .7, .5, 0}, wrong {.6, 0, 1.0}
    # pairs (right > wrong) + ½ ties: .9: 2, .8: 2, .7: 2, .5: 1, 0: ½ (tie with #5) → 7.5 / 15
    assert m["auroc"] == approx(7.5 / 15)
    # answered only: right {.9, .8, .7, .5}, wrong {.6, 1.0}: .9: 1, .8: 1, .7: 1, .5: 0 → 3 / 8
    assert m["auroc_answered"] == approx(3 / 8)
    # token, scored: .6 .95 .9 .7 0 0 .55 .8 — right {.6, .95, .7, 0, .8}, wrong {.9, 0, .55}
    # .6: 2, .95: 3, .7: 2, 0: ½, .8: 2 → 9.5 / 15
    q = [0.6, 0.95, 0.9, 0.7, 0.0, 0.0, 0.55, 0.8]
    assert m["n_token"] == 6 and m["auroc_token"] == approx(9.5 / 15)
    assert m["brier_token"] == approx(sum((a - float(c)) ** 2 for a, c in zip(q, ok)) / 8)
    # bin 0 holds #5 (wrong) and #6 (right) → |0.5 − 0|·2/8; the rest are alone in their bins
    assert m["ece_token"] == approx(0.5 * 2 / 8 + (0.4 + 0.05 + 0.9 + 0.3 + 0.55 + 0.2) / 8)
    assert m["ece"] == approx(0.125 + 2.7 / 8)
    assert m["better_calibrated"] == "token"  # 0.425 < 0.4625


def test_token_metrics_are_none_without_probabilities():
    m = M.quality_metrics(GOLD, PRED, CONF)
    assert m["n_token"] == 0 and m["ece_token"] is None and m["auroc_token"] is None and m["brier_token"] is None
    assert m["better_calibrated"] is None
    m = M.quality_metrics([V, V], [V, V], [0.9, 0.8], decision_prob=[0.7, 0.6])
    assert m["auroc"] is None and m["auroc_token"] is None  # one class: undefined, stored as null
    assert M.better_calibrated(0.1, 0.2) == "stated" and M.better_calibrated(0.2, 0.2) == "tie"


def test_by_predicted_class_and_compute_metrics_with_token_probs():
    exs = [make_example(i, g, d, lv) for i, (g, _, _, d, lv) in enumerate(TABLE, 1)]
    preds = [make_pred(i, p, c, decision_prob=t) for i, ((_, p, c, _, _), t) in enumerate(zip(TABLE, TOKEN), 1)]
    m = M.compute_metrics(exs, preds)
    assert m["n_token"] == 6 and m["auroc"] == approx(7.5 / 15) and m["auroc_token"] == approx(9.5 / 15)
    c = m["by_predicted_class"]
    # predicted V: #1 (.9, right), #2 (.8, right), #7 (1.0, wrong), #8 (None → 0, right)
    assert c[V]["n"] == 4 and c[V]["accuracy"] == 0.75
    assert c[V]["mean_confidence"] == approx(2.7 / 4)
    assert c[V]["ece"] == approx((0.1 + 0.2 + 1.0 + 1.0) / 4)
    # token: .6 (right), .95 (right), .55 (wrong), .8 (right)
    assert c[V]["mean_token_prob"] == approx(2.9 / 4)
    assert c[V]["ece_token"] == approx((0.4 + 0.05 + 0.55 + 0.2) / 4)
    assert sum(b["count"] for b in c[V]["reliability"]) == 4
    # predicted J: #3 (.6 wrong), #4 (.7 right); predicted F: #6 (.5 right, no token prob)
    assert c[J]["n"] == 2 and c[J]["accuracy"] == 0.5 and c[J]["ece"] == approx((0.6 + 0.3) / 2)
    assert c[F]["n"] == 1 and c[F]["mean_token_prob"] is None and c[F]["ece_token"] is None
    assert sum(b["count"] for b in m["reliability_token"]) == 8
    assert m["by_domain"]["finance"]["auroc"] is not None and "ece_token" in m["by_level"]["1"]
    # a run without token probabilities (an older predictions.jsonl)
    m = M.compute_metrics(exs, [make_pred(i, p, c) for i, (_, p, c, _, _) in enumerate(TABLE, 1)])
    assert m["reliability_token"] is None and m["ece_token"] is None
    assert m["by_predicted_class"][V]["ece_token"] is None


def test_prediction_without_decision_prob_still_loads():
    old = '{"id": "a", "decision": "REJECTED", "confidence": 0.4, "raw": "x", "completion_tokens": 3}'
    p = Prediction.model_validate_json(old)
    assert p.decision_prob is None
    assert Prediction(id="a", decision=V, decision_prob=0.25).decision_prob == 0.25
    with pytest.raises(ValueError):
        Prediction(id="a", decision=V, decision_prob=1.5)
