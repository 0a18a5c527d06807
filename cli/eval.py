"""`mlxhv eval` and `mlxhv compare`: thin wrappers over mlxhv.eval."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import user_errors
from mlxhv.data import load_examples
from mlxhv.eval.evaluator import (
    GENERATION_PRESETS, PREDICTIONS, EvalError, EvalSettings, load_run, read_predictions, run_eval,
)
from mlxhv.eval.metrics import paired_outcomes
from mlxhv.eval.report import format_compare, verdict


def _model_errors():
    try:
        from mlxhv.models.errors import ModelLoadError
    except ImportError:
        return (EvalError,)
    return (EvalError, ModelLoadError)


@click.command("eval")
@click.option("-m", "--model", default="smollm2-135m", show_default=True,
              help="Model preset, hub id, local directory or GGUF file.")
@click.option("-d", "--data", type=click.Path(path_type=Path), default=Path("data/holdout.jsonl"),
              show_default=True, help="JSONL file of examples.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Run directory: predictions.jsonl, metrics.json, report.md. Rerunning resumes it.")
@click.option("--limit", type=int, default=None,
              help="Evaluate a deterministic sample of N examples with the file's mix of domains, decisions, levels.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--max-tokens", type=int, default=None,
              help=f"Token budget per answer (default per model: QwQ {GENERATION_PRESETS['qwq']['max_tokens']}, "
                   f"others {GENERATION_PRESETS['default']['max_tokens']}).")
@click.option("--temperature", type=float, default=None, help="Default per model: QwQ 0.6, others 0 (greedy).")
@click.option("--top-p", type=float, default=None, help="Default per model: QwQ 0.95, others 1.0.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", default="auto", show_default=True, help="Passed to the model loader.")
@click.option("--adapter", "adapter_path", type=click.Path(path_type=Path), default=None,
              help="LoRA adapter directory (adapters.safetensors + adapter_config.json).")
@click.option("--threshold", type=float, default=0.85, show_default=True,
              help="Accuracy below which RL is worth pursuing.")
@click.option("--restart", is_flag=True, help="Discard an existing run in --out instead of resuming it.")
@click.option("--answer-prefix", default="", metavar="TEXT",
              help='Text that opens every answer (prefill); "json" means {"decision": " so a small model answers '
                   'in the format at once. Compare runs only at the same prefix.')
@click.option("--system-prompt", "system_prompt_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A file holding a variant of the judge's system prompt (default: the built-in one).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_(model, data, out, limit, batch_size, max_tokens, temperature, top_p, seed, precision, adapter_path,
          threshold, restart, answer_prefix, system_prompt_file, quiet):
    """Benchmark a judge model on a dataset with the batched engine (resumable)."""
    settings = EvalSettings(
        model=model, data=str(data), out=str(out), precision=precision,
        adapter_path=str(adapter_path) if adapter_path else None, limit=limit, batch_size=batch_size,
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, threshold=threshold,
        restart=restart, progress=not quiet, answer_prefix=answer_prefix, system_prompt_file=system_prompt_file)
    with user_errors():
        try:
            run = run_eval(settings)
        except _model_errors() as e:
            raise click.ClickException(str(e))
    m = run.metrics
    click.echo(f"{m['n']} examples: accuracy {_pct(m['accuracy'])}, parse failures {_pct(m['parse_failure_rate'])}, "
               f"macro-F1 {_num(m['macro_f1'])}, ECE {_num(m['ece'])}, Brier {_num(m['brier'])}")
    if m.get("generation_tps"):
        click.echo(f"throughput: prompt {m['prompt_tps']:.1f} tok/s, generation {m['generation_tps']:.1f} tok/s, "
                   f"{m['examples_per_s']:.3f} examples/s")
    click.echo(f"verdict: {verdict(m['accuracy'], threshold)}")
    click.echo(f"wrote {out / 'predictions.jsonl'}, {out / 'metrics.json'}, {out / 'report.md'}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threshold", type=float, default=0.85, show_default=True,
              help="Accuracy below which RL is worth pursuing.")
@click.option("-d", "--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The examples the runs answered: adds a paired test of each run against the first.")
def compare(runs, threshold, data):
    """Side-by-side table of eval run directories RUNS, and the verdict."""
    loaded = []
    try:
        for r in runs:
            _, metrics = load_run(r)
            loaded.append((r.name or str(r), metrics))
    except EvalError as e:
        raise click.ClickException(str(e))
    names = [n for n, _ in loaded]
    if len(set(names)) < len(names):
        loaded = [(str(r), m) for r, (_, m) in zip(runs, loaded)]
    click.echo(format_compare(loaded, threshold))
    if data is not None and len(runs) > 1:
        with user_errors():
            gold = {e.id: e.expected_decision.value for e in load_examples(data)}
            right = [{p.id: p.decision == gold[p.id] for p in read_predictions(Path(r) / PREDICTIONS) if p.id in gold}
                     for r in runs]
        click.echo(f"\nPaired on the examples of {data} (exact McNemar test against {loaded[0][0]}):")
        for (name, _), correct in zip(loaded[1:], right[1:]):
            po = paired_outcomes(right[0], correct)
            click.echo(f"  {name}: {po['n']} common examples; right in both {po['both']}, only in {name} "
                       f"{po['b_only']}, only in {loaded[0][0]} {po['a_only']}, in neither {po['neither']}; "
                       f"p = {po['p_value']:.3g}")


def _pct(v):
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v):
    return "–" if v is None else f"{v:.3f}"
