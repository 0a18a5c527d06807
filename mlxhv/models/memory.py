"""Refuse to load a model whose weights will not fit, before reading (or downloading) a byte of them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mlxhv.errors import ModelLoadError

GB = 1e9
HEADROOM = 0.9  # fraction of available memory the weights may take


def available_bytes() -> int:
    """Memory the process can take now: MemAvailable on Linux, physical memory elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def bits_per_weight(config: dict | None) -> float:
    """Stored bits per weight: 16 for an unquantised checkpoint; bits + 32/group for affine quantisation
    (a float16 scale and bias per group)."""
    q = (config or {}).get("quantization")
    if not q:
        return 16.0
    return q["bits"] + 32 / q["group_size"]


def loaded_bytes(stored_bytes: float, config: dict | None, precision: str, params: float | None = None) -> float:
    """Bytes the weights take in memory at `precision` ("quantized" keeps what is stored): the parameter
    count × bytes per parameter when known, else stored bytes rescaled from the stored bits per weight."""
    target = {"float32": 32, "bfloat16": 16, "float16": 16}.get(precision)
    if target is None:
        return stored_bytes
    if params is not None and config is None:
        return params * target / 8
    return stored_bytes * target / bits_per_weight(config)


def check_fits(name: str, need_bytes: float, available: int | None = None) -> None:
    """Raise ModelLoadError with the numbers when `need_bytes` exceeds HEADROOM × available memory."""
    available = available_bytes() if available is None else available
    if need_bytes > HEADROOM * available:
        raise ModelLoadError(
            f"{name}: its weights need ~{need_bytes / GB:.1f} GB but only {available / GB:.1f} GB of memory is "
            f"available (limit {HEADROOM:.0%} of it); pick a smaller model or precision, or override with "
            "--no-memory-check (memory_check=False)")
