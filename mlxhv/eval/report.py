"""report.md for one run, the side-by-side table of `mlxhv compare`, the verdict, and the reliability diagram."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from mlxhv.schema import DECISIONS, INVALID

WORTH = "RL is worth pursuing"
NOT_NEEDED = "not needed"


def verdict(accuracy: Optional[float], threshold: float = 0.85) -> str:
    """"RL is worth pursuing" when accuracy is below `threshold` (or unknown), else "not needed"."""
    return WORTH if accuracy is None or accuracy < threshold else NOT_NEEDED


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _rate(v, unit: str = "") -> str:
    if v is None:
        return "–"
    return (f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}") + unit


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# Rows of the compare table and report: (label, metrics key or callable, formatter).
QUALITY_ROWS = [
    ("examples", "n", str),
    ("accuracy", "accuracy", _pct),
    ("parse failures", "parse_failure_rate", _pct),
    ("macro-F1", "macro_f1", _num),
    ("ECE (15 bins)", "ece", _num),
    ("Brier (top-label)", "brier", _num),
    ("AUROC, right vs wrong", "auroc", _num),
    ("ECE, answered only", "ece_answered", _num),
    ("Brier, answered only", "brier_answered", _num),
    ("AUROC, answered only", "auroc_answered", _num),
    ("mean confidence, right", "mean_confidence_right", _num),
    ("mean confidence, wrong", "mean_confidence_wrong", _num),
    ("ECE, decision-token prob", "ece_token", _num),
    ("Brier, decision-token prob", "brier_token", _num),
    ("AUROC, decision-token prob", "auroc_token", _num),
    ("better calibrated (ECE)", "better_calibrated", lambda v: "–" if v is None else str(v)),
]
COST_ROWS = [
    ("mean output tokens", "mean_output_tokens", lambda v: _num(v, 1)),
    ("cut by token budget", "truncated_rate", _pct),
    ("prompt tok/s", "prompt_tps", _rate),
    ("generation tok/s", "generation_tps", _rate),
    ("examples/s", "examples_per_s", lambda v: _num(v, 3)),
    ("wall time (s)", "wall_s", lambda v: _num(v, 1)),
    ("peak memory (GB)", "peak_memory_gb", lambda v: _num(v, 2)),
]


def _get(m: dict, path: str):
    for part in path.split("."):
        if not isinstance(m, dict) or part not in m:
            return None
        m = m[part]
    return m


def calibration_sentence(m: dict) -> str:
    """Which of the two confidences (stated, decision-token probability) is better calibrated, in one line."""
    better = m.get("better_calibrated")
    if better is None:
        return "No decision-token probabilities in this run: only the stated confidence is scored."
    nums = f"ECE {_num(m['ece'])} stated vs {_num(m['ece_token'])} token"
    if better == "tie":
        return f"The stated confidence and the decision-token probability are equally calibrated ({nums})."
    name = {"stated": "the stated confidence", "token": "the decision-token probability"}[better]
    return (f"Better calibrated: **{name}** ({nums}; AUROC {_num(m.get('auroc'))} stated vs "
            f"{_num(m.get('auroc_token'))} token).")


def format_report(run, plot: Optional[str] = None) -> str:
    """The markdown report of one run (`run` is an evaluator.Run)."""
    m, s = run.metrics, run.settings
    out = [f"# Evaluation of `{s.model}`", ""]
    out.append(f"- data: `{s.data or '(in memory)'}`, {m['n']} of {m['n_examples']} examples answered"
               + (f" ({m['n_missing']} missing)" if m["n_missing"] else ""))
    out.append(f"- generation: max_tokens {s.max_tokens}, temperature {s.temperature}, top_p {s.top_p}, "
               f"seed {s.seed}, batch size {s.batch_size}, precision {s.precision}"
               + (f", adapter `{s.adapter_path}`" if s.adapter_path else "")
               + (f", answer prefix `{s.answer_prefix}`" if s.answer_prefix else "")
               + (f" (from the adapter: {', '.join(s.from_adapter)})" if getattr(s, "from_adapter", ()) else ""))
    out.append(f"- **verdict: {verdict(m['accuracy'], s.threshold)}** (accuracy {_pct(m['accuracy'])}, "
               f"threshold {_pct(s.threshold)})")
    out += ["", "## Overall", "", md_table(["metric", "value"],
                                          [(lab, f(m.get(k))) for lab, k, f in QUALITY_ROWS]), ""]
    out += ["## Per class", "", md_table(
        ["class", "precision", "recall", "F1", "support", "predicted"],
        [(k, _num(v["precision"]), _num(v["recall"]), _num(v["f1"]), v["support"], v["predicted"])
         for k, v in m["per_class"].items()]), ""]
    out += ["## Confidence: stated vs the model's probability of its decision token", "",
            "The stated confidence is the number the judge writes; the decision-token probability is "
            "exp(Σ log p) of the tokens that spell its decision word. Both are scored the same way (INVALID → 0).",
            "", calibration_sentence(m), ""]
    if m.get("by_predicted_class"):
        out += ["## Calibration per predicted class", "", md_table(
            ["predicted", "n", "accuracy", "mean confidence", "ECE", "mean token prob", "token ECE"],
            [(k, v["n"], _pct(v["accuracy"]), _num(v["mean_confidence"]), _num(v["ece"]),
              _num(v["mean_token_prob"]), _num(v["ece_token"])) for k, v in m["by_predicted_class"].items()]), ""]
    out += ["## Confusion (rows: expected, columns: predicted)", "", md_table(
        ["expected \\ predicted", *DECISIONS, INVALID],
        [(g, *(row[p] for p in (*DECISIONS, INVALID))) for g, row in m["confusion"].items()]), ""]
    for title, key, name in (("By difficulty level", "by_level", "level"), ("By domain", "by_domain", "domain")):
        out += [f"## {title}", "", md_table(
            [name, "n", "accuracy", "parse failures", "macro-F1", "ECE", "Brier", "AUROC", "token ECE"],
            [(g, r["n"], _pct(r["accuracy"]), _pct(r["parse_failure_rate"]), _num(r["macro_f1"]), _num(r["ece"]),
              _num(r["brier"]), _num(r.get("auroc")), _num(r.get("ece_token"))) for g, r in m[key].items()]), ""]
    out += ["## Cost", "", md_table(["metric", "value"], [(lab, f(m.get(k))) for lab, k, f in COST_ROWS]), ""]
    if m.get("n_timed") != m["n"]:
        out += [f"Throughput covers {m.get('n_timed', 0)} of {m['n']} examples (a killed session reports no "
                "timing).", ""]
    if plot:
        out += ["## Reliability", "", f"![reliability diagram]({plot})", "",
                "Panels: all examples (stated confidence as bars; the decision-token probability as the orange "
                "line), then the examples of each predicted class.", ""]
    gold = {ex.id: ex.expected_decision.value for ex in run.examples}
    wrong = [p for p in run.predictions if str(getattr(p.decision, "value", p.decision)) != gold[p.id]]
    if wrong and s.report_samples:
        out += [f"## Sample wrong answers ({min(len(wrong), s.report_samples)} of {len(wrong)})", ""]
        for p in wrong[: s.report_samples]:
            raw = p.raw.strip().replace("\n", " ")
            raw = raw if len(raw) <= 400 else "…" + raw[-400:]
            out += [f"- `{p.id}`: expected {gold[p.id]}, got {getattr(p.decision, 'value', p.decision)} "
                    f"(confidence {_num(p.confidence, 2)}, {p.completion_tokens} tokens"
                    + (", cut by budget" if p.truncated else "") + f"): {raw!r}"]
        out.append("")
    return "\n".join(out)


def format_compare(runs: Sequence[tuple[str, dict]], threshold: float = 0.85) -> str:
    """Side-by-side markdown table of several runs' metrics.json, then the verdict line.

    Sections: overall quality, per-class F1, accuracy per level, accuracy per domain, throughput. The verdict
    is taken on the most accurate run: if even it is below `threshold`, RL is worth pursuing.
    """
    names = [n for n, _ in runs]
    rows: list[tuple] = []

    def section(title: str):
        rows.append((f"**{title}**", *[""] * len(runs)))

    section("overall")
    for lab, k, f in QUALITY_ROWS:
        rows.append((lab, *(f(_get(m, k)) for _, m in runs)))
    rows.append(("verdict", *(verdict(m.get("accuracy"), threshold) for _, m in runs)))
    section("per class (P / R / F1)")
    for c in DECISIONS:
        rows.append((c, *(" / ".join(_num(_get(m, f"per_class.{c}.{x}"), 2) for x in ("precision", "recall", "f1"))
                          for _, m in runs)))
    for title, key in (("accuracy by level", "by_level"), ("accuracy by domain", "by_domain")):
        section(title)
        groups = sorted({g for _, m in runs for g in (m.get(key) or {})})
        for g in groups:
            rows.append((g, *(f"{_pct(_get(m, f'{key}.{g}.accuracy'))} (n={_get(m, f'{key}.{g}.n') or 0})"
                              for _, m in runs)))
    section("throughput")
    for lab, k, f in COST_ROWS:
        rows.append((lab, *(f(_get(m, k)) for _, m in runs)))
    table = md_table(["", *names], rows)
    scored = [(m["accuracy"], n) for n, m in runs if m.get("accuracy") is not None]
    if scored:
        best_acc, best = max(scored)
        line = (f"Verdict: {verdict(best_acc, threshold)} — the best judge, {best}, scores {_pct(best_acc)} "
                f"({'below' if best_acc < threshold else 'at or above'} the {_pct(threshold)} threshold).")
    else:
        line = f"Verdict: {verdict(None, threshold)} — no run has an accuracy."
    return table + "\n\n" + line


def plot_reliability(bins: list[dict], path: Path, title: str = "", by_class: Optional[dict] = None,
                     token_bins: Optional[list[dict]] = None) -> bool:
    """Write a reliability diagram to `path`: accuracy per confidence bin against the diagonal, counts below.

    One column of panels for all examples (`bins`; with `token_bins`, the decision-token probability's bins drawn
    over it as an orange line), then one column per predicted class (`by_class`: {class: bins}, as in
    metrics["by_predicted_class"][k]["reliability"]). Returns False, writing nothing, when matplotlib is not
    installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [("all examples", bins)] + [(f"predicted {k}", b) for k, b in (by_class or {}).items()]
    fig, axes = plt.subplots(2, len(panels), figsize=(4 * len(panels), 5.5), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    for col, (name, bs) in enumerate(panels):
        ax, axc = axes[0][col], axes[1][col]
        width = bs[0]["hi"] - bs[0]["lo"]
        centers = [(b["lo"] + b["hi"]) / 2 for b in bs]
        full = [b for b in bs if b["count"]]
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.bar([c for c, b in zip(centers, bs) if b["count"]], [b["accuracy"] for b in full],
               width=width * 0.9, color="tab:blue", alpha=0.8, label="accuracy (stated confidence)")
        ax.scatter([b["confidence"] for b in full], [b["accuracy"] for b in full],
                   color="tab:red", s=12, zorder=3, label="(mean confidence, accuracy)")
        if col == 0 and token_bins:
            tb = [b for b in token_bins if b["count"]]
            ax.plot([b["confidence"] for b in tb], [b["accuracy"] for b in tb], "o-", color="tab:orange",
                    ms=3, zorder=4, label="decision-token probability")
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} (n={sum(b['count'] for b in bs)})", fontsize=9)
        axc.bar(centers, [b["count"] for b in bs], width=width * 0.9, color="tab:grey")
        axc.set_xlim(0, 1)
        if not full:
            axc.set_ylim(0, 1)
        axc.set_xlabel(("confidence" if col == 0 and token_bins else "stated confidence") + " (INVALID = 0)")
        if col == 0:
            ax.set_ylabel("accuracy")
            ax.legend(loc="upper left", fontsize=7)
            axc.set_ylabel("count")
    fig.suptitle(title or "reliability")
    w, h = fig.get_size_inches()  # fixed margins in inches (tight_layout costs a second draw)
    fig.subplots_adjust(left=0.6 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - 0.75 / h, wspace=0.2,
                        hspace=0.08)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
