"""Training curves of a PPO / GRPO or SFT run (metrics.jsonl -> curves.png). Needs matplotlib (the `plots` extra)."""

from __future__ import annotations

from pathlib import Path

from mlxhv.data.io import iter_jsonl
from mlxhv.schema import DECISIONS

PANELS = [("reward_mean", "mean reward"), ("accuracy", "train accuracy (samples)"),
          ("invalid_frac", "sampled answers: unparseable / per class"), ("kl", "KL to reference (nats / answer)"),
          ("entropy", "entropy"), ("response_length", "response tokens")]


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(per-step training records, evaluation records) from RUN/metrics.jsonl."""
    steps, evals = [], []
    for _, rec in iter_jsonl(Path(run_dir) / "metrics.jsonl"):
        if not isinstance(rec, dict):
            continue
        if "reward_mean" in rec:
            steps.append(rec)
        if "eval" in rec:
            evals.append({"step": rec["step"], **rec["eval"]})
    return steps, evals


def rolling_mean(values: list, window: int) -> list[float]:
    """Mean of the last `window` values that are not None, at each position (nan where there are none)."""
    out = []
    for i in range(len(values)):
        seen = [v for v in values[max(0, i - window + 1): i + 1] if v is not None]
        out.append(sum(seen) / len(seen) if seen else float("nan"))
    return out


def read_sft_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(per-step records with a training loss, validation records {"step", **val}) of an SFT run."""
    steps, vals = [], []
    for _, rec in iter_jsonl(Path(run_dir) / "metrics.jsonl"):
        if isinstance(rec, dict) and "loss" in rec and "reward_mean" not in rec:
            steps.append(rec)
            if "val" in rec:
                vals.append({"step": rec["step"], **rec["val"]})
    return steps, vals


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_sft(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """SFT curves: training loss (and its 10-step mean), validation loss, decision accuracy / macro-F1 and recall
    per gold decision. Returns the PNG's path, or None when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return None
    return _draw_sft(plt, *read_sft_metrics(run_dir), Path(out) if out else Path(run_dir) / "curves.png")


def _draw_sft(plt, steps: list[dict], vals: list[dict], out: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    xs = [r["step"] for r in steps]
    axes[0].plot(xs, [r["loss"] for r in steps], lw=0.7, alpha=0.5, label="train (batch)")
    axes[0].plot(xs, rolling_mean([r["loss"] for r in steps], 10), label="train (10-step mean)")
    vx = [v["step"] for v in vals]
    axes[0].plot(vx, [v.get("loss", float("nan")) for v in vals], marker="s", label="validation")
    axes[0].set_title("answer loss")
    axes[0].legend(fontsize=8)
    for key, label in (("decision_accuracy", "accuracy"), ("decision_macro_f1", "macro-F1")):
        axes[1].plot(vx, [v.get(key, float("nan")) for v in vals], marker="o", label=label)
    axes[1].set_title("validation decisions (greedy)")
    axes[1].legend(fontsize=8)
    for cls in DECISIONS:
        axes[2].plot(vx, [v.get("decision_recall", {}).get(cls, float("nan")) for v in vals], marker="o", label=cls)
    axes[2].set_title("validation recall per gold decision")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("SFT step")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Write the curves PNG (an SFT run's as `plot_sft` draws it); returns its path, or None when matplotlib is
    missing."""
    plt = _pyplot()
    if plt is None:
        return None
    steps, evals = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir) / "curves.png"
    if not steps:
        sft_steps, sft_vals = read_sft_metrics(run_dir)
        if sft_steps:
            return _draw_sft(plt, sft_steps, sft_vals, out)
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    xs = [r["step"] for r in steps]
    for ax, (key, title) in zip(axes.flat, PANELS):
        ax.plot(xs, [r.get(key, float("nan")) for r in steps], marker="o", ms=3, label=key)
        if key == "invalid_frac" and any("frac_VALIDATED" in r for r in steps):
            for cls in DECISIONS:
                ax.plot(xs, [r.get(f"frac_{cls}", float("nan")) for r in steps], lw=1, label=cls)
            ax.legend(fontsize=7)
        if key == "accuracy" and any("acc_VALIDATED" in r for r in steps):
            for cls in DECISIONS:  # per gold class, mean of the last 10 steps
                ax.plot(xs, rolling_mean([r.get(f"acc_{cls}") for r in steps], 10), lw=1, label=f"gold {cls}")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
    for ax, key, title in ((axes.flat[6], "accuracy", "holdout accuracy (greedy)"),
                           (axes.flat[7], "ece", "holdout ECE (greedy)")):
        ex = [e["step"] for e in evals]
        ax.plot(ex, [e.get(key, float("nan")) for e in evals], marker="s", color="C1", label=key)
        if key == "ece":
            ax.plot(ex, [e.get("ece_answered", float("nan")) for e in evals], marker="^", color="C2",
                    label="ece (answered only)")
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
