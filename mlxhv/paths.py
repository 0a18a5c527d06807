"""Where mlxhv finds things. The cache: what it builds or fetches once and reuses (converted models `models/`,
the embedded model's GGUF `gguf/`, the patched `libgfortran.so.5` that lets OpenBLAS load under MLX `lib/`, see
mlxhv/_blas.py). The shipped files: the judge adapter, datasets and configs, by the names the repository gives
them (`data/holdout.jsonl`, `smollm2-135m-judge`), found in the installed package when not here.

Standard library only: `mlxhv/__init__.py` reaches this module before anything imports mlx.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The mlxhv cache root: `$MLXHV_CACHE`, default `~/.cache/mlxhv`. Read on every call (tests point it
    elsewhere)."""
    return Path(os.environ.get("MLXHV_CACHE") or Path.home() / ".cache" / "mlxhv").expanduser()


SHIPPED_KINDS = ("adapters", "data", "configs")


def shipped_dir(kind: str) -> Path:
    """Where the shipped `kind` ("adapters" | "data" | "configs") lives: `mlxhv/shipped/<kind>` in an installed
    wheel (package data, see pyproject.toml), else the repository's top-level `<kind>/` (a source checkout or an
    editable install)."""
    if kind not in SHIPPED_KINDS:
        raise ValueError(f"kind must be one of {SHIPPED_KINDS}, not {kind!r}")
    here = Path(__file__).resolve().parent
    packaged = here / "shipped" / kind
    return packaged if packaged.is_dir() else here.parent / kind


def shipped(name: str | os.PathLike) -> Path | None:
    """The packaged copy of a shipped file or adapter named by `name`, or None.

    `name` is a path relative to the repository top (`data/holdout.jsonl`, `configs/sft-run2.json`,
    `adapters/smollm2-135m-judge`) or a bare adapter name (`smollm2-135m-judge`)."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        return None
    if parts[0] in SHIPPED_KINDS and len(parts) > 1:
        p = shipped_dir(parts[0]).joinpath(*parts[1:])
    elif len(parts) == 1:
        p = shipped_dir("adapters") / parts[0]
        if not (p / "adapter_config.json").is_file():
            return None
    else:
        return None
    return p if p.exists() else None


def resolve_path(name: str | os.PathLike) -> Path:
    """`name` itself when it exists here, else the shipped copy it names (see `shipped`), else `name` unchanged
    (the caller reports it missing, with the path the user gave)."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    return shipped(name) or p


def shipped_adapter(name: str = "smollm2-135m-judge") -> Path:
    """The directory of a shipped judge adapter (the default is the shipped judge)."""
    return shipped_dir("adapters") / name
