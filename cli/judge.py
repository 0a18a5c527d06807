"""`mlxhv judge`: judge JSONL records (hypothesis + evidence, no gold label needed) into Prediction JSONL."""

from __future__ import annotations

from pathlib import Path

import click

from mlxhv.cli.common import ShippedPath


def judge_options(f):
    """The options `mlxhv judge` and `mlxhv serve` share: which judge, and how it generates."""
    opts = [
        click.option("-m", "--model", default="smollm2-135m", show_default=True,
                     help="Model preset, hub id, local mlx-lm directory or GGUF file."),
        click.option("--adapter", type=ShippedPath(exists=True, file_okay=False), default=None,
                     help="LoRA adapter directory or shipped adapter name; its judge_prompt.json sets the prompt "
                          "and answer prefix. Default: the shipped judge (smollm2-135m-judge) for the default "
                          "model, none for any other."),
        click.option("--no-adapter", is_flag=True, help="The model alone, without the shipped judge adapter."),
        click.option("--precision", default="auto", show_default=True,
                     help="auto = the float32 CPU fast path where it fits; quantized | float32 | bfloat16."),
        click.option("--max-tokens", type=int, default=None,
                     help="Token budget per answer (default: the adapter's, else the model preset's)."),
        click.option("--temperature", type=float, default=None, help="Default: the model preset's (0 = greedy)."),
        click.option("--top-p", type=float, default=None, help="Nucleus sampling mass (default: the preset's, 1.0)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the sampling streams (a request's own seed wins in serve)."),
        click.option("--answer-prefix", default=None, metavar="TEXT",
                     help='Opens every answer ("json" = {"decision": "); must match the adapter\'s if it has one.'),
        click.option("--system-prompt", "system_prompt_file", type=click.Path(exists=True, dir_okay=False),
                     default=None, help="System prompt file; must match the adapter's if it has one."),
        click.option("--max-prompt-tokens", type=int, default=None,
                     help="Refuse longer prompts (default: only the model's context bounds them)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


DEFAULT_MODEL = "smollm2-135m"


def load_judge(model, adapter, no_adapter=False, **settings):
    """The judge asked for: `adapter`, else the shipped judge when `model` is the default preset (unless
    `no_adapter`)."""
    from mlxhv.errors import SettingsError
    from mlxhv.judge import Judge
    from mlxhv.paths import shipped_adapter

    if no_adapter and adapter:
        raise SettingsError("--adapter and --no-adapter cannot apply together")
    if adapter is None and not no_adapter and model == DEFAULT_MODEL:
        adapter = shipped_adapter()
    return Judge.load(model, adapter=str(adapter) if adapter else None, **settings)


@click.command("judge")
@click.argument("file", type=click.Path(exists=True, allow_dash=True, dir_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Prediction JSONL to write (standard output without it). Rerunning resumes it.")
@judge_options
@click.option("--batch-size", type=int, default=16, show_default=True, help="Records per engine batch.")
@click.option("-q", "--quiet", is_flag=True, help="No summary on standard error.")
def judge(file, out, model, adapter, no_adapter, precision, max_tokens, temperature, top_p, seed, answer_prefix,
          system_prompt_file, max_prompt_tokens, batch_size, quiet):
    """Judge the JSONL records of FILE ("-": standard input), each {"hypothesis", "evidence", "id"?}, and write
    one Prediction per record. Bad lines are skipped, then all reported as file:line: field: message (exit
    status 2)."""
    from mlxhv.errors import DataError
    from mlxhv.judge import judge_file

    j = load_judge(model, adapter, no_adapter, precision=precision, max_tokens=max_tokens, temperature=temperature,
                   top_p=top_p, seed=seed, answer_prefix=answer_prefix, system_prompt_file=system_prompt_file,
                   max_prompt_tokens=max_prompt_tokens, batch_size=batch_size)
    result = judge_file(j, file, out)
    if not quiet:
        where = f" into {out}" if out else ""
        resumed = f", {result.skipped} already there" if result.skipped else ""
        click.echo(f"judged {result.judged} record(s){where}{resumed}; {len(result.errors)} bad line(s)", err=True)
    if result.errors:
        raise DataError(result.errors)
