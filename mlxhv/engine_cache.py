"""The engine's KV caches and memory: prompt passes into caches (`prefill_prefix`, `prefill_row`), merging rows
into a batch cache (`merge_rows`, `split_prefix` for a prefix held once), the shared prefix of a set of prompts,
and the checks of context length and KV memory that size a batch (`fit_batch_size`). `mlxhv.engine` runs
batches on them; the server's continuous batcher (`mlxhv.serve_batch`) uses them too."""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn

from mlxhv import kernels
from mlxhv.errors import SettingsError

# Model types whose mlx-lm Model is `model.model` (the transformer) + `lm_head` or a tied embedding, with
# nothing after: for these, prompt passes skip the vocabulary projection and decode steps compute it once.
_PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "smollm3"}
_MEMORY_HEADROOM = 0.9  # fraction of available memory the KV cache may take


def _head(model: nn.Module) -> Callable | None:
    """The vocabulary projection of a plain decoder, or None when the model does more after it."""
    if getattr(model, "model_type", None) not in _PLAIN_HEAD or not hasattr(model, "model"):
        return None
    if hasattr(model, "lm_head"):
        return model.lm_head
    return model.model.embed_tokens.as_linear


def forward_last(model: nn.Module, tokens: mx.array, cache, fast: bool = True) -> mx.array:
    """Logits of the last position: tokens (B, L) → (B, V). `fast`: `kernels.hidden_states` where it applies."""
    head = _head(model)
    if head is None:
        return model(tokens, cache=cache)[:, -1, :]
    h = kernels.hidden_states(model, tokens, cache, fast)  # (B, L, D)
    return head(h[:, -1, :])  # (B, V)


def _fill(model: nn.Module, tokens: mx.array, cache, fast: bool = True) -> None:
    """Run tokens (B, L) through the model to fill `cache`; the vocabulary projection is skipped when it can be."""
    if _head(model) is None:
        model(tokens, cache=cache)
    else:
        kernels.hidden_states(model, tokens, cache, fast)


def _check_cache_kinds(model: nn.Module) -> None:
    from mlx_lm.models.cache import KVCache

    own = model.make_cache() if hasattr(model, "make_cache") else []
    if any(not isinstance(c, KVCache) for c in own):
        kinds = sorted({type(c).__name__ for c in own})
        raise SettingsError(f"batched generation needs a plain KV cache in every layer; this model uses {kinds}")


# ------------------------------------------------------------------------------------------ shared prefix


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of `prompts`, at most min(len) - 1 so every prompt keeps its last
    token (the first decode input)."""
    if not prompts:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def prefill_prefix(model: nn.Module, tokens: Sequence[int], prefill_step: int = 512, fast: bool = True) -> list:
    """KV cache of one token sequence, computed once: a batch-1 mlx-lm `KVCache` per layer holding keys and
    values (1, n_kv, P, D) for positions 0..P-1, trimmed to exactly P and contiguous (every row that starts from
    it, and a `SharedPrefixCache`, uses them as they are); `prefill_row(model, body, cache)` continues it."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    ids = mx.array(list(tokens))[None]  # (1, P)
    for start in range(0, ids.shape[1], prefill_step):
        _fill(model, ids[:, start:start + prefill_step], cache, fast)
        mx.eval([c.state for c in cache])
    for c in cache:
        c.keys, c.values = mx.contiguous(c.keys[..., :c.offset, :]), mx.contiguous(c.values[..., :c.offset, :])
    mx.eval([c.state for c in cache])
    return cache


def prefill_row(model: nn.Module, body: Sequence[int], prefix: list | None, prefill_step: int = 512,
                fast: bool = True) -> list:
    """The KV cache of prefix + body for one row: batch-1 `KVCache`s that start from `prefix` (from
    `prefill_prefix`, never modified; None: empty) and hold len(prefix) + len(body) positions. One row at a time
    means no padding: on a CPU a prompt pass costs the same per token at any batch size."""
    from mlx_lm.models.cache import KVCache

    cache = []
    for layer in range(len(model.layers)):
        c = KVCache()
        if prefix is not None and prefix[layer].offset > 0:
            P = prefix[layer].offset
            c.keys, c.values, c.offset = prefix[layer].keys[..., :P, :], prefix[layer].values[..., :P, :], P
        cache.append(c)
    if body:
        ids = mx.array(list(body))[None]  # (1, L)
        for start in range(0, ids.shape[1], prefill_step):
            _fill(model, ids[:, start:start + prefill_step], cache, fast)
            mx.eval([c.state for c in cache])
    return cache


def merge_rows(rows: list[list], skip: int = 0) -> list:
    """Per-row caches (lists of batch-1 `KVCache`) → one left-padded `BatchKVCache` per layer (a copy; a row may
    appear several times). `skip`: leave out every row's first `skip` positions (a prefix held elsewhere)."""
    from mlx_lm.models.cache import BatchKVCache, KVCache

    def tail(c):
        if not skip:
            return c
        t = KVCache()
        if c.offset > skip:
            t.keys, t.values = c.keys[..., skip:c.offset, :], c.values[..., skip:c.offset, :]
            t.offset = c.offset - skip
        return t

    return [BatchKVCache.merge([tail(r[layer]) for r in rows]) for layer in range(len(rows[0]))]


def split_prefix(prefix: list, merged: list) -> list:
    """Per layer, a `kernels.SharedPrefixCache`: the prefix's keys and values (from `prefill_prefix`) once, and
    the rows' own positions in `merged` (from `merge_rows(..., skip=P)`)."""
    return [kernels.SharedPrefixCache(p.keys, p.values, m) for p, m in zip(prefix, merged)]


def _extend(cache: list | None, other: list) -> list:
    if cache is None:
        return other
    for c, o in zip(cache, other):
        c.extend(o)
    return cache


def drop_spent(rows: list, cache: list, inputs: mx.array) -> tuple[list, list | None, mx.array | None]:
    """The rows that are not `spent`, with their cache rows (filtered in place) and next inputs; (`[]`, None,
    None) when none is left."""
    keep = [j for j, r in enumerate(rows) if not r.spent]
    if not keep:
        return [], None, None
    idx = mx.array(keep)
    for c in cache:
        c.filter(idx)
    return [rows[j] for j in keep], cache, inputs[idx]


# --------------------------------------------------------------------------------------------- memory


def _context_length(model) -> int | None:
    n = getattr(getattr(model, "args", None), "max_position_embeddings", None)
    return int(n) if n else None


def _check_prompts(model, ids: list[list[int]], budgets: list[int]) -> None:
    """Empty prompts and prompts that, with their budget, do not fit the model's context are refused."""
    for i, p in enumerate(ids):
        if not p:
            raise SettingsError(f"prompt {i} is empty (give at least one token)")
    ctx = _context_length(model)
    if ctx is None:
        return
    for i, (p, m) in enumerate(zip(ids, budgets)):
        if len(p) + m > ctx:
            what = "is longer than" if len(p) > ctx else f"plus max_tokens {m} ({len(p) + m} positions) exceeds"
            raise SettingsError(f"prompt {i} has {len(p)} tokens, which {what} the model's context of {ctx} "
                                "tokens; shorten the prompt or lower max_tokens")


def kv_bytes_per_token(model: nn.Module) -> int:
    """KV-cache bytes one position of one row takes, summed over layers (measured on a one-token pass)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    _fill(model, mx.array([[0]]), cache)
    mx.eval([c.state for c in cache])
    return sum((c.keys.nbytes + c.values.nbytes) // c.keys.shape[2] for c in cache)


def _available_bytes() -> int:
    from mlxhv.models.memory import available_bytes

    if mx.default_device().type == mx.gpu:
        info = mx.device_info() if hasattr(mx, "device_info") else {}
        total = info.get("max_recommended_working_set_size") or info.get("memory_size")
        if total:
            return max(0, int(total) - mx.get_active_memory())
    return available_bytes()


def fit_batch_size(model, ids: list[list[int]], budgets: list[int], batch_size: int,
                   available: int | None = None, shared_prefix: int = 0) -> int:
    """The largest batch size ≤ `batch_size` whose KV cache fits: a row takes kv_bytes_per_token ×
    (longest prompt + largest budget, less a `shared_prefix` held once, rounded up to the cache's 256-position
    step), and a refill briefly holds the batch twice (old and extended copy); the total, plus the shared
    prefix, must stay under 90 % of the available memory. Lowers the batch with a warning that gives the
    numbers, or refuses (SettingsError) when one row does not fit."""
    per_token = kv_bytes_per_token(model)
    positions = -(-(max(map(len, ids)) + max(budgets) - shared_prefix) // 256) * 256
    row = per_token * positions
    available = _available_bytes() if available is None else available
    limit = _MEMORY_HEADROOM * available - per_token * shared_prefix
    fits = int(limit // (2 * row))
    held_once = f" + a shared prefix of {shared_prefix} positions held once" if shared_prefix else ""
    numbers = (f"{positions} positions × {per_token / 1e3:.1f} kB = {row / 1e6:.1f} MB per row (×2 during a "
               f"refill){held_once}; {available / 1e9:.2f} GB available, {_MEMORY_HEADROOM:.0%} of it usable")
    if fits < 1:
        raise SettingsError(f"the KV cache does not fit in memory even for one row: {numbers}; shorten the prompts "
                            "or lower max_tokens (memory_check=False skips this check)")
    if fits < batch_size:
        warnings.warn(f"batch_size lowered from {batch_size} to {fits} so the KV cache fits: {numbers}",
                      stacklevel=3)
        return fits
    return batch_size
