"""Checkpoints and resume, one implementation for the SFT and RL trainers.

A checkpoint is a directory `RUN/checkpoints/step-NNNNNN/` holding the adapter in mlx-lm's format
(`adapters.safetensors`, `adapter_config.json`), `judge_prompt.json` (how to prompt it), `optimizer.safetensors`,
any extra arrays a trainer keeps (the RL value head) and `trainer_state.json` (step, counters, settings). It is
written to `step-NNNNNN.tmp/` and renamed into place, so a kill leaves the old checkpoint or the new one, never
half of one; its adapter files are then copied to the top of the run (what `--adapter RUN` loads). On resume the
latest checkpoint is restored and `metrics.jsonl` is cut back to its step, so no step is logged twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlxhv.prompts import PROMPT_CONFIG_FILE, write_prompt_config
from mlxhv.rl.lora import save_adapters

ADAPTER_FILES = ("adapters.safetensors", "adapter_config.json", PROMPT_CONFIG_FILE)


def write_checkpoint(out_dir, step: int, model, lora, optimizer, prompt_config, trainer_state: dict,
                     arrays: dict | None = None, adapter_extra: dict | None = None,
                     published: tuple = ADAPTER_FILES) -> Path:
    """Write step-NNNNNN/ atomically (module doc) and publish its `published` files to the top of `out_dir`.
    `arrays`: {file name: module whose parameters are saved there} (e.g. the value head)."""
    out_dir = Path(out_dir)
    final = out_dir / "checkpoints" / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_adapters(model, lora, tmp, extra=adapter_extra)
    write_prompt_config(tmp, prompt_config)
    for name, module in (arrays or {}).items():
        mx.save_safetensors(str(tmp / name), dict(tree_flatten(module.parameters())))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    publish(final, out_dir, published)
    return final


def publish(ckpt: Path, out_dir: Path, names: tuple = ADAPTER_FILES) -> None:
    """Copy a checkpoint's adapter files to the top of the run (what `--adapter RUN` loads)."""
    for name in names:
        shutil.copy2(Path(ckpt) / name, Path(out_dir) / name)


def latest_checkpoint(out_dir) -> Path | None:
    ckpts = sorted((Path(out_dir) / "checkpoints").glob("step-[0-9]*[0-9]"))
    return ckpts[-1] if ckpts else None


def restore(model, optimizer, ckpt, arrays: dict | None = None, init_params=None) -> dict:
    """Load a checkpoint's LoRA weights, `arrays` ({file name: module}) and optimizer state into a freshly built
    model and optimizer; `init_params` (the trainable parameters) completes the optimizer's state for them.
    Returns the trainer state."""
    ckpt = Path(ckpt)
    model.load_weights(str(ckpt / "adapters.safetensors"), strict=False)
    for name, module in (arrays or {}).items():
        module.load_weights(str(ckpt / name))
    optimizer.state = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
    if init_params is not None:
        optimizer.init(init_params)
    return json.loads((ckpt / "trainer_state.json").read_text())


def truncate_log(path: Path, last_step: int) -> None:
    """On resume: keep only the metrics lines of steps <= last_step (no duplicates after a kill)."""
    from mlxhv.data.io import iter_jsonl, repair_tail, write_jsonl

    path = Path(path)
    if not path.exists():
        return
    repair_tail(path)
    keep = [obj for _, obj in iter_jsonl(path) if isinstance(obj, dict) and obj.get("step", 0) <= last_step]
    write_jsonl(path, keep, force=True)
