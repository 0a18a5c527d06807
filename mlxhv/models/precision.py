"""Precision of the loaded weights: the CPU fast path.

On a CPU, MLX's quantised matmul runs on one core and ignores BLAS, while float32 matmuls go to OpenBLAS
(mlxhv/_blas.py): for a small model, dequantising once at load time makes prompts ~25× and generation ~9×
faster (docs/design.md). On Metal / CUDA the 4-bit kernels are the fast ones, so `auto` keeps them there.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map, tree_unflatten

PRECISIONS = ("auto", "quantized", "float32", "bfloat16")
AUTO_FLOAT32_MAX_BYTES = 4e9  # `auto` dequantises on CPU only while float32 weights stay under this
from mlxhv.errors import SettingsError


def has_gpu() -> bool:
    return mx.default_device() == mx.gpu


def resolve_precision(precision: str, float32_bytes: float, available_bytes: float) -> str:
    """`auto` → "float32" on a CPU-only machine for a model whose float32 weights are small (under
    AUTO_FLOAT32_MAX_BYTES and half the free memory), else "quantized" (= as stored)."""
    if precision not in PRECISIONS:
        raise SettingsError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    if not has_gpu() and float32_bytes <= min(AUTO_FLOAT32_MAX_BYTES, 0.5 * available_bytes):
        return "float32"
    return "quantized"


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Convert the model in place: "float32" / "bfloat16" dequantise every quantised layer and cast all
    floating parameters; "quantized" quantises an unquantised model to 4-bit (group 64) and otherwise keeps
    the stored quantisation."""
    if precision == "quantized":
        if not is_quantized(model):
            nn.quantize(model, group_size=64, bits=4,
                        class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % 64 == 0)
    elif precision in ("float32", "bfloat16"):
        dtype = mx.float32 if precision == "float32" else mx.bfloat16
        dequantize(model, dtype)
        model.update(tree_map(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p,
                              model.parameters()))
        if dtype == mx.float32:
            column_major(model)
    else:
        raise ValueError(f"unresolved precision {precision!r}")
    mx.eval(model.parameters())
    return model


def dequantize(model: nn.Module, dtype=mx.float32) -> nn.Module:
    """Replace QuantizedLinear / QuantizedEmbedding by Linear / Embedding with weights dequantised straight
    to `dtype` (mlx-lm's dequantize_model goes through the scales' float16 first)."""
    new = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            continue
        w = _dequantize_weight(m, dtype)
        if isinstance(m, nn.QuantizedLinear):
            lin = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
            if "bias" in m:
                lin.bias = m.bias
        else:
            lin = nn.Embedding(w.shape[0], w.shape[1])
        lin.weight = w
        new.append((name, lin))
    if new:
        model.update_modules(tree_unflatten(new))
    return model


def column_major(model: nn.Module) -> nn.Module:
    """Store every 2-D weight column-major: `weight` keeps its (out, in) shape and values, but is the
    transposed view of a row-major (in, out) buffer, so `x @ weight.T` (nn.Linear, a tied head) is a plain
    no-transpose GEMM. OpenBLAS runs that layout ~1.5× faster at decode batch sizes (B ≤ 64): a decode step
    of SmolLM2-135M at B=16 went from ~330 to ~210 ms on the 2-core CPU, same tokens."""

    def flip(w):
        if w.ndim != 2 or not mx.issubdtype(w.dtype, mx.floating):
            return w
        buf = mx.contiguous(w.T)  # (in, out) row-major
        mx.eval(buf)
        return buf.T  # (out, in) view

    model.update(tree_map(flip, model.parameters()))
    return model


def _dequantize_weight(m, dtype) -> mx.array:
    """Dequantised weight (out, in). Affine 4/8-bit goes through numpy (vectorised, ~5× faster than MLX's
    single-threaded CPU dequantize); other modes through mx.dequantize."""
    if m.mode != "affine" or m.bits not in (4, 8) or "biases" not in m:
        return mx.dequantize(m.weight, m.scales, m.get("biases"), m.group_size, m.bits, m.mode, dtype=dtype)
    packed = np.array(m.weight).view(np.uint8)  # (out, in * bits / 8), little-endian words
    if m.bits == 4:  # element 2k in the low nibble of byte k, 2k+1 in the high one
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    else:
        q = packed
    out, n_in = q.shape
    scales = np.array(m.scales.astype(mx.float32))[..., None]  # (out, in / group, 1)
    biases = np.array(m.biases.astype(mx.float32))[..., None]
    w = q.reshape(out, n_in // m.group_size, m.group_size).astype(np.float32) * scales + biases
    return mx.array(w.reshape(out, n_in)).astype(dtype)


def model_precision(model: nn.Module) -> str:
    """What the model runs at now: "quantized", "float32", "bfloat16", "float16"."""
    if is_quantized(model):
        return "quantized"
    dtypes = {str(p.dtype).split(".")[-1] for _, p in tree_flatten(model.parameters())}
    return "/".join(sorted(dtypes))

