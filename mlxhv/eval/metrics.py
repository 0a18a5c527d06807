"""Judge metrics as plain functions. Inputs are parallel lists: gold decisions, predicted decisions (a decision or
"INVALID"), stated confidences (float or None).

Conventions (one place, used everywhere):
- INVALID — an output the parser could not read — is a prediction, and always a wrong one: it lowers accuracy and
  recall, and appears as its own column of the confusion matrix. It is not a class: it has no precision/F1 row.
- The *scored confidence* of a prediction is its stated confidence, or 0.0 when it has none (INVALID, or a
  decision without a number). `ece` and `brier` use it over every example: a judge that fails to answer is
  treated as having said "I don't know" — wrong with confidence 0 — so it costs accuracy, not calibration.
  `ece_answered` and `brier_answered` are the same metrics over only the predictions with both a decision and a
  confidence (None when there are none): the calibration of what the judge actually stated.
- Brier is the *top-label binary* Brier score: mean over examples of (q − c)², q the scored confidence in the
  predicted decision, c = 1 if that decision is right else 0. Range [0, 1]; 0 is perfect. It is the penalty term
  of the RLCR calibration reward (docs/design.md), so eval and RL measure the same thing. (Not the multi-class Brier,
  which would need a full distribution over the three decisions; the judge states one number.)
- ECE is top-label expected calibration error with `n_bins` (15) equal-width bins: bin b holds confidences in
  [b/n, (b+1)/n), the last bin also holds 1.0; ECE = Σ_b (n_b / N) · |acc_b − conf_b|, where acc_b is the share
  correct and conf_b the mean confidence in bin b.
- Per-class precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN); each is None when
  its denominator is 0. An INVALID prediction of a class-k example is a false negative for k. Macro-F1 is the mean
  F1 over the classes whose F1 is defined (those present in the gold labels or the predictions).
- AUROC of a confidence is how well it ranks right answers above wrong ones (Mann-Whitney, ties count ½); it is
  over the scored confidences of every example, like ECE (`auroc_answered`: answered only). Undefined (NaN from
  `auroc`, null in metrics.json) when every example is right or every one is wrong.
- The *returned* confidence, `Prediction.confidence` (`ece_returned`, `brier_returned`, `auroc_returned`), is
  the decision-token probability where known, else the stated number (mlxhv.answer).
- Two confidences are scored: the *stated* one (`ece`, `brier`, `auroc`) and the model's own probability of its
  decision word, `Prediction.decision_prob` (`ece_token`, `brier_token`, `auroc_token`; mlxhv.answer),
  with the same conventions (INVALID or unknown → 0). `better_calibrated` names the one with the lower ECE.
- Per predicted class (`by_predicted_class`): the examples the judge labelled k, their accuracy (= precision of
  k), mean confidences, ECEs and reliability bins — calibration of "when it says k with q, is it right q of the
  time".
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Optional, Sequence

from mlxhv.schema import DECISIONS, INVALID

N_BINS = 15


def _mean(xs: Sequence[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def correctness(gold: Sequence[str], pred: Sequence[str]) -> list[bool]:
    """Per-example correctness: the predicted decision equals the gold one (INVALID never does)."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} labels, pred has {len(pred)}")
    return [p != INVALID and p == g for g, p in zip(gold, pred)]


def scored_confidences(pred: Sequence[str], confidence: Sequence[Optional[float]]) -> list[float]:
    """Stated confidence, or 0.0 for INVALID predictions and decisions stated without a confidence."""
    return [0.0 if (p == INVALID or c is None) else float(c) for p, c in zip(pred, confidence)]


def accuracy(gold: Sequence[str], pred: Sequence[str]) -> Optional[float]:
    """Share of examples whose predicted decision equals the gold one; INVALID counts as wrong. None if empty."""
    ok = correctness(gold, pred)
    return _mean([float(x) for x in ok])


def parse_failure_rate(pred: Sequence[str]) -> Optional[float]:
    """Share of predictions that are INVALID. None if empty."""
    return _mean([float(p == INVALID) for p in pred])


def per_class_prf(gold: Sequence[str], pred: Sequence[str], classes: Sequence[str] = DECISIONS) -> dict:
    """{class: {precision, recall, f1, support, predicted}} — formulas and None rules in the module doc."""
    correctness(gold, pred)  # length check
    out = {}
    for k in classes:
        tp = sum(1 for g, p in zip(gold, pred) if g == k and p == k)
        fp = sum(1 for g, p in zip(gold, pred) if g != k and p == k)
        fn = sum(1 for g, p in zip(gold, pred) if g == k and p != k)
        out[k] = {
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            "support": tp + fn,
            "predicted": tp + fp,
        }
    return out


def macro_f1(per_class: dict) -> Optional[float]:
    """Mean of the per-class F1 values that are defined (see `per_class_prf`); None if none is."""
    return _mean([v["f1"] for v in per_class.values() if v["f1"] is not None])


def confusion_matrix(gold: Sequence[str], pred: Sequence[str], classes: Sequence[str] = DECISIONS) -> dict:
    """{gold class: {predicted class or INVALID: count}} — rows are gold labels, with an INVALID column."""
    counts = Counter(zip(gold, pred))
    return {g: {p: counts[(g, p)] for p in (*classes, INVALID)} for g in classes}


def reliability_bins(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = N_BINS) -> list[dict]:
    """Equal-width bins over [0, 1]: [{lo, hi, count, accuracy, confidence}] (accuracy/confidence None if empty)."""
    if len(confidence) != len(correct):
        raise ValueError(f"{len(confidence)} confidences vs {len(correct)} correctness flags")
    members: list[list[int]] = [[] for _ in range(n_bins)]
    for i, q in enumerate(confidence):
        if not 0.0 <= q <= 1.0 or math.isnan(q):
            raise ValueError(f"confidence {q} outside [0, 1]")
        members[min(int(q * n_bins), n_bins - 1)].append(i)
    return [
        {
            "lo": b / n_bins,
            "hi": (b + 1) / n_bins,
            "count": len(m),
            "accuracy": _mean([float(correct[i]) for i in m]),
            "confidence": _mean([confidence[i] for i in m]),
        }
        for b, m in enumerate(members)
    ]


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for telling labels True (right) from False (wrong):

        AUROC = 1/(n₊ n₋) · Σ_{i: yᵢ} Σ_{j: ¬yⱼ} [1(sᵢ > sⱼ) + ½ · 1(sᵢ = sⱼ)]  (the Mann-Whitney U / (n₊ n₋)),

    computed from mid-ranks as (R₊ − n₊(n₊ + 1)/2) / (n₊ n₋), R₊ the sum of the positives' ranks among all scores
    with tied scores sharing their mean rank. 0.5 is chance, 1 perfect ranking. NaN when either class is empty.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores vs {len(labels)} labels")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum, i = 0.0, 0
    while i < len(order):  # a run of tied scores order[i:j] shares the mean of ranks i+1 … j
        j = i
        while j < len(order) and scores[order[j]] == scores[order[i]]:
            j += 1
        mid_rank = (i + 1 + j) / 2
        rank_sum += mid_rank * sum(1 for k in order[i:j] if labels[k])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _defined(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else x


def better_calibrated(ece_stated: Optional[float], ece_token: Optional[float]) -> Optional[str]:
    """"stated" or "token": the confidence with the lower ECE; "tie" when equal; None when either is unknown."""
    if ece_stated is None or ece_token is None:
        return None
    if math.isclose(ece_stated, ece_token, abs_tol=1e-12):
        return "tie"
    return "stated" if ece_stated < ece_token else "token"


def ece(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = N_BINS) -> Optional[float]:
    """Top-label expected calibration error: Σ_b (n_b/N)·|acc_b − conf_b| over equal-width bins. None if empty."""
    n = len(confidence)
    if n == 0:
        return None
    return sum(
        b["count"] / n * abs(b["accuracy"] - b["confidence"])
        for b in reliability_bins(confidence, correct, n_bins) if b["count"]
    )


def brier(confidence: Sequence[float], correct: Sequence[bool]) -> Optional[float]:
    """Top-label binary Brier score: mean of (q − 1[correct])². None if empty."""
    if len(confidence) != len(correct):
        raise ValueError(f"{len(confidence)} confidences vs {len(correct)} correctness flags")
    return _mean([(q - float(c)) ** 2 for q, c in zip(confidence, correct)])


def mean_confidence_by_outcome(confidence: Sequence[Optional[float]], correct: Sequence[bool]) -> dict:
    """{'right': mean stated confidence of correct predictions, 'wrong': … of wrong ones}; predictions without a
    stated confidence are left out; None where a group is empty."""
    right = [q for q, c in zip(confidence, correct) if q is not None and c]
    wrong = [q for q, c in zip(confidence, correct) if q is not None and not c]
    return {"right": _mean(right), "wrong": _mean(wrong)}


def token_metrics(pred: Sequence[str], ok: Sequence[bool], decision_prob: Optional[Sequence[Optional[float]]],
                  n_bins: int = N_BINS) -> dict:
    """ECE, Brier and AUROC of the decision-token probability (scored like the stated confidence: INVALID or
    unknown → 0), and `n_token` (predictions with a probability); all None when no prediction has one."""
    probs = list(decision_prob) if decision_prob is not None else [None] * len(pred)
    n_token = sum(1 for p, q in zip(pred, probs) if p != INVALID and q is not None)
    if n_token == 0:
        return {"n_token": 0, "ece_token": None, "brier_token": None, "auroc_token": None}
    scored = scored_confidences(pred, probs)
    return {"n_token": n_token, "ece_token": ece(scored, ok, n_bins), "brier_token": brier(scored, ok),
            "auroc_token": _defined(auroc(scored, ok))}


def quality_metrics(gold: Sequence[str], pred: Sequence[str], confidence: Sequence[Optional[float]],
                    n_bins: int = N_BINS, decision_prob: Optional[Sequence[Optional[float]]] = None) -> dict:
    """Every accuracy and calibration metric over one set of examples (no breakdowns); `decision_prob` (the
    model's probability of each decision, None where unknown) adds the `*_token` metrics."""
    ok = correctness(gold, pred)
    scored = scored_confidences(pred, confidence)
    answered = [i for i, (p, c) in enumerate(zip(pred, confidence)) if p != INVALID and c is not None]
    ans_conf = [scored[i] for i in answered]
    ans_ok = [ok[i] for i in answered]
    prf = per_class_prf(gold, pred)
    by_outcome = mean_confidence_by_outcome(
        [None if p == INVALID else c for p, c in zip(pred, confidence)], ok)
    tok = token_metrics(pred, ok, decision_prob, n_bins)
    stated_ece = ece(scored, ok, n_bins)
    return {
        "n": len(gold),
        "accuracy": accuracy(gold, pred),
        "parse_failure_rate": parse_failure_rate(pred),
        "macro_f1": macro_f1(prf),
        "per_class": prf,
        "confusion": confusion_matrix(gold, pred),
        "ece": stated_ece,
        "brier": brier(scored, ok),
        "auroc": _defined(auroc(scored, ok)),
        "n_answered": len(answered),
        "ece_answered": ece(ans_conf, ans_ok, n_bins),
        "brier_answered": brier(ans_conf, ans_ok),
        "auroc_answered": _defined(auroc(ans_conf, ans_ok)),
        "mean_confidence_right": by_outcome["right"],
        "mean_confidence_wrong": by_outcome["wrong"],
        **tok,
        "better_calibrated": better_calibrated(stated_ece, tok["ece_token"]),
    }


def by_predicted_class(pred: Sequence[str], ok: Sequence[bool], confidence: Sequence[Optional[float]],
                       decision_prob: Optional[Sequence[Optional[float]]] = None, classes: Sequence[str] = DECISIONS,
                       n_bins: int = N_BINS) -> dict:
    """{class k: {n, accuracy, mean_confidence, ece, mean_token_prob, ece_token, reliability}} over the examples
    predicted k (accuracy = precision of k). Confidences are scored as everywhere (None → 0); the token entries
    are None when no prediction of k has a decision probability; the rest are None when k was never predicted."""
    probs = list(decision_prob) if decision_prob is not None else [None] * len(pred)
    out = {}
    for k in classes:
        idx = [i for i, p in enumerate(pred) if p == k]
        q = scored_confidences([k] * len(idx), [confidence[i] for i in idx])
        c = [ok[i] for i in idx]
        has_tok = any(probs[i] is not None for i in idx)
        qt = scored_confidences([k] * len(idx), [probs[i] for i in idx])
        out[k] = {
            "n": len(idx),
            "accuracy": _mean([float(x) for x in c]),
            "mean_confidence": _mean(q),
            "ece": ece(q, c, n_bins),
            "mean_token_prob": _mean(qt) if has_tok else None,
            "ece_token": ece(qt, c, n_bins) if has_tok else None,
            "reliability": reliability_bins(q, c, n_bins),
        }
    return out


def _breakdown_row(m: dict) -> dict:
    keep = ("n", "accuracy", "parse_failure_rate", "macro_f1", "ece", "brier", "auroc", "ece_token",
            "mean_confidence_right", "mean_confidence_wrong")
    return {k: m[k] for k in keep}


def cost_metrics(predictions: Sequence, sessions: Iterable[dict] = ()) -> dict:
    """Output length and throughput.

    From the predictions: mean output tokens, share truncated by the token budget (finish reason "length"),
    mean prompt tokens. From the engine's per-session stats (`sessions`, dicts of GenerationStats fields plus
    `n`): total wall time, peak memory, and token-weighted prompt and generation tok/s
    (Σ tokens / Σ tokens/tps over sessions) and examples/s (Σ n / Σ wall_s). A session killed before it
    reported adds nothing here; `n_timed` says how many examples the throughput figures cover.
    """
    out = {
        "mean_output_tokens": _mean([p.completion_tokens for p in predictions]),
        "mean_prompt_tokens": _mean([p.prompt_tokens for p in predictions]),
        "truncated_rate": _mean([float(p.truncated) for p in predictions]),
    }
    sessions = list(sessions)
    pt = sum(s["prompt_tokens"] for s in sessions)
    gt = sum(s["generation_tokens"] for s in sessions)
    p_time = sum(s["prompt_tokens"] / s["prompt_tps"] for s in sessions if s.get("prompt_tps"))
    g_time = sum(s["generation_tokens"] / s["generation_tps"] for s in sessions if s.get("generation_tps"))
    wall = sum(s["wall_s"] for s in sessions)
    n_timed = sum(s.get("n", 0) for s in sessions)
    out.update({
        "n_timed": n_timed,
        "prompt_tps": pt / p_time if p_time else None,
        "generation_tps": gt / g_time if g_time else None,
        "wall_s": wall if sessions else None,
        "examples_per_s": n_timed / wall if wall else None,
        "peak_memory_gb": max((s.get("peak_memory_gb") or 0.0 for s in sessions), default=None),
    })
    return out


def compute_metrics(examples: Sequence, predictions: Sequence, sessions: Iterable[dict] = (),
                    n_bins: int = N_BINS) -> dict:
    """All metrics of a run: overall (stated and decision-token confidence), `by_domain`, `by_level`,
    `by_predicted_class`, the reliability bins of both confidences (`reliability`, `reliability_token`, the latter
    None without decision probabilities), and cost/throughput (see `cost_metrics`).

    Predictions are matched to examples by id; examples without a prediction are counted in `n_missing` and
    left out of every metric; a prediction whose id is not among the examples is an error.
    """
    by_id = {ex.id: ex for ex in examples}
    preds, seen = [], set()
    for p in predictions:
        if p.id not in by_id:
            raise ValueError(f"prediction id {p.id!r} is not among the {len(by_id)} examples")
        if p.id in seen:
            raise ValueError(f"two predictions for id {p.id!r}")
        seen.add(p.id)
        preds.append(p)
    exs = [by_id[p.id] for p in preds]
    gold = [ex.expected_decision.value for ex in exs]
    pred = [p.decision.value if hasattr(p.decision, "value") else str(p.decision) for p in preds]
    conf = [p.stated for p in preds]
    tok = [getattr(p, "decision_prob", None) for p in preds]

    out = quality_metrics(gold, pred, conf, n_bins, decision_prob=tok)
    returned = scored_confidences(pred, [p.confidence for p in preds])  # what the judge returns (Prediction doc)
    ok = correctness(gold, pred)
    out.update(ece_returned=ece(returned, ok, n_bins), brier_returned=brier(returned, ok),
               auroc_returned=_defined(auroc(returned, ok)))
    out["n_examples"] = len(by_id)
    out["n_missing"] = len(by_id) - len(preds)
    for key, attr in (("by_domain", lambda e: e.metadata.domain), ("by_level", lambda e: e.metadata.difficulty_level)):
        groups: dict = {}
        for i, ex in enumerate(exs):
            groups.setdefault(attr(ex), []).append(i)
        out[key] = {
            str(g): _breakdown_row(quality_metrics([gold[i] for i in idx], [pred[i] for i in idx],
                                                   [conf[i] for i in idx], n_bins, [tok[i] for i in idx]))
            for g, idx in sorted(groups.items())
        }
    out["reliability"] = reliability_bins(scored_confidences(pred, conf), ok, n_bins)
    out["reliability_token"] = (reliability_bins(scored_confidences(pred, tok), ok, n_bins)
                                if out["n_token"] else None)
    out["by_predicted_class"] = by_predicted_class(pred, ok, conf, tok, n_bins=n_bins)
    out.update(cost_metrics(preds, sessions))
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test on paired outcomes: b examples only run A gets right, c only run B. Under
    "the two runs are equally accurate" each discordant example is a fair coin, so p = P(Binomial(b + c, 1/2) is
    at least as far from its mean as observed) = min(1, 2 · Σ_{i ≤ min(b, c)} C(b + c, i) / 2^(b + c))."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)


def paired_outcomes(correct_a: dict[str, bool], correct_b: dict[str, bool]) -> dict:
    """Per-example correctness of two runs (id -> right?) on their common ids -> counts and the McNemar p."""
    ids = [i for i in correct_a if i in correct_b]
    a_only = sum(correct_a[i] and not correct_b[i] for i in ids)
    b_only = sum(correct_b[i] and not correct_a[i] for i in ids)
    both = sum(correct_a[i] and correct_b[i] for i in ids)
    return {"n": len(ids), "both": both, "a_only": a_only, "b_only": b_only,
            "neither": len(ids) - both - a_only - b_only, "p_value": mcnemar_exact(a_only, b_only)}
