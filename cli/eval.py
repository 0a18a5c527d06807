"""`mlxhv eval` and `mlxhv compare`: thin wrappers over mlxhv.eval."""

from __future__ import annotations

from pathlib import Path

import click

from mlxhv import distributed
from mlxhv.cli.common import ShippedPath
from mlxhv.data import load_examples
from mlxhv.eval.evaluator import EvalSettings, load_run, paired_with_first, run_eval
from mlxhv.eval.report import format_compare, verdict
from mlxhv.models.presets import GENERATION_PRESETS


@click.command("eval")
@click.option("-m", "--model", default="smollm2-135m", show_default=True,
              help="Model preset, hub id, local directory or GGUF file.")
@click.option("-d", "--data", type=ShippedPath(dir_okay=False), default="data/holdout.jsonl",
              show_default=True, help="JSONL file of examples (a shipped one by its name, e.g. data/holdout.jsonl).")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Run directory: predictions.jsonl, metrics.json, report.md. Rerunning resumes it.")
@click.option("--limit", type=int, default=None,
              help="Evaluate a deterministic sample of N examples with the file's mix of domains, decisions, levels.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Examples per engine batch.")
@click.option("--max-tokens", type=int, default=None,
              help=f"Token budget per answer (default: the adapter's, else per model: QwQ "
                   f"{GENERATION_PRESETS['qwq']['max_tokens']}, others {GENERATION_PRESETS['default']['max_tokens']}).")
@click.option("--temperature", type=float, default=None, help="Default per model: QwQ 0.6, others 0 (greedy).")
@click.option("--top-p", type=float, default=None, help="Default per model: QwQ 0.95, others 1.0.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (unused when greedy).")
@click.option("--precision", default="auto", show_default=True,
              help="auto = the float32 CPU fast path where it fits; quantized | float32 | bfloat16.")
@click.option("--adapter", "adapter_path", type=ShippedPath(exists=True, file_okay=False), default=None,
              help="LoRA adapter directory (adapters.safetensors + adapter_config.json), or a shipped one by name "
                   "(smollm2-135m-judge). The prompt it was trained with (judge_prompt.json) applies; an "
                   "--answer-prefix or --system-prompt that differs from it is refused. --max-tokens overrides.")
@click.option("--threshold", type=float, default=0.85, show_default=True,
              help="Accuracy below which RL is worth pursuing.")
@click.option("--restart", is_flag=True, help="Discard an existing run in --out instead of resuming it.")
@click.option("--answer-prefix", default=None, metavar="TEXT",
              help='Text that opens every answer (prefill); "json" means {"decision": " so a small model answers '
                   'in the format at once; "" none (default: the adapter\'s, else none). Compare runs only at the '
                   'same prefix.')
@click.option("--system-prompt", "system_prompt_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A file holding a variant of the judge's system prompt (default: the adapter's, else the "
                   "built-in one).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_(model, data, out, limit, batch_size, max_tokens, temperature, top_p, seed, precision, adapter_path,
          threshold, restart, answer_prefix, system_prompt_file, quiet):
    """Benchmark a judge model on a dataset with the batched engine (resumable)."""
    if adapter_path is not None:  # as judge and serve: an adapter is prompted as it was trained, or not at all
        from mlxhv.judge import resolve_prompt_config

        resolve_prompt_config(str(adapter_path), system_prompt_file, answer_prefix)
    settings = EvalSettings(
        model=model, data=str(data), out=str(out), precision=precision,
        adapter_path=str(adapter_path) if adapter_path else None, limit=limit, batch_size=batch_size,
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, threshold=threshold,
        restart=restart, progress=not quiet, answer_prefix=answer_prefix, system_prompt_file=system_prompt_file)
    s = settings.resolved()
    if s.from_adapter and distributed.is_main():
        shown = {"answer_prefix": f"answer prefix {s.answer_prefix!r}",
                 "max_tokens": f"max_tokens {s.max_tokens}",
                 "system_prompt": f"system prompt ({len(s.system_prompt or '')} characters)"}
        click.echo(f"prompt settings from {Path(s.adapter_path) / 'judge_prompt.json'}: "
                   + ", ".join(shown[k] for k in s.from_adapter))
    run = run_eval(settings)
    if not distributed.is_main():  # under mlx.launch rank 0 reports
        return
    m = run.metrics
    click.echo(f"{m['n']} examples: accuracy {_pct(m['accuracy'])}, parse failures {_pct(m['parse_failure_rate'])}, "
               f"macro-F1 {_num(m['macro_f1'])}, ECE {_num(m['ece'])}, Brier {_num(m['brier'])}, "
               f"AUROC {_num(m.get('auroc'))}")
    if m.get("n_token"):
        click.echo(f"decision-token probability: ECE {_num(m['ece_token'])}, Brier {_num(m['brier_token'])}, "
                   f"AUROC {_num(m['auroc_token'])}; better calibrated: {m['better_calibrated']}")
    if m.get("generation_tps"):
        click.echo(f"throughput: prompt {m['prompt_tps']:.1f} tok/s, generation {m['generation_tps']:.1f} tok/s, "
                   f"{m['examples_per_s']:.3f} examples/s")
    click.echo(f"verdict: {verdict(m['accuracy'], threshold)}")
    click.echo(f"wrote {out / 'predictions.jsonl'}, {out / 'metrics.json'}, {out / 'report.md'}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threshold", type=float, default=0.85, show_default=True,
              help="Accuracy below which RL is worth pursuing.")
@click.option("-d", "--data", type=ShippedPath(exists=True, dir_okay=False), default=None,
              help="The examples the runs answered (a shipped file by its name too): adds a paired test of each "
                   "run against the first.")
def compare(runs, threshold, data):
    """Side-by-side table of eval run directories RUNS, and the verdict."""
    loaded = []
    for r in runs:
        _, metrics = load_run(r)
        loaded.append((r.name or str(r), metrics))
    names = [n for n, _ in loaded]
    if len(set(names)) < len(names):
        loaded = [(str(r), m) for r, (_, m) in zip(runs, loaded)]
    click.echo(format_compare(loaded, threshold))
    if data is not None and len(runs) > 1:
        paired = paired_with_first(runs, load_examples(data))
        click.echo(f"\nPaired on the examples of {data} (exact McNemar test against {loaded[0][0]}):")
        for (name, _), po in zip(loaded[1:], paired):
            click.echo(f"  {name}: {po['n']} common examples; right in both {po['both']}, only in {name} "
                       f"{po['b_only']}, only in {loaded[0][0]} {po['a_only']}, in neither {po['neither']}; "
                       f"p = {po['p_value']:.3g}")


def _pct(v):
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v):
    return "–" if v is None else f"{v:.3f}"
