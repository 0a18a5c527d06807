"""How much of the decision the frozen model already carries: a linear probe on its hidden states, beside TF-IDF.

    python benchmarks/probe_frozen.py --train runs/data/healthver-dev-train.jsonl \
        --valid runs/data/healthver-dev-val.jsonl

Each example is rendered as "Claim: …\\nEvidence: …" (no chat template) and run through the frozen model once;
its feature is [final hidden state of the last token, mean over tokens] (post-norm, 2H floats). A standardised
logistic regression (scikit-learn, C = 0.1 and 1, class-balanced) is fitted on --train and scored on --valid,
beside TF-IDF + logistic regression on the same text. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json

import mlxhv  # noqa: F401  (loads the fast BLAS before MLX)
import mlx.core as mx
import numpy as np

from mlxhv.data import load_examples


def text(e) -> str:
    return f"Claim: {e.hypothesis}\nEvidence: " + " ".join(ev.content for ev in e.evidence)


def features(model, tokenizer, examples, batch_size: int = 16) -> np.ndarray:
    out = []
    for i in range(0, len(examples), batch_size):
        ids = [tokenizer.encode(text(e)) for e in examples[i:i + batch_size]]
        width = max(len(x) for x in ids)
        toks = mx.array([x + [0] * (width - len(x)) for x in ids])  # (B, T), right-padded: causal, so unchanged
        h = model.model(toks)  # (B, T, H), post-norm
        lens = mx.array([len(x) for x in ids])
        mask = (mx.arange(width)[None] < lens[:, None]).astype(h.dtype)[..., None]  # (B, T, 1)
        mean = (h * mask).sum(axis=1) / lens[:, None]  # (B, H)
        last = mx.take_along_axis(h, (lens - 1)[:, None, None], axis=1)[:, 0]  # (B, H)
        out.append(np.array(mx.concatenate([last, mean], axis=-1).astype(mx.float32)))
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--valid", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlxhv.models import load

    train, valid = load_examples(args.train), load_examples(args.valid)
    y_tr = [e.expected_decision.value for e in train]
    y_va = [e.expected_decision.value for e in valid]
    model, tokenizer = load(args.model, precision="float32")
    x_tr, x_va = features(model, tokenizer, train), features(model, tokenizer, valid)
    rows = []
    for c in (0.1, 1.0):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
        p = clf.fit(x_tr, y_tr).predict(x_va)
        rows.append({"name": f"probe C={c}", "accuracy": accuracy_score(y_va, p),
                     "macro_f1": f1_score(y_va, p, average="macro")})
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000)
    p = clf.fit(vec.fit_transform([text(e) for e in train]), y_tr).predict(vec.transform([text(e) for e in valid]))
    rows.append({"name": "tfidf", "accuracy": accuracy_score(y_va, p), "macro_f1": f1_score(y_va, p, average="macro")})
    major = max(set(y_tr), key=y_tr.count)
    rows.append({"name": "majority", "accuracy": float(np.mean([y == major for y in y_va])), "macro_f1": None})

    print(f"\n{args.valid}: {len(valid)} examples; fitted on {args.train} ({len(train)})\n")
    print("| | accuracy | macro-F1 |\n|---|---|---|")
    for r in rows:
        f1 = "–" if r["macro_f1"] is None else f"{r['macro_f1']:.3f}"
        print(f"| {r['name']} | {100 * r['accuracy']:.1f} % | {f1} |")
    print(json.dumps({"valid": args.valid, "train": args.train, "rows": rows}))


if __name__ == "__main__":
    main()
