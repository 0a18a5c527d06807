"""Shared fixtures. Importing mlxhv first puts OpenBLAS under MLX (mlxhv/_blas.py) before any test module
imports mlx.core.

- `smollm`: (model, tokenizer) of the embedded SmolLM2-135M on the CPU fast path (float32), loaded once.
- `smollm_quantized`: the same model as stored in the GGUF (4-bit), loaded once.
- `smollm_dir`: the converted mlx-lm directory (opens with mlx_lm.load).
The converted model lives in a per-session cache (MLXHV_CACHE), so tests never touch ~/.cache/mlxhv.
"""

import os

import mlxhv  # noqa: F401  (before mlx.core)
import pytest


@pytest.fixture(scope="session")
def mlxhv_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlxhv-cache")
    old = os.environ.get("MLXHV_CACHE")
    os.environ["MLXHV_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MLXHV_CACHE", None)
    else:
        os.environ["MLXHV_CACHE"] = old


@pytest.fixture(scope="session")
def smollm_dir(mlxhv_cache):
    from mlxhv.models import resolve
    from mlxhv.models.loader import ensure_converted

    return ensure_converted(resolve("smollm2-135m").gguf)


@pytest.fixture(scope="session")
def smollm(smollm_dir):
    from mlxhv.models import load

    return load("smollm2-135m", precision="float32")


@pytest.fixture(scope="session")
def smollm_quantized(smollm_dir):
    from mlxhv.models import load

    return load("smollm2-135m", precision="quantized")
