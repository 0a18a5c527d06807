"""Training curves of a PPO run (metrics.jsonl -> curves.png). Needs matplotlib (the `plots` extra)."""

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


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Write the curves PNG; returns its path, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps, evals = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir) / "curves.png"
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
