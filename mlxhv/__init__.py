"""mlxhv: a hypothesis-validation judge built on MLX and mlx-lm.

The entry points a user needs, importable from here (each is loaded on first use, so `import mlxhv` stays light):

    from mlxhv import Judge
    judge = Judge.load("smollm2-135m", adapter="smollm2-135m-judge")   # the shipped judge, by name
    prediction = judge.judge("hypothesis …", [{"source": "…", "content": "…", "relevance": 0.9}])

docs/api.md has one example for each name below.
"""

__version__ = "0.1.0"

# Before anything imports mlx.core: put OpenBLAS under MLX's CPU matmuls on Linux (see mlxhv/_blas.py).
from mlxhv import _blas

_blas.enable()

# name -> (module, attribute, one line on what it is)
_EXPORTS = {
    "Judge": ("mlxhv.judge", "Judge", "A judge: `Judge.load(model, adapter=…)`, then `.judge(hypothesis, evidence)`."),
    "JudgeSettings": ("mlxhv.judge", "JudgeSettings", "How a judge generates (precision, budget, prompt)."),
    "load": ("mlxhv.models", "load", "Load (model, tokenizer): a preset, hub id, mlx-lm directory or GGUF file."),
    "evaluate": ("mlxhv.eval", "evaluate", "Benchmark a model on examples: predictions, metrics, report."),
    "EvalSettings": ("mlxhv.eval", "EvalSettings", "The settings of one evaluation run."),
    "load_examples": ("mlxhv.data", "load_examples", "Read a JSONL file of Examples (file:line errors)."),
    "Example": ("mlxhv.schema", "Example", "One labelled case: hypothesis, evidence, expected decision."),
    "Evidence": ("mlxhv.schema", "Evidence", "One piece of evidence: source, content, relevance."),
    "Prediction": ("mlxhv.schema", "Prediction", "A judge's answer: decision, confidence, refined hypothesis."),
    "RLSettings": ("mlxhv.rl.settings", "RLSettings", "The settings of one RL run (PPO or GRPO)."),
    "train_rl": ("mlxhv.rl.trainer", "train", "Train a LoRA adapter with PPO or GRPO."),
    "SFTSettings": ("mlxhv.rl.sft", "SFTSettings", "The settings of one supervised LoRA run."),
    "train_sft": ("mlxhv.rl.sft", "train_sft", "Supervised LoRA warm start on the gold answers."),
    "MlxhvError": ("mlxhv.errors", "MlxhvError", "Base of every error a user can fix."),
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlxhv' has no attribute {name!r}")
    import importlib

    module, attr, _ = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
