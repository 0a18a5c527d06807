"""Batched generation: many prompts at once, with the per-token log-probabilities PPO needs.

Prompts are sorted by length and cut into batches of `batch_size`. Each batch is left-padded into one
(B, L) array and run through the model once with a `BatchKVCache` (per-row RoPE offsets and a padding
mask, so a padded row computes what it would alone), then decoded one token per step for all rows:

    prefill:  tokens (B, L) ──model──► logits of the last position (B, V) ──sample──► y (B,)
    decode:   y (B, 1) ──model + cache──► logits (B, V) ──sample──► y (B,)   … until EOS or max_tokens

Rows that finish are dropped from the batch (and its cache) as they pile up, so a batch costs what its
live rows cost. The step after the current one is queued (`mx.async_eval`) before the current tokens are
read back, as mlx-lm does, so Python bookkeeping overlaps the model.

Sampling: greedy when temperature == 0; otherwise Gumbel-max over softmax(logits / T), restricted to the
top-p nucleus. Each prompt has its own random stream (from `seed` and the prompt's index), so a sampled
completion does not depend on which batch the prompt landed in.

SmolLM2 uses id 2 for both EOS and padding: rows are masked by length, never by token id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from mlxhv import _blas

# Model types whose mlx-lm Model is `model.model` (the transformer) + `lm_head` or a tied embedding, with
# nothing after: for these the prefill computes the vocabulary projection for the last position only.
_PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "smollm3"}


@dataclass
class GenerationSettings:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    stop_token_ids: tuple[int, ...] = ()  # extra stop tokens besides the tokenizer's EOS ids
    ignore_eos: bool = False              # generate exactly max_tokens (benchmarks)
    # OpenBLAS threads for prompts / decode steps; None leaves the process setting (MLXHV_BLAS_THREADS,
    # default 1). 2 speeds prompts up ~30 % on an idle 2-core box, but spinning BLAS threads collapse
    # when other processes compete for the cores (DESIGN.md), so 1 is the safe default.
    prefill_threads: int | None = None
    decode_threads: int | None = None
    prefill_step: int = 512               # prompt positions per forward pass (bounds activation memory)


@dataclass
class Completion:
    text: str
    tokens: list[int]          # generated ids, EOS excluded
    logprobs: list[float]      # log p(token) under softmax(logits / T) (T = temperature, 1 when greedy)
    finish_reason: str         # "stop" (EOS/stop token) | "length"
    prompt_tokens: int


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    wall_s: float = 0.0
    peak_memory_gb: float = 0.0
    prompt_s: float = 0.0
    generation_s: float = 0.0
    batches: int = 0


@dataclass
class _Row:
    """One live sequence of a batch."""

    index: int                 # position in the caller's prompt list
    prompt_tokens: int
    keys: mx.array | None      # (max_tokens, 2) per-step random keys when sampling
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


def _encode(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt))
    return [int(t) for t in prompt]


def _head(model: nn.Module) -> Callable | None:
    """The vocabulary projection of a plain decoder, or None when the model does more after it."""
    if getattr(model, "model_type", None) not in _PLAIN_HEAD or not hasattr(model, "model"):
        return None
    if hasattr(model, "lm_head"):
        return model.lm_head
    return model.model.embed_tokens.as_linear


def forward_last(model: nn.Module, tokens: mx.array, cache) -> mx.array:
    """Logits of the last position: tokens (B, L) → (B, V)."""
    head = _head(model)
    if head is None:
        return model(tokens, cache=cache)[:, -1, :]
    h = model.model(tokens, cache=cache)  # (B, L, D)
    return head(h[:, -1, :])  # (B, V)


def make_batch_cache(model: nn.Module, left_padding: list[int]) -> list:
    """One left-padded BatchKVCache per layer (per-row RoPE offsets + padding mask)."""
    from mlx_lm.models.cache import BatchKVCache, KVCache

    own = model.make_cache() if hasattr(model, "make_cache") else []
    if any(not isinstance(c, KVCache) for c in own):
        kinds = sorted({type(c).__name__ for c in own})
        raise ValueError(f"batched generation needs a plain KV cache in every layer; this model uses {kinds}")
    return [BatchKVCache(left_padding) for _ in model.layers]


def _top_p_mask(logp: mx.array, top_p: float) -> mx.array:
    """logp (B, V) with tokens outside the top-p nucleus set to -inf (the top token always stays)."""
    order = mx.argsort(-logp, axis=-1)  # (B, V)
    sorted_p = mx.exp(mx.take_along_axis(logp, order, axis=-1))
    before = mx.cumsum(sorted_p, axis=-1) - sorted_p  # probability mass ranked above each token
    keep_sorted = before < top_p
    keep = mx.put_along_axis(mx.zeros(logp.shape, dtype=mx.bool_), order, keep_sorted, axis=-1)
    return mx.where(keep, logp, -mx.inf)


def sample(logits: mx.array, settings: GenerationSettings, step_keys: list[mx.array] | None):
    """Next tokens and their log-probs: logits (B, V) → y (B,), log p(y) (B,) under softmax(logits / T)."""
    logits = logits.astype(mx.float32)
    t = settings.temperature if settings.temperature > 0 else 1.0
    logp = logits / t - mx.logsumexp(logits / t, axis=-1, keepdims=True)  # (B, V)
    if settings.temperature <= 0:
        y = mx.argmax(logits, axis=-1)
    else:
        scores = _top_p_mask(logp, settings.top_p) if settings.top_p < 1.0 else logp
        noise = mx.stack([mx.random.gumbel((logits.shape[-1],), key=k) for k in step_keys])  # (B, V)
        y = mx.argmax(scores + noise, axis=-1)
    return y, mx.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def _set_threads(n: int | None) -> None:
    if n is not None:
        _blas.set_threads(n)


def _prefill(model, prompts: list[list[int]], settings: GenerationSettings):
    """Left-pad and run the prompts: returns (cache, last-position logits (B, V)).

    A prompt that appears several times in the batch (k samples per prompt in PPO rollouts) is run once and its
    cache rows are copied, which divides the prompt cost by k."""
    unique: dict[tuple, int] = {}
    rows = [unique.setdefault(tuple(p), len(unique)) for p in prompts]  # batch row -> unique prompt
    if len(unique) < len(prompts):
        cache, logits = _prefill_rows(model, [list(p) for p in unique], settings)
        idx = mx.array(rows)
        for c in cache:
            c.filter(idx)  # (U, ...) -> (B, ...): repeated indices copy rows
        return cache, logits[idx]
    return _prefill_rows(model, prompts, settings)


def _prefill_rows(model, prompts: list[list[int]], settings: GenerationSettings):
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    left = [width - n for n in lengths]
    tokens = mx.array([[0] * pad + p for pad, p in zip(left, prompts)])  # (B, L); pad id is masked
    cache = make_batch_cache(model, left)
    starts = list(range(0, width, settings.prefill_step))
    for start in starts[:-1]:  # long prompts: fill the cache chunk by chunk, logits only at the end
        forward_last(model, tokens[:, start:start + settings.prefill_step], cache)
        mx.eval([c.state for c in cache])
    return cache, forward_last(model, tokens[:, starts[-1]:], cache)


def _generate_batch(model, tokenizer, prompts: list[list[int]], indices: list[int],
                    settings: GenerationSettings, stop_ids: set[int], stats: GenerationStats) -> list[Completion]:
    sampled = settings.temperature > 0
    rows = []
    for i, p in zip(indices, prompts):
        keys = None
        if sampled:
            keys = mx.random.split(mx.random.key(settings.seed * 1_000_003 + i), max(settings.max_tokens, 1))
        rows.append(_Row(i, len(p), keys))

    tic = time.perf_counter()
    _set_threads(settings.prefill_threads)
    cache, logits = _prefill(model, prompts, settings)
    y, lp = sample(logits, settings, [r.keys[0] for r in rows] if sampled else None)
    mx.eval(y, lp)
    stats.prompt_s += time.perf_counter() - tic
    stats.prompt_tokens += sum(len(p) for p in {tuple(p) for p in prompts})  # tokens actually run

    tic = time.perf_counter()
    _set_threads(settings.decode_threads)
    slots: list[int | None] = list(range(len(rows)))  # cache row j → rows[slots[j]]; None once finished
    for step in range(settings.max_tokens):
        last = step + 1 == settings.max_tokens
        if not last:  # queue the next step before reading this one back
            logits = forward_last(model, y[:, None], cache)
            next_y, next_lp = sample(logits, settings, _step_keys(rows, slots, step + 1) if sampled else None)
            mx.async_eval(next_y, next_lp)
        for j, (tok, logprob) in enumerate(zip(y.tolist(), lp.tolist())):
            if slots[j] is None:
                continue
            row = rows[slots[j]]
            if tok in stop_ids:
                row.finish_reason, slots[j] = "stop", None
                continue
            row.tokens.append(tok)
            row.logprobs.append(logprob)
        live = [j for j, s in enumerate(slots) if s is not None]
        if last or not live:
            break
        y, lp = next_y, next_lp
        if len(slots) - len(live) >= max(1, len(slots) // 4):
            # Enough finished rows: drop them from y, lp and every layer's cache.
            idx = mx.array(live)
            y, lp = y[idx], lp[idx]
            for c in cache:
                c.filter(idx)
            slots = [slots[j] for j in live]
    stats.generation_s += time.perf_counter() - tic
    stats.generation_tokens += sum(len(r.tokens) for r in rows)
    return [Completion(tokenizer.decode(r.tokens), r.tokens, r.logprobs, r.finish_reason or "length",
                       r.prompt_tokens) for r in rows]


def _step_keys(rows: list[_Row], slots: list[int | None], step: int) -> list[mx.array]:
    dead = mx.random.key(0)
    return [dead if s is None else rows[s].keys[step] for s in slots]


def generate(model, tokenizer, prompts: list[list[int] | str], settings: GenerationSettings | None = None,
             progress: bool = False, on_batch: Callable[[list[int], list[Completion]], None] | None = None,
             ) -> tuple[list[Completion], GenerationStats]:
    """Generate a completion for every prompt (token ids, or text encoded as is — apply a chat template
    first for chat models). Results come back in the order of `prompts`; `on_batch(indices, completions)`
    runs after each batch (indices into `prompts`) so callers can stream results to disk."""
    from tqdm import tqdm

    settings = settings or GenerationSettings()
    if settings.batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ids = [_encode(tokenizer, p) for p in prompts]
    if any(len(p) == 0 for p in ids):
        raise ValueError("empty prompt")
    stop_ids = set(getattr(tokenizer, "eos_token_ids", None) or [tokenizer.eos_token_id]) | set(settings.stop_token_ids)
    if settings.ignore_eos:
        stop_ids = set()
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: peak memory shows early
    results: list[Completion | None] = [None] * len(ids)
    stats = GenerationStats()
    threads_before = _blas.get_threads()
    mx.reset_peak_memory()
    wall = time.perf_counter()
    bar = tqdm(total=len(ids), unit="prompt", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            if settings.max_tokens <= 0:
                comps = [Completion("", [], [], "length", len(ids[i])) for i in batch]
            else:
                comps = _generate_batch(model, tokenizer, [ids[i] for i in batch], batch, settings, stop_ids, stats)
            for i, c in zip(batch, comps):
                results[i] = c
            stats.batches += 1
            if on_batch is not None:
                on_batch(list(batch), comps)
            mx.clear_cache()
            bar.update(len(batch))
            if stats.generation_s > 0:
                bar.set_postfix(gen_tok_s=f"{stats.generation_tokens / stats.generation_s:.1f}")
    finally:
        bar.close()
        if threads_before is not None:
            _blas.set_threads(threads_before)
    stats.wall_s = time.perf_counter() - wall
    stats.prompt_tps = stats.prompt_tokens / stats.prompt_s if stats.prompt_s else 0.0
    stats.generation_tps = stats.generation_tokens / stats.generation_s if stats.generation_s else 0.0
    stats.peak_memory_gb = mx.get_peak_memory() / 1e9
    return results, stats
