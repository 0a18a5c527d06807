"""Where mlxhv keeps what it builds once and reuses: converted models (`models/`) and the patched
`libgfortran.so.5` that lets OpenBLAS load under MLX (`lib/`, see mlxhv/_blas.py).

Standard library only: `mlxhv/__init__.py` reaches this module before anything imports mlx.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The mlxhv cache root: `$MLXHV_CACHE`, default `~/.cache/mlxhv`. Read on every call (tests point it
    elsewhere)."""
    return Path(os.environ.get("MLXHV_CACHE") or Path.home() / ".cache" / "mlxhv").expanduser()
