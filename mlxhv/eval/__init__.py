"""Benchmark a judge model: batched evaluation with resume, calibration metrics, report and compare.

    from mlxhv.eval import EvalSettings, evaluate
    run = evaluate(model, tokenizer, examples, EvalSettings(model="smollm2-135m"), out_dir="runs/smol")
    run.metrics["accuracy"], run.metrics["ece"], run.metrics["auroc"], run.metrics["ece_token"]
"""

from mlxhv.eval.evaluator import (
    GENERATION_PRESETS, EvalError, EvalSettings, Run, evaluate, generation_preset, load_run, paired_with_first,
    read_predictions, run_correctness, run_eval,
)
from mlxhv.eval.metrics import (
    accuracy, auroc, brier, by_predicted_class, compute_metrics, confusion_matrix, ece, macro_f1, parse_failure_rate,
    per_class_prf, quality_metrics, reliability_bins,
)
from mlxhv.eval.report import NOT_NEEDED, WORTH, format_compare, format_report, plot_reliability, verdict
from mlxhv.answer import decision_prob

__all__ = [
    "GENERATION_PRESETS", "EvalError", "EvalSettings", "Run", "evaluate", "generation_preset", "load_run",
    "paired_with_first", "read_predictions", "run_correctness", "run_eval", "accuracy", "auroc", "brier",
    "by_predicted_class", "compute_metrics", "confusion_matrix", "ece", "macro_f1", "parse_failure_rate",
    "per_class_prf", "quality_metrics", "reliability_bins", "NOT_NEEDED", "WORTH", "format_compare",
    "format_report", "plot_reliability", "verdict", "decision_prob",
]
