"""Batched generation with a shared-prefix KV cache and continuous batching, and the per-token log-probs PPO needs.

One run of `generate` keeps a single live batch of up to `batch_size` rows, each with its own KV cache row in a
per-layer `BatchKVCache` (mlx-lm's: per-row RoPE offsets, a left-padding mask, `extend` / `filter`):

    shared prefix: the longest common prefix P of all prompts, prefilled once ──► KV (1, P)
    admit n rows:  per row, KV (1, P) + prompt[P:-1] in one pass (no padding) ──► `BatchKVCache.merge` (left-
                   padded) ──► `extend` the live batch; the row's last prompt token is its first decode input.
                   Where mlxhv's own blocks run (a CPU, llama) and at least 8 rows can share the prefix, the
                   batch cache holds only each row's positions after P and decode steps read the prefix's KV
                   once for all rows (`kernels.SharedPrefixCache`); otherwise every row holds a copy of it
    decode step:   y (B, 1) ──model + cache──► logits (B, V) ──sample──► y (B,), log p(y) (B,)
    refill:        rows that finish (EOS, stop id, their own max_tokens) leave the batch (`filter`); once a
                   quarter of the slots are free, waiting prompts are admitted into them

The next step is queued (`mx.async_eval`) before the current tokens are read back, as mlx-lm does, so Python
bookkeeping overlaps the model. Prompts are admitted longest first with identical prompts adjacent; identical
prompts (k samples per prompt in PPO rollouts) are prefilled once and their cache rows copied, also when the
copies join the batch at different times (the prompt's KV is kept until its last copy is admitted).
`continuous=False` admits only into an empty batch (static batching: a batch runs until its longest row).

Sampling: greedy when temperature == 0; otherwise Gumbel-max over softmax(logits / T), restricted to the top-p
nucleus. Each prompt has its own random stream (from `seed` and the prompt's index, one key per step), so a
sampled completion does not depend on which batch or slot the prompt landed in.

SmolLM2 uses id 2 for both EOS and padding: rows are masked by length, never by token id.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import mlx.core as mx

from mlxhv import _blas, kernels
from mlxhv.engine_cache import (  # noqa: F401  (re-exported: the engine's cache and memory helpers)
    _PLAIN_HEAD, _check_cache_kinds, _check_prompts, _context_length, _extend, _fill, _head, common_prefix_length,
    drop_spent, fit_batch_size, forward_last, kv_bytes_per_token, merge_rows, prefill_prefix, prefill_row, split_prefix,
)
from mlxhv.errors import SettingsError

_SPLIT_MIN_ROWS = 8     # live rows from which holding the shared prefix once is faster (measured break-even)


@dataclass
class GenerationSettings:
    max_tokens: int | Sequence[int] = 256  # one budget for all prompts, or one per prompt
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    streams: Sequence[int] | None = None  # prompt i samples from random stream streams[i] (default: i)
    batch_size: int = 16                  # live rows at most
    stop_token_ids: tuple[int, ...] = ()  # extra stop tokens besides the tokenizer's EOS ids
    ignore_eos: bool = False              # generate exactly max_tokens (benchmarks)
    # OpenBLAS threads for prompts / decode steps; None leaves the process setting (MLXHV_BLAS_THREADS,
    # default 1; a None prefill_threads runs prompts at decode_threads). 2 speeds prompts up ~30 % on an idle
    # 2-core box, but spinning BLAS threads collapse when other processes compete for the cores (docs/design.md),
    # so 1 is the safe default.
    prefill_threads: int | None = None
    decode_threads: int | None = None
    prefill_step: int = 512               # prompt positions per forward pass (bounds activation memory)
    prefix_cache: bool = True             # prefill the prompts' longest common prefix once
    continuous: bool = True               # refill finished rows with waiting prompts (False: static batches)
    memory_check: bool = True             # estimate the KV cache first; lower batch_size or refuse if too big
    fast_kernels: bool = True             # on a CPU, llama blocks with mlxhv.kernels' softmax and SiLU


def _stream(settings: GenerationSettings, i: int) -> int:
    return settings.streams[i] if settings.streams is not None else i


@dataclass
class Completion:
    text: str
    tokens: list[int]          # generated ids, EOS excluded
    logprobs: list[float]      # log p(token) under softmax(logits / T) (T = temperature, 1 when greedy)
    finish_reason: str         # "stop" (EOS/stop token) | "length"
    prompt_tokens: int


@dataclass
class GenerationStats:
    prompt_tokens: int = 0         # prompt positions run through the model (shared prefix once, copies once)
    cached_prompt_tokens: int = 0  # prompt positions served from the shared prefix or a copy's cache
    generation_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    wall_s: float = 0.0
    peak_memory_gb: float = 0.0
    prompt_s: float = 0.0
    generation_s: float = 0.0
    batches: int = 0               # admissions (prefill passes that joined the live batch)
    prefix_tokens: int = 0         # length of the shared prefix (0: none)
    batch_size: int = 0            # live rows at most (after the memory check)
    steps: int = 0                 # decode steps


@dataclass
class _Row:
    """One prompt: its budget, random stream and output so far."""

    index: int                 # position in the caller's prompt list
    prompt: list[int]
    budget: int                # max new tokens for this prompt
    keys: mx.array | None      # (budget, 2) per-step random keys when sampling
    steps: int = 0             # decode steps queued for this row
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def spent(self) -> bool:
        """No more decode steps needed: finished, or its last token is already queued."""
        return self.finish_reason is not None or self.steps >= self.budget


def _encode(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt))
    return [int(t) for t in prompt]


# --------------------------------------------------------------------------------------------- sampling


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
    logp = logits / t - kernels.logsumexp(logits / t)  # (B, V)
    if settings.temperature <= 0:
        y = mx.argmax(logits, axis=-1)
    else:
        scores = _top_p_mask(logp, settings.top_p) if settings.top_p < 1.0 else logp
        noise = mx.stack([mx.random.gumbel((logits.shape[-1],), key=k) for k in step_keys])  # (B, V)
        y = mx.argmax(scores + noise, axis=-1)
    return y, mx.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


# ------------------------------------------------------------------------------------------ bad input


def _budgets(settings: GenerationSettings, n: int) -> list[int]:
    mt = settings.max_tokens
    budgets = [int(mt)] * n if isinstance(mt, (int, float)) else [int(m) for m in mt]
    if len(budgets) != n:
        raise SettingsError(f"max_tokens: {len(budgets)} budgets for {n} prompts (give one int, or one per prompt)")
    if settings.streams is not None and len(settings.streams) != n:
        raise SettingsError(f"streams: {len(settings.streams)} streams for {n} prompts (give one per prompt)")
    bad = [i for i, m in enumerate(budgets) if m < 0]
    if bad:
        raise SettingsError(f"max_tokens[{bad[0]}] = {budgets[bad[0]]}: must be >= 0")
    return budgets


# ------------------------------------------------------------------------------------------ the batch


def _splits_prefix(model, settings: GenerationSettings, prefix_len: int, rows: int) -> bool:
    """Decode steps read the shared prefix's KV once for all rows (kernels.SharedPrefixCache) where mlxhv's own
    blocks run and at least _SPLIT_MIN_ROWS rows can share it (below that, its extra ~15 ops a layer cost more
    than the KV reads they save: benchmarks/bench_decode_step.py); otherwise every row holds a copy."""
    return (prefix_len > 0 and min(settings.batch_size, rows) >= _SPLIT_MIN_ROWS and settings.fast_kernels
            and kernels.supported(model))


class _Batch:
    """The live batch: one cache row per entry of `rows`, the next input token of each, and the waiting prompts."""

    def __init__(self, model, settings: GenerationSettings, waiting: list[_Row], prefix_len: int,
                 stop_ids: set[int], stats: GenerationStats):
        self.model, self.s, self.stop_ids, self.stats = model, settings, stop_ids, stats
        self.queue: deque[_Row] = deque(waiting)
        self.rows: list[_Row] = []
        self.cache: list | None = None
        self.inputs: mx.array | None = None  # (B,) next input per row (lazy)
        self.remaining = Counter(tuple(r.prompt) for r in waiting)  # copies of each prompt still waiting
        self.kept: dict[tuple, list] = {}  # prompt → its row's KVCaches while copies of it still wait
        self.prefix = None
        self.P = prefix_len
        if prefix_len:
            self.prefix = prefill_prefix(model, waiting[0].prompt[:prefix_len], settings.prefill_step,
                                         settings.fast_kernels)
            stats.prompt_tokens += prefix_len
        self.split = _splits_prefix(model, settings, prefix_len, len(waiting))

    def live(self) -> int:
        return sum(not r.spent for r in self.rows)

    def refill_due(self) -> bool:
        """Admit when slots are free: any time the batch is empty; with continuous batching, also once a quarter
        of `batch_size` (at least one, at most what waits) is free."""
        if not self.queue:
            return False
        free = self.s.batch_size - self.live()
        wanted = min(max(1, self.s.batch_size // 4), len(self.queue))
        return self.live() == 0 or (self.s.continuous and free >= wanted)

    def compact(self) -> None:
        """Drop spent rows from the cache and the inputs (a copy of the cache: done when enough have piled up or
        when a refill needs the slots)."""
        dead = len(self.rows) - self.live()
        if dead == 0 or not (dead >= max(1, len(self.rows) // 4) or self.refill_due()):
            return
        self.rows, self.cache, self.inputs = drop_spent(self.rows, self.cache, self.inputs)

    def admit(self) -> None:
        """Prefill waiting prompts into the free slots and extend the batch with them."""
        n = min(self.s.batch_size - self.live(), len(self.queue))
        new = [self.queue.popleft() for _ in range(n)]
        if self.s.prefill_threads is not None:
            mx.synchronize()  # no BLAS call in flight while the thread count changes
        tic = time.perf_counter()
        with _blas.threads(self.s.prefill_threads):
            piece = self._prefill(new)
        self.stats.prompt_s += time.perf_counter() - tic
        self.stats.batches += 1
        self.cache = _extend(self.cache, piece)
        last = mx.array([r.prompt[-1] for r in new])  # each row's last prompt token is its first decode input
        self.inputs = last if self.inputs is None else mx.concatenate([self.inputs, last])
        self.rows += new
        self.stats.prompt_tokens += len(new)  # the last prompt tokens, run in the next decode step

    def _prefill(self, new: list[_Row]) -> list:
        """Cache rows for `new` (prompt[:-1] each): one pass per prompt not seen before, the kept rows of those
        whose earlier copies joined already; a prompt's rows are kept while more of its copies wait."""
        rows = {}
        for u in dict.fromkeys(tuple(r.prompt) for r in new):
            rows[u] = self.kept.get(u)
            if rows[u] is None:
                body = u[self.P:-1]
                rows[u] = prefill_row(self.model, body, self.prefix, self.s.prefill_step, self.s.fast_kernels)
                self.stats.prompt_tokens += len(body)
        for u, n in Counter(tuple(r.prompt) for r in new).items():
            self.remaining[u] -= n
            if self.remaining[u] > 0:
                self.kept[u] = rows[u]
            else:
                self.kept.pop(u, None)
        merged = merge_rows([rows[tuple(r.prompt)] for r in new], skip=self.P if self.split else 0)
        if self.split:
            merged = split_prefix(self.prefix, merged)
        mx.eval([c.state for c in merged])
        return merged

    def step(self):
        """Queue one decode step over every cache row: (y (B,), log p (B,)), evaluating in the background."""
        sampled = self.s.temperature > 0
        keys = None
        if sampled:
            dead = mx.random.key(0)
            keys = [r.keys[r.steps] if r.steps < r.budget else dead for r in self.rows]
        for r in self.rows:
            r.steps += 1
        logits = forward_last(self.model, self.inputs[:, None], self.cache, self.s.fast_kernels)
        y, lp = sample(logits, self.s, keys)
        mx.async_eval(y, lp)
        self.stats.steps += 1
        return y, lp

    def read(self, y: mx.array, lp: mx.array, rows: list[_Row]) -> list[_Row]:
        """Record a step's tokens for `rows` (the batch as it was when the step was queued); returns the rows
        this step finished."""
        done = []
        for row, tok, logprob in zip(rows, y.tolist(), lp.tolist()):
            if row.finish_reason is not None:
                continue
            if tok in self.stop_ids:
                row.finish_reason = "stop"
            else:
                row.tokens.append(tok)
                row.logprobs.append(logprob)
                if len(row.tokens) >= row.budget:
                    row.finish_reason = "length"
            if row.finish_reason is not None:
                done.append(row)
        return done


def _stop_ids(tokenizer, settings: GenerationSettings) -> set[int]:
    if settings.ignore_eos:
        return set()
    eos = getattr(tokenizer, "eos_token_ids", None) or [tokenizer.eos_token_id]
    return set(eos) | set(settings.stop_token_ids)


def generate(model, tokenizer, prompts: list[list[int] | str], settings: GenerationSettings | None = None,
             progress: bool = False, on_batch: Callable[[list[int], list[Completion]], None] | None = None,
             ) -> tuple[list[Completion], GenerationStats]:
    """Generate a completion for every prompt (token ids, or text encoded as is — apply a chat template
    first for chat models). Results come back in the order of `prompts`; `on_batch(indices, completions)`
    runs whenever prompts finish (indices into `prompts`, each exactly once) so callers can stream results to
    disk. Bad input (an empty prompt, one that does not fit the context, batch_size < 1, a KV cache too big
    for memory) raises SettingsError before any work."""
    from tqdm import tqdm

    settings = settings or GenerationSettings()
    if settings.batch_size < 1:
        raise SettingsError(f"batch_size must be >= 1, got {settings.batch_size}")
    if settings.prefill_step < 1:
        raise SettingsError(f"prefill_step must be >= 1, got {settings.prefill_step}")
    ids = [_encode(tokenizer, p) for p in prompts]
    budgets = _budgets(settings, len(ids))
    _check_prompts(model, ids, budgets)
    stats = GenerationStats()
    results: list[Completion | None] = [None] * len(ids)
    todo = [i for i in range(len(ids)) if budgets[i] > 0]
    if todo:
        _check_cache_kinds(model)
    stop_ids = _stop_ids(tokenizer, settings)
    sampled = settings.temperature > 0
    order = sorted(todo, key=lambda i: (-len(ids[i]), ids[i], i))  # longest first (peak memory shows early),
    rows = []                                                     # identical prompts adjacent
    for i in order:
        stream = settings.seed * 1_000_003 + _stream(settings, i)
        keys = mx.random.split(mx.random.key(stream), budgets[i]) if sampled else None
        rows.append(_Row(i, ids[i], budgets[i], keys))
    prefix_len = common_prefix_length([ids[i] for i in todo]) if settings.prefix_cache and todo else 0
    stats.prefix_tokens = prefix_len

    def finish(done: list[_Row]) -> None:
        comps = [Completion(tokenizer.decode(r.tokens), r.tokens, r.logprobs, r.finish_reason or "length",
                            len(r.prompt)) for r in done]
        for r, c in zip(done, comps):
            results[r.index] = c
        if on_batch is not None and done:
            on_batch([r.index for r in done], comps)
        bar.update(len(done))
        if progress:
            bar.set_postfix(steps=stats.steps, refresh=False)

    mx.reset_peak_memory()
    wall = time.perf_counter()
    with _blas.threads(settings.decode_threads), \
            tqdm(total=len(ids), unit="prompt", disable=not progress, dynamic_ncols=True) as bar:
        if todo and settings.memory_check:
            todo_ids, todo_budgets = [ids[i] for i in todo], [budgets[i] for i in todo]
            shared = prefix_len if _splits_prefix(model, settings, prefix_len, len(todo)) else 0
            fit = fit_batch_size(model, todo_ids, todo_budgets, settings.batch_size, shared_prefix=shared)
            if shared and fit < _SPLIT_MIN_ROWS:  # too few rows to hold the prefix once: every row holds a copy
                fit = fit_batch_size(model, todo_ids, todo_budgets, settings.batch_size)
            settings = dataclasses.replace(settings, batch_size=fit)
        stats.batch_size = settings.batch_size
        empty = [i for i in range(len(ids)) if budgets[i] == 0]
        if empty:
            finish([_Row(i, ids[i], 0, None, finish_reason="length") for i in empty])
        if rows:
            tic = time.perf_counter()
            batch = _Batch(model, settings, rows, prefix_len, stop_ids, stats)
            stats.prompt_s += time.perf_counter() - tic
            loop, prompt_before = time.perf_counter(), stats.prompt_s
            pending = None  # (y, lp, rows) of the step queued last, not yet read
            while True:
                batch.compact()
                if batch.refill_due():
                    batch.admit()
                if not batch.rows:
                    break
                y, lp = batch.step()
                if pending is not None:
                    finish(batch.read(*pending))
                pending = (y, lp, list(batch.rows))
                batch.inputs = y
            if pending is not None:
                finish(batch.read(*pending))
            stats.generation_s = time.perf_counter() - loop - (stats.prompt_s - prompt_before)
    stats.wall_s = time.perf_counter() - wall
    stats.generation_tokens = sum(len(c.tokens) for c in results)
    stats.cached_prompt_tokens = sum(len(ids[i]) for i in todo) - stats.prompt_tokens
    stats.prompt_tps = stats.prompt_tokens / stats.prompt_s if stats.prompt_s else 0.0
    stats.generation_tps = stats.generation_tokens / stats.generation_s if stats.generation_s else 0.0
    stats.peak_memory_gb = mx.get_peak_memory() / 1e9
    return results, stats

