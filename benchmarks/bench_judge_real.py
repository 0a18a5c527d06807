"""The judge against bag-of-words on one validation split, side by side in one run.

    python benchmarks/bench_judge_real.py --train runs/data/healthver-dev-train.jsonl \
        --valid runs/data/healthver-dev-val.jsonl --adapter none --adapter adapters/smollm2-135m-judge

Rows:
- majority: the training set's most common decision, confidence 1;
- tfidf: TF-IDF uni+bigrams of "hypothesis [SEP] evidence" + logistic regression (C = 4, class-balanced,
  scikit-learn), fitted on --train; its confidence is the predicted class's probability;
- one row per --adapter ("none": the untrained model): greedy answers through `mlxhv.eval` with the adapter's
  prompt settings (an adapter without judge_prompt.json gets the JSON answer prefix); the returned confidence
  is `Prediction.confidence` (the decision-token probability), the stated one is shown beside it.
Each judge row carries the exact McNemar p against tfidf and against the untrained model (when it is a row).
Eval runs go to --out-dir/<name> and resume there (keyed by the adapter's weights). Prints a markdown table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mlxhv  # noqa: F401  (loads the fast BLAS before MLX)
from mlxhv.data import load_examples
from mlxhv.eval import EvalSettings, run_eval
from mlxhv.eval.metrics import correctness, paired_outcomes, quality_metrics, scored_confidences, ece


def text(e) -> str:
    return e.hypothesis + " [SEP] " + " ".join(ev.content for ev in e.evidence)


def tfidf_predictions(train, valid) -> tuple[list[str], list[float]]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000)
    clf.fit(vec.fit_transform([text(e) for e in train]), [e.expected_decision.value for e in train])
    proba = clf.predict_proba(vec.transform([text(e) for e in valid]))  # (N, classes)
    idx = proba.argmax(axis=1)
    return [str(clf.classes_[i]) for i in idx], [float(proba[k, i]) for k, i in enumerate(idx)]


def row(name, gold, pred, conf, stated=None) -> dict:
    m = quality_metrics(gold, pred, conf)
    out = {"name": name, "n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "ece": m["ece"],
           "auroc": m["auroc"], "recall": {k: v.get("recall") for k, v in m["per_class"].items()}}
    if stated is not None:
        out["ece_stated"] = ece(scored_confidences(pred, stated), correctness(gold, pred))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="What the bag-of-words baseline is fitted on (JSONL).")
    ap.add_argument("--valid", required=True, help="The validation split every row is scored on (JSONL).")
    ap.add_argument("--adapter", action="append", default=[], help="Adapter directory, or 'none' (repeatable).")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=24, help="Answer budget (the decision comes first).")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out-dir", default="runs/bench-judge-real")
    args = ap.parse_args()

    train, valid = load_examples(args.train), load_examples(args.valid)
    gold = [e.expected_decision.value for e in valid]
    counts = {}
    for e in train:
        counts[e.expected_decision.value] = counts.get(e.expected_decision.value, 0) + 1
    major = max(sorted(counts), key=counts.get)
    rows = [row("majority", gold, [major] * len(gold), [1.0] * len(gold))]
    t_pred, t_conf = tfidf_predictions(train, valid)
    rows.append(row("tfidf", gold, t_pred, t_conf))
    right = {"tfidf": dict(zip([e.id for e in valid], correctness(gold, t_pred)))}
    for a in args.adapter:
        name = "untrained" if a == "none" else Path(a).name
        adapter = None if a == "none" else a
        has_prompt = adapter is not None and (Path(adapter) / "judge_prompt.json").exists()
        s = EvalSettings(model=args.model, data=args.valid, out=str(Path(args.out_dir) / Path(args.valid).stem / name),
                         adapter_path=adapter, max_tokens=args.max_tokens, batch_size=args.batch_size,
                         answer_prefix=None if has_prompt else "json", progress=True)
        run = run_eval(s)
        by_id = {p.id: p for p in run.predictions}
        preds = [by_id[e.id] for e in valid]
        pred = [getattr(p.decision, "value", p.decision) for p in preds]
        r = row(name, gold, pred, [p.confidence for p in preds], [p.stated for p in preds])
        right[name] = dict(zip([e.id for e in valid], correctness(gold, pred)))
        r["p_vs_tfidf"] = paired_outcomes(right["tfidf"], right[name])["p_value"]
        if name != "untrained" and "untrained" in right:
            r["p_vs_untrained"] = paired_outcomes(right["untrained"], right[name])["p_value"]
        rows.append(r)

    print(f"\n{args.valid}: {len(valid)} examples; baseline fitted on {args.train} ({len(train)})\n")
    print("| | accuracy | macro-F1 | ECE (returned) | ECE (stated) | AUROC | p vs tfidf | p vs untrained |")
    print("|---|---|---|---|---|---|---|---|")

    def f(v, pct=False):
        return "–" if v is None else (f"{100 * v:.1f} %" if pct else f"{v:.3f}")

    for r in rows:
        print(f"| {r['name']} | {f(r['accuracy'], True)} | {f(r['macro_f1'])} | {f(r['ece'])} | "
              f"{f(r.get('ece_stated'))} | {f(r['auroc'])} | {f(r.get('p_vs_tfidf'))} | {f(r.get('p_vs_untrained'))} |")
    print(json.dumps({"valid": args.valid, "train": args.train, "rows": rows}))


if __name__ == "__main__":
    main()
