"""Models: presets, loaders (preset | hub id | mlx-lm directory | GGUF), the CPU fast path, memory check.

    model, tokenizer = load("smollm2-135m")            # embedded GGUF, converted once into the cache
    ids = apply_chat_template(tokenizer, [{"role": "user", "content": "Hi"}])
"""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # mlx-lm imports transformers: no "PyTorch was not found"

from mlxhv.models.chat import apply_chat_template  # noqa: E402
from mlxhv.errors import ModelLoadError  # noqa: E402
from mlxhv.models.gguf import convert_gguf, read_header  # noqa: E402
from mlxhv.models.loader import load, resolve  # noqa: E402
from mlxhv.models.precision import PRECISIONS  # noqa: E402
from mlxhv.models.presets import DEFAULT_MODEL, OFFLINE_PRESET, PRESETS, Preset  # noqa: E402

__all__ = ["load", "resolve", "PRESETS", "Preset", "DEFAULT_MODEL", "OFFLINE_PRESET", "PRECISIONS",
           "apply_chat_template", "ModelLoadError", "convert_gguf", "read_header"]
