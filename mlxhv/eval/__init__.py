"""Benchmark a judge model: batched evaluation with resume, calibration metrics, report and compare.

    from mlxhv.eval import EvalSettings, evaluate
    run = evaluate(model, tokenizer, examples, EvalSettings(model="smollm2-135m"), out_dir="runs/smol")
    run.metrics["accuracy"], run.metrics["ece"]
"""

from mlxhv.eval.evaluator import (
    GENERATION_PRESETS, EvalError, EvalSettings, Run, evaluate, generation_preset, load_run, read_predictions,
    run_eval,
)
from mlxhv.eval.metrics import (
    accuracy, brier, compute_metrics, confusion_matrix, ece, macro_f1, parse_failure_rate, per_class_prf,
    quality_metrics, reliability_bins,
)
from mlxhv.eval.report import NOT_NEEDED, WORTH, format_compare, format_report, plot_reliability, verdict

__all__ = [
    "GENERATION_PRESETS", "EvalError", "EvalSettings", "Run", "evaluate", "generation_preset", "load_run",
    "read_predictions", "run_eval", "accuracy", "brier", "compute_metrics", "confusion_matrix", "ece", "macro_f1",
    "parse_failure_rate", "per_class_prf", "quality_metrics", "reliability_bins", "NOT_NEEDED", "WORTH",
    "format_compare", "format_report", "plot_reliability", "verdict",
]
