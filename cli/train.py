"""`mlxhv train ppo|sft|plot|decisions`: options -> settings dataclass -> the library's trainer."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from mlxhv.cli.common import ShippedPath
from mlxhv.errors import SettingsError


@click.group()
def train():
    """Train a judge: LoRA SFT warm start, PPO (value head) or GRPO; curves and sampled decisions of a run."""


def _read_config(path: Path) -> dict:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


@train.command()
@click.option("--config", "config", type=ShippedPath(exists=True, dir_okay=False),
              help="JSON or YAML file of RLSettings fields (a shipped one by name too: configs/judge-ppo1.json); "
                   "command-line options override it.")
@click.option("--model", help="Preset, hub id, mlx-lm directory or GGUF file (default smollm2-135m).")
@click.option("--precision", type=click.Choice(["auto", "quantized", "float32", "bfloat16"]),
              help="auto (default): the float32 CPU fast path where it fits, the stored weights on a GPU.")
@click.option("--train", "train_file", type=click.Path(path_type=Path),
              help="Training examples (JSONL; default data/train.jsonl, the shipped set where there is none here).")
@click.option("--holdout", type=click.Path(path_type=Path),
              help="Holdout examples for periodic evaluation (default data/holdout.jsonl).")
@click.option("--steps", type=int, help="Training steps (default 20).")
@click.option("--max-minutes", type=float, help="Wall-clock budget: end the run (eval, checkpoint) once it is spent.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (metrics, checkpoints, adapters).")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its latest checkpoint, with the settings in its settings.json "
                   "(an option given again must equal the run's).")
@click.option("--prompts-per-step", type=int, help="Training prompts per step (default 8).")
@click.option("--samples-per-prompt", type=int, help="Sampled answers per prompt (default 2).")
@click.option("--max-new-tokens", type=int, help="Token budget of a sampled answer (default 64).")
@click.option("--temperature", type=float, help="Sampling temperature of the rollouts (default 0.7).")
@click.option("--system-prompt", "system_prompt_file", type=click.Path(exists=True, dir_okay=False),
              help="A file holding a variant of the judge's system prompt (with --init-adapter: must equal the "
                   "adapter's).")
@click.option("--answer-prefix", metavar="TEXT",
              help='Opens every answer (prefill); "json": {"decision": " (default: --init-adapter\'s, else none; '
                   'must equal the adapter\'s).')
@click.option("--lr", type=float, help="AdamW learning rate (default 5e-5).")
@click.option("--ppo-epochs", type=int, help="Passes over each step's samples (default 2).")
@click.option("--minibatch-size", type=int, help="Samples per update (default 4).")
@click.option("--kl-coef", type=float, help="Initial coefficient of the per-token KL penalty (default 0.05).")
@click.option("--save-every", type=int, help="Checkpoint every N steps (default 10).")
@click.option("--eval-every", type=int, help="Evaluate on the holdout every N steps (default 0: at the end only).")
@click.option("--eval-limit", type=int, help="Evaluate on the first N holdout examples only.")
@click.option("--seed", type=int, help="Seed of everything random in the run (default 0).")
@click.option("--algo", type=click.Choice(["ppo", "grpo"]),
              help="ppo: value head + GAE (default); grpo: group-normalised advantages, no critic.")
@click.option("--init-adapter", type=click.Path(file_okay=False),
              help="Start from this LoRA adapter (mlxhv train sft, mlx_lm.lora, or a shipped one by name: "
                   "smollm2-135m-judge); its layout and its judge_prompt.json are used.")
@click.option("--print-config", is_flag=True, help="Print the resolved settings and exit.")
def ppo(config, resume, print_config, train_file, **opts):
    """Train with PPO (or --algo grpo): rollouts through the batched engine, correctness + calibration reward.

    Under `mlx.launch -n N` every rank samples 1/N of each step's prompts; gradients are averaged."""
    from mlxhv.rl.trainer import RLSettings, restore_settings, train as run_train

    d = _read_config(config) if config else {}
    if train_file is not None:
        opts["train"] = str(train_file)
    for k, v in opts.items():
        if v is not None:
            d[k] = str(v) if isinstance(v, Path) else v
    try:
        settings = restore_settings(d) if resume else RLSettings.from_dict(d)
    except SettingsError as e:
        raise SettingsError(f"{config or 'options'}: {e}") from None
    if print_config:
        click.echo(json.dumps(asdict(settings), indent=2))
        return
    state = run_train(settings, resume=resume)
    click.echo(f"done: step {state.step}, adapters in {settings.out} (skipped updates: {state.skipped_updates})")


@train.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="PNG path (default RUN_DIR/curves.png).")
def plot(run_dir, out):
    """Draw the training curves of a PPO run (needs matplotlib)."""
    from mlxhv.rl.plot import plot_run

    path = plot_run(run_dir, out)
    if path is None:
        raise SettingsError("matplotlib is not installed: pip install 'mlxhv[plots]'")
    click.echo(str(path))


@train.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--every", type=int, default=25, show_default=True, help="Steps per row.")
def decisions(run_dir, every):
    """Sampled decisions per gold class over a PPO run (from RUN_DIR/samples.jsonl): does it read the evidence?"""
    from mlxhv.rl.task import decisions_by_gold, format_decisions

    click.echo(format_decisions(decisions_by_gold(run_dir, every)))


@train.command()
@click.option("--config", "config", type=ShippedPath(exists=True, dir_okay=False),
              help="JSON or YAML file of SFTSettings fields (a shipped one by name too: configs/sft-run2.json); "
                   "command-line options override it.")
@click.option("--model", help="Preset, hub id, mlx-lm directory or GGUF file (default smollm2-135m).")
@click.option("--precision", type=click.Choice(["auto", "quantized", "float32", "bfloat16"]),
              help="auto (default): the float32 CPU fast path where it fits, the stored weights on a GPU.")
@click.option("--train", "train_files", multiple=True, type=click.Path(path_type=Path),
              help="Training examples (JSONL); repeat to mix files. The first gives the validation slice.")
@click.option("--synth", type=int, help="Add N `data synth` examples (every difficulty level) to the training set.")
@click.option("--valid-fraction", type=float, help="Stratified share of the first file kept for validation.")
@click.option("--steps", type=int, help="Optimizer steps (default 200).")
@click.option("--max-minutes", type=float, help="Wall-clock budget: end the run (validate, checkpoint) once spent.")
@click.option("--batch-size", type=int, help="Examples per step (default 4).")
@click.option("--lr", type=float, help="Adam learning rate (default 1e-4).")
@click.option("--curriculum", type=click.Choice(["none", "levels"]), help="levels: difficulty 1 first, towards 4.")
@click.option("--balance-classes/--no-balance-classes", default=None, help="Draw every gold decision equally.")
@click.option("--system-prompt", "system_prompt_file", type=click.Path(exists=True, dir_okay=False),
              help="A file holding a variant of the judge's system prompt.")
@click.option("--answer-prefix", metavar="TEXT", help='Opens every answer (prefill); "json": {"decision": "')
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (metrics, checkpoints, adapter).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--save-every", type=int, help="Checkpoint every N steps (default 25).")
@click.option("--eval-every", type=int, help="Validate every N steps (and at the end).")
@click.option("--seed", type=int, help="Seed of everything random in the run (default 0).")
@click.option("--print-config", is_flag=True, help="Print the resolved settings and exit.")
def sft(config, resume, print_config, train_files, **opts):
    """Supervised LoRA warm start on the judge's answers (mlx-lm's tuner; prompt masked, answer trained).

    The adapter at the top of --out is the best checkpoint on the validation slice; continue with
    `mlxhv train ppo --init-adapter OUT`."""
    from mlxhv.rl.sft import SFTSettings, train_sft

    d = _read_config(config) if config else {}
    if train_files:
        d["train"] = [str(p) for p in train_files]
    for k, v in opts.items():
        if v is not None:
            d[k] = str(v) if isinstance(v, Path) else v
    try:
        settings = SFTSettings.from_dict(d)
    except (SettingsError, TypeError) as e:
        raise SettingsError(f"{config or 'options'}: {e}") from None
    if print_config:
        click.echo(json.dumps(asdict(settings), indent=2))
        return
    result = train_sft(settings, resume=resume)
    best = result.best or {}
    click.echo(f"done: step {result.step}; adapter in {result.out} (best step {best.get('step')}, "
               f"val loss {best.get('loss')}, val decision accuracy {best.get('decision_accuracy')})")
