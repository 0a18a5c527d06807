"""The engine's own decoder pass on a CPU: the same blocks, a faster softmax and SiLU.

On MLX's CPU backend, `mx.fast.scaled_dot_product_attention` materialises the (heads, queries, keys) scores and
takes `exp` of each at ~20-40 ns an element, and SiLU's sigmoid does the same over the MLP's hidden units; for a
~500-token judge prompt that is a large share of a pass that would otherwise be BLAS matmuls. Here `exp` is
Cephes' `exp2f` scheme built from MLX ops and fused by `mx.compile`:

    exp(x) = 2^n * 2^f,   y = x * log2(e),  n = round(y),  f = y - n in [-1/2, 1/2]
    2^f ~ 1 + f * P(f)    (degree-6 polynomial, relative error ~2e-7, below float32's own rounding of exp)
    2^n                   (n + 127) << 23 read as a float32

`hidden_states(model, tokens, cache)` runs a plain llama decoder (embedding, blocks, final norm) with the model's
own weights, RoPE, KV caches and mlx-lm's masks, and only attention's softmax and the MLP's SiLU replaced. It
falls back to `model.model(...)` wherever that does not hold: other architectures, sliding windows, quantised KV
caches, or any device but the CPU (Metal and CUDA have a fused attention kernel). The engine calls it for every
prefill and decode step; nothing here is differentiated (the training passes use mlx-lm's blocks).

A batch whose rows share a prompt prefix keeps that prefix's keys and values once (`SharedPrefixCache`): a decode
step scores every row's queries against it in one matmul per KV head, instead of reading one copy per row. On a CPU
a decode step's cost per row is mostly these KV reads (~46 kB per position per row for SmolLM2); the split costs
~15 more ops a layer, so it pays from ~8 rows up (the engine's rule).
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx
from mlx_lm.models.base import create_attention_mask

_LOG2E = 1.4426950408889634
_EXP2_POLY = (1.535336188319500e-4, 1.339887440266574e-3, 9.618437357674640e-3, 5.550332471162809e-2,
              2.402264791363012e-1, 6.931472028550421e-1)  # Cephes exp2f, f in [-1/2, 1/2]
_NEG = -1e30  # a masked score; exp underflows to 0


def exp(x: mx.array) -> mx.array:
    """exp(x) for float32 x <= ~88 (scores after the row max is subtracted are <= 0); 0 below ~-87."""
    y = mx.maximum(x * _LOG2E, -126.0)
    n = mx.round(y)
    f = y - n
    p = _EXP2_POLY[0]
    for c in _EXP2_POLY[1:]:
        p = p * f + c
    p = p * f + 1.0
    return p * ((n.astype(mx.int32) + 127) << 23).view(mx.float32)


def _rows(s: mx.array) -> mx.array:
    e = exp(s - mx.max(s, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_softmax = mx.compile(_rows)
_masked_softmax = mx.compile(lambda s, keep: _rows(mx.where(keep, s, _NEG)))


@mx.compile
def _logsumexp(x: mx.array) -> mx.array:
    m = mx.max(x, axis=-1, keepdims=True)
    return m + mx.log(exp(x - m).sum(axis=-1, keepdims=True))


def logsumexp(x: mx.array) -> mx.array:
    """log sum exp over the last axis (keepdims), for finite x: with the polynomial `exp` on a CPU (~4x
    `mx.logsumexp` over a 49k vocabulary), `mx.logsumexp` elsewhere."""
    if mx.default_device() == mx.cpu and _compiles():
        return _logsumexp(x)
    return mx.logsumexp(x, axis=-1, keepdims=True)


def causal_keep(Lq: int, Lk: int) -> mx.array:
    """(Lq, Lk) keep-mask of MLX's "causal": query i (the last Lq of Lk positions) sees keys up to its own."""
    return mx.arange(Lk)[None] <= mx.arange(Lq)[:, None] + (Lk - Lq)


@mx.compile
def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """silu(gate) * x with silu(g) = g / (1 + exp(-g)); exp(-g) overflows to inf for g < -88, giving 0."""
    return gate / (1.0 + exp(mx.minimum(-gate, 88.0))) * x


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask, prefix=None) -> mx.array:
    """softmax(scale q k^T + mask) v with grouped KV heads. q (B, H, Lq, D), k/v (B, Hk, Lk, D); mask None,
    "causal" (aligned bottom-right, as MLX's), a boolean keep-mask or an additive one, broadcastable to
    (B, 1, Lq, Lk). -> (B, H, Lq, D).

    The G = H / Hk query heads that share a KV head are folded into the rows of one matmul, (G Lq, D) @ (D, Lk),
    rather than broadcasting K over G (MLX's CPU matmul copies a broadcast operand): ~2x faster decode steps.

    `prefix` = (kp, vp), each (1, Hk, P, D): keys and values every row sees before its own k/v (a shared prompt
    prefix, unmasked). Its scores for all rows come from one matmul per KV head, (B G Lq, D) @ (D, P), so the
    prefix is read once per step instead of once per row; one softmax runs over [prefix, own] keys."""
    B, H, Lq, D = q.shape
    Hk, Lk = k.shape[1], k.shape[2]
    G = H // Hk
    q = (q * scale).reshape(B, Hk, G * Lq, D)
    s = (q @ k.swapaxes(-1, -2)).reshape(B, Hk, G, Lq, Lk)
    if isinstance(mask, str):
        keep = causal_keep(Lq, Lk)
    elif mask is not None and mask.dtype != mx.bool_:
        s, keep = s + (mask[:, :, None] if mask.ndim == 4 else mask), None
    else:
        keep = mask[:, :, None] if mask is not None and mask.ndim == 4 else mask
    if prefix is None:
        p = _softmax(s) if keep is None else _masked_softmax(s, keep)
        return (p.reshape(B, Hk, G * Lq, Lk) @ v).reshape(B, H, Lq, D)
    kp, vp = prefix
    P = kp.shape[2]
    rows = q.transpose(1, 0, 2, 3).reshape(Hk, B * G * Lq, D)  # every row's queries, per KV head
    sp = (rows @ kp[0].swapaxes(-1, -2)).reshape(Hk, B, G, Lq, P).transpose(1, 0, 2, 3, 4)
    s = mx.concatenate([sp, s], axis=-1)  # (B, Hk, G, Lq, P + Lk)
    if keep is None:
        p = _softmax(s)
    else:
        keep = mx.broadcast_to(keep, (*keep.shape[:-1], Lk))
        p = _masked_softmax(s, mx.concatenate([mx.ones((*keep.shape[:-1], P), mx.bool_), keep], axis=-1))
    pp = p[..., :P].transpose(1, 0, 2, 3, 4).reshape(Hk, B * G * Lq, P)
    out_p = (pp @ vp[0]).reshape(Hk, B, G * Lq, D).transpose(1, 0, 2, 3)
    out = p[..., P:].reshape(B, Hk, G * Lq, Lk) @ v + out_p
    return out.reshape(B, H, Lq, D)


class SharedPrefixCache:
    """One layer's KV cache for a batch whose rows all start with the same P positions: the prefix's keys and
    values once, (1, Hk, P, D), and a `BatchKVCache` (mlx-lm's) of each row's own positions after it. RoPE sees
    absolute positions (`offset` = P + the row's own length); masks, `extend` and `filter` are the row cache's.
    Only `hidden_states` (with `attention(..., prefix=...)`) reads it: mlx-lm's blocks would see just the rows'
    own keys."""

    def __init__(self, prefix_keys: mx.array, prefix_values: mx.array, rows):
        self.prefix_keys, self.prefix_values, self.rows = prefix_keys, prefix_values, rows

    @property
    def offset(self):
        return self.rows.offset + self.prefix_keys.shape[2]

    def update_and_fetch(self, keys, values):
        return self.rows.update_and_fetch(keys, values)

    def make_mask(self, N: int, **kwargs):
        return self.rows.make_mask(N, **kwargs)

    def filter(self, batch_indices) -> None:
        self.rows.filter(batch_indices)

    def extend(self, other: "SharedPrefixCache") -> None:
        self.rows.extend(other.rows)

    @property
    def state(self):
        return self.prefix_keys, self.prefix_values, *self.rows.state


@cache
def _compiles() -> bool:
    """MLX's CPU backend compiles fused kernels with the system's C++ compiler; without one, mlx-lm's blocks."""
    try:
        mx.eval(swiglu(mx.zeros(4), mx.ones(4)))
        return True
    except Exception:  # noqa: BLE001 (any failure to build the kernel means: do not use it)
        return False


def supported(model) -> bool:
    """True when `hidden_states` runs its own blocks for this model on the current device."""
    inner = getattr(model, "model", None)
    if mx.default_device() != mx.cpu or getattr(model, "model_type", None) != "llama" or not _compiles():
        return False
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        return False
    return not any(getattr(b, "use_sliding", False) for b in inner.layers)


def _attention_block(attn, x: mx.array, mask, cache) -> mx.array:
    """mlx-lm's llama `Attention.__call__` with `attention` in place of its scaled_dot_product_attention."""
    B, L, _ = x.shape
    q = attn.q_proj(x).reshape(B, L, attn.n_heads, -1).transpose(0, 2, 1, 3)
    k = attn.k_proj(x).reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    v = attn.v_proj(x).reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    if cache is not None:
        q, k = attn.rope(q, offset=cache.offset), attn.rope(k, offset=cache.offset)
        k, v = cache.update_and_fetch(k, v)
    else:
        q, k = attn.rope(q), attn.rope(k)
    prefix = (cache.prefix_keys, cache.prefix_values) if isinstance(cache, SharedPrefixCache) else None
    out = attention(q, k, v, attn.scale, mask, prefix)
    return attn.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


def hidden_states(model, tokens: mx.array, cache=None, fast: bool = True) -> mx.array:
    """The final-norm hidden states of tokens (B, L) -> (B, L, H), filling `cache` (one per block) as
    `model.model(tokens, cache=cache)` does; the fast softmax and SiLU when `fast` and `supported(model)`."""
    if not (fast and supported(model)) or (cache is not None and hasattr(cache[0], "bits")):
        if cache is not None and isinstance(cache[0], SharedPrefixCache):
            raise ValueError("a SharedPrefixCache needs mlxhv's own blocks (fast=True and supported(model))")
        return model.model(tokens, cache=cache)
    inner = model.model
    h = inner.embed_tokens(tokens)
    caches = cache if cache is not None else [None] * len(inner.layers)
    mask = create_attention_mask(h, caches[0])
    if isinstance(mask, str):  # one keep-mask for every block of the pass (all blocks' caches hold the same length)
        L = tokens.shape[1]
        mask = causal_keep(L, L + (caches[0].offset if caches[0] is not None else 0))
    for block, c in zip(inner.layers, caches):
        h = h + _attention_block(block.self_attn, block.input_layernorm(h), mask, c)
        mlp = block.mlp
        x = block.post_attention_layernorm(h)
        h = h + mlp.down_proj(swiglu(mlp.gate_proj(x), mlp.up_proj(x)))
    return inner.norm(h)
