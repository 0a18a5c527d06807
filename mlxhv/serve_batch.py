"""Continuous batching for the judge server: requests join and leave one running batch between decode steps.

    shared prefix: the judge prompt's constant opening (system prompt, chat template up to the input), prefilled
                   once when the worker starts ──► KV (1, P)
    admit:         per request, KV (1, P) + prompt[P:-1] in one pass (`engine.prefill_row`) ──► merged into the
                   live batch (`engine.merge_rows`; with ≥ 8 slots on a CPU the prefix is held once for all rows,
                   `kernels.SharedPrefixCache`, as the engine does)
    decode step:   y (B, 1) ──model + cache──► logits (B, V) ──sample_rows──► y (B,), log p(y) (B,)
    leave:         rows that finish (EOS, their own max_tokens) or whose client went away are filtered out

Every row has its own max_tokens, temperature, top_p and random stream. A request with `seed` s samples from the
engine's stream for (seed s, prompt 0): the key sequence `split(key(s * 1_000_003), max_tokens)`, one key a step,
so its answer is what `engine.generate([prompt], seed=s)` gives, whatever else is in the batch. A request
without a seed takes stream k of the judge's seed (k = how many unseeded requests came before it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional

import mlx.core as mx

from mlxhv import kernels
from mlxhv.engine import (GenerationSettings, _stop_ids, _top_p_mask, common_prefix_length, drop_spent, forward_last,
                          merge_rows, prefill_prefix, prefill_row, split_prefix)
from mlxhv.judge import Judge, JudgeInput, PromptTooLong
from mlxhv.prompts import prompt_opens_think
from mlxhv.schema import Evidence, Prediction
from mlxhv.serve_request import BadRequest, JudgeRequest

log = logging.getLogger("mlxhv.serve")

_SPLIT_MIN_ROWS = 8  # as engine: from 8 rows, holding the shared prefix once is faster


def sample_rows(logits: mx.array, temperature: mx.array, top_p: mx.array, keys: Optional[list]):
    """Per-row `engine.sample`: logits (B, V), temperature (B,), top_p (B,) → y (B,), log p(y) (B,) under
    softmax(logits / T) (T = 1 for greedy rows). Rows with T > 0 take Gumbel-max over their top-p nucleus with
    their own key; `keys` None means no row samples."""
    logits = logits.astype(mx.float32)
    t = mx.where(temperature > 0, temperature, 1.0)[:, None]  # (B, 1)
    logp = logits / t - kernels.logsumexp(logits / t)  # (B, V)
    y = mx.argmax(logits, axis=-1)  # (B,)
    if keys is not None:
        cut = top_p < 1.0
        scores = mx.where(cut[:, None], _top_p_mask(logp, mx.where(cut, top_p, 1.0)[:, None]), logp)
        noise = mx.stack([mx.random.gumbel((logits.shape[-1],), key=k) for k in keys])  # (B, V)
        y = mx.where(temperature > 0, mx.argmax(scores + noise, axis=-1), y)
    return y, mx.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def stream_keys(seed: int, stream: int, budget: int) -> mx.array:
    """(budget, 2) per-step keys of the engine's random stream `stream` under `seed` (engine.generate's)."""
    return mx.random.split(mx.random.key(seed * 1_000_003 + stream), budget)


# ------------------------------------------------------------------------------------------------ jobs


@dataclass(eq=False)
class Job:
    """One request on its way through the worker. `deltas` gets the answer's text as it decodes (streams)."""

    id: str
    request: JudgeRequest
    future: Future = field(default_factory=Future)
    deltas: "queue.SimpleQueue[str]" = field(default_factory=queue.SimpleQueue)
    created: float = field(default_factory=time.monotonic)
    cancelled: bool = False


@dataclass(eq=False)
class Row:
    """A job's place in the batch: its prompt, budget, sampling settings and output so far."""

    job: Job
    prompt: list[int]
    budget: int
    temperature: float
    top_p: float
    keys: Optional[mx.array]  # (budget, 2) when sampling
    steps: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: Optional[str] = None
    sent: int = 0  # characters of the text already streamed

    @property
    def spent(self) -> bool:
        return self.finish_reason is not None


class ContinuousDecoder:
    """The live batch: cache rows, the next input of each, and the shared prefix they all start with."""

    def __init__(self, model, prefix: list[int], max_rows: int, stop_ids: set[int], fast: bool = True,
                 prefill_step: int = 512):
        self.model, self.max_rows, self.stop_ids, self.fast, self.prefill_step = (model, max_rows, stop_ids, fast,
                                                                                 prefill_step)
        self.rows: list[Row] = []
        self.cache: Optional[list] = None
        self.inputs: Optional[mx.array] = None  # (B,)
        self.set_prefix(prefix)

    def set_prefix(self, prefix: list[int]) -> None:
        """Prefill a new shared prefix (only while the batch is empty)."""
        assert not self.rows
        self.prefix_ids = list(prefix)
        self.prefix = prefill_prefix(self.model, prefix, self.prefill_step, self.fast) if prefix else None
        self.split = (bool(prefix) and self.max_rows >= _SPLIT_MIN_ROWS and self.fast
                      and kernels.supported(self.model))

    def fits(self, prompt: list[int]) -> bool:
        """The prompt starts with the shared prefix (and keeps a token after it)."""
        P = len(self.prefix_ids)
        return len(prompt) > P and prompt[:P] == self.prefix_ids

    def live(self) -> int:
        return sum(not r.spent for r in self.rows)

    def free(self) -> int:
        return self.max_rows - self.live()

    def compact(self, force: bool = False) -> None:
        """Filter spent rows out of the cache (a copy: when a quarter are spent, or `force`)."""
        dead = len(self.rows) - self.live()
        if dead == 0 or not (force or dead >= max(1, len(self.rows) // 4)):
            return
        self.rows, self.cache, self.inputs = drop_spent(self.rows, self.cache, self.inputs)

    def add(self, new: list[Row]) -> int:
        """Prefill `new` (each fits the prefix) and extend the batch with them; returns prompt tokens run."""
        self.compact(force=True)
        P = len(self.prefix_ids)
        caches = [prefill_row(self.model, r.prompt[P:-1], self.prefix, self.prefill_step, self.fast) for r in new]
        merged = merge_rows(caches, skip=P if self.split else 0)
        if self.split:
            merged = split_prefix(self.prefix, merged)
        mx.eval([c.state for c in merged])
        if self.cache is None:
            self.cache = merged
        else:
            for c, o in zip(self.cache, merged):
                c.extend(o)
        last = mx.array([r.prompt[-1] for r in new])  # each row's last prompt token is its first decode input
        self.inputs = last if self.inputs is None else mx.concatenate([self.inputs, last])
        self.rows += new
        return sum(len(r.prompt) - P for r in new)

    def step(self) -> list[Row]:
        """One decode step over every cache row; returns the rows it finished."""
        sampled = any(r.temperature > 0 and not r.spent for r in self.rows)
        keys = None
        if sampled:
            dead = mx.random.key(0)
            keys = [r.keys[r.steps] if r.keys is not None and r.steps < r.budget else dead for r in self.rows]
        temperature = mx.array([r.temperature for r in self.rows], dtype=mx.float32)
        top_p = mx.array([r.top_p for r in self.rows], dtype=mx.float32)
        logits = forward_last(self.model, self.inputs[:, None], self.cache, self.fast)  # (B, V)
        y, lp = sample_rows(logits, temperature, top_p, keys)
        mx.eval(y, lp)
        done = []
        for row, tok, logprob in zip(self.rows, y.tolist(), lp.tolist()):
            row.steps += 1
            if row.spent:
                continue
            if tok in self.stop_ids:
                row.finish_reason = "stop"
            else:
                row.tokens.append(tok)
                row.logprobs.append(logprob)
                if len(row.tokens) >= row.budget:
                    row.finish_reason = "length"
            if row.spent:
                done.append(row)
        self.inputs = y
        return done


def judge_prefix(judge: Judge) -> list[int]:
    """The token ids every prompt of this judge starts with: the common prefix of prompts rendered for a few
    different inputs, cut back to its last newline token so no input can re-tokenize across its end."""
    probes = [JudgeInput(hypothesis=h, evidence=[Evidence(source="s", content="c", relevance=1.0)])
              for h in ("a", "Zz 9", '"[{', "é ü", " x")]
    prompts = [judge.encode(p, 1) for p in probes]
    n = common_prefix_length(prompts)
    ids = prompts[0][:n]
    newlines = [i for i, t in enumerate(ids) if "\n" in judge.tokenizer.decode([t])]
    return ids[:newlines[-1] + 1] if newlines else ids


# ------------------------------------------------------------------------------------------------ worker


def _fail(job: Job, error: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(error)


class Scheduler:
    """The worker thread: admits queued jobs into the running batch between decode steps, completes their
    futures, streams their text and drops the rows of cancelled jobs. `submit` refuses (BadRequest 429 with
    Retry-After) once `max_queue` jobs wait, and (503) while draining."""

    def __init__(self, judge: Judge, max_batch: int = 16, max_queue: int = 64, wait_s: float = 0.02,
                 on_step: Optional[Callable[[int, int, float], None]] = None,
                 on_done: Optional[Callable[[Job, Prediction], None]] = None, step_hook: Optional[Callable] = None,
                 fast_kernels: bool = True):
        self.fast_kernels = fast_kernels
        self.judge, self.max_batch, self.max_queue, self.wait_s = judge, max_batch, max_queue, wait_s
        self.on_step, self.on_done, self.step_hook = on_step, on_done, step_hook
        self._waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = self.draining = False
        self._unseeded = 0
        self.running = 0  # live rows (read by /metrics)
        self.admissions: list[int] = []  # jobs admitted per admission (what tests and benchmarks read)
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._loop, name="mlxhv-judge-worker", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ handler side

    def queue_depth(self) -> int:
        return len(self._waiting)

    def idle(self) -> bool:
        with self._cv:
            return not self._waiting and self.running == 0

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closed or self.draining:
                raise BadRequest("the judge server is shutting down; retry on another instance", status=503,
                                 retry_after=5, code="shutting_down")
            if len(self._waiting) >= self.max_queue:
                raise BadRequest(f"the judge server is busy ({len(self._waiting)} requests queued); retry later",
                                 status=429, retry_after=1, code="queue_full")
            self._waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """The client went away or its deadline passed: its row leaves the batch at the next step."""
        with self._cv:
            job.cancelled = True
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=60)

    # ------------------------------------------------------------------ worker side

    def _loop(self) -> None:
        try:
            self._stop = _stop_ids(self.judge.tokenizer, GenerationSettings())
            self.decoder = ContinuousDecoder(self.judge.model, judge_prefix(self.judge), self.max_batch,
                                             self._stop, self.fast_kernels)
        except BaseException as e:  # noqa: BLE001 (reported to the constructor)
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while self._turn():
                pass
        finally:
            for row in self.decoder.rows:
                _fail(row.job, BadRequest("the judge server shut down", status=503))
            with self._cv:
                left, self._waiting = list(self._waiting), deque()
            for job in left:
                _fail(job, BadRequest("the judge server shut down", status=503))
            # MLX gives each thread its own streams; release them before the thread ends (else abort at exit)
            if hasattr(mx, "clear_streams"):
                mx.clear_streams()

    def _take(self) -> Optional[list[Job]]:
        """Jobs to admit now (possibly none); None when closed."""
        d = self.decoder
        with self._cv:
            while not self._waiting and d.live() == 0 and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            if d.live() == 0 and self.wait_s > 0:  # an idle worker: let a burst arrive together
                end = time.monotonic() + self.wait_s
                while len(self._waiting) < self.max_batch and time.monotonic() < end and not self._closed:
                    self._cv.wait(end - time.monotonic())
            for job in [j for j in self._waiting if j.cancelled]:
                self._waiting.remove(job)
                job.future.cancel()
            free = d.free()
            wanted = min(max(1, self.max_batch // 4), len(self._waiting))
            if not self._waiting or not (d.live() == 0 or free >= wanted):
                return []
            take = []
            while self._waiting and len(take) < free:
                take.append(self._waiting.popleft())
            return take

    def _rows(self, jobs: list[Job]) -> list[Row]:
        """Rows for jobs (tokenized here: the worker is the tokenizer's only user); bad prompts fail their job."""
        s, rows = self.judge.settings, []
        for job in jobs:
            r = job.request
            budget = r.max_tokens or s.max_tokens
            try:
                prompt = self.judge.encode(r.item, budget)
            except PromptTooLong as e:
                _fail(job, BadRequest(str(e), "messages"))
                continue
            temperature = r.temperature if r.temperature is not None else s.temperature
            top_p = r.top_p if r.top_p is not None else s.top_p
            keys = None
            if temperature > 0:
                if r.seed is not None:
                    keys = stream_keys(r.seed, 0, budget)
                else:
                    keys, self._unseeded = stream_keys(s.seed, self._unseeded, budget), self._unseeded + 1
            rows.append(Row(job, prompt, budget, temperature, top_p, keys))
        return rows

    def _turn(self) -> bool:
        jobs = self._take()
        if jobs is None:
            return False
        d = self.decoder
        for row in d.rows:
            if row.job.cancelled and not row.spent:
                row.finish_reason = "cancelled"
                row.job.future.cancel()
        if jobs:
            rows = self._rows(jobs)
            fits = [r for r in rows if d.fits(r.prompt)]
            if len(fits) < len(rows):  # the prompt's opening changed (a template with a date, say): re-derive
                misfits = [r for r in rows if not d.fits(r.prompt)]
                if d.live() == 0 and not fits:
                    d.compact(force=True)
                    d.set_prefix(misfits[0].prompt[:common_prefix_length([d.prefix_ids + [-1],
                                                                          misfits[0].prompt])])
                    fits, misfits = [r for r in rows if d.fits(r.prompt)], [r for r in rows if not d.fits(r.prompt)]
                with self._cv:  # the rest wait, in order, for the batch to drain
                    self._waiting.extendleft(reversed([r.job for r in misfits]))
            if fits:
                tic, prompt_tokens = time.perf_counter(), 0
                try:
                    prompt_tokens = d.add(fits)
                except Exception as e:  # a resource failure: 500 for these requests, the server keeps going
                    log.exception("prefill failed for %d request(s)", len(fits))
                    for r in fits:
                        _fail(r.job, e)
                    fits = []
                self.admissions.append(len(fits))
                if self.on_step is not None:
                    self.on_step(0, prompt_tokens, time.perf_counter() - tic)
        d.compact()
        self.running = d.live()
        if not d.rows:
            return True
        if self.step_hook is not None:
            self.step_hook()
        tic, live = time.perf_counter(), d.live()
        try:
            done = d.step()
        except Exception as e:
            log.exception("a decode step failed for %d rows", len(d.rows))
            for r in d.rows:
                if not r.spent:
                    r.finish_reason = "error"
                    _fail(r.job, e)
            d.compact(force=True)
            return True
        if self.on_step is not None:
            self.on_step(live, 0, time.perf_counter() - tic)
        for r in d.rows:
            if r.job.request.stream and not r.job.request.structured and r.tokens and r not in done:
                self._stream(r)
        for r in done:
            self._finish(r)
        self.running = d.live()
        return True

    def _stream(self, row: Row) -> None:
        text = self.judge.tokenizer.decode(row.tokens)
        if text.endswith("\ufffd"):  # a character cut between tokens: wait for the rest of it
            return
        if len(text) > row.sent:
            row.job.deltas.put(text[row.sent:])
            row.sent = len(text)

    def _finish(self, row: Row) -> None:
        from mlxhv.engine import Completion
        from mlxhv.answer import completion_prediction

        tok = self.judge.tokenizer
        c = Completion(tok.decode(row.tokens), row.tokens, row.logprobs, row.finish_reason, len(row.prompt))
        job = row.job
        if job.request.stream and not job.request.structured and len(c.text) > row.sent:
            job.deltas.put(c.text[row.sent:])
        pred = completion_prediction(job.request.item.id or job.id, c, self.judge.prompt.answer_prefix,
                                     prompt_opens_think(tok, row.prompt), time.monotonic() - job.created, tok)
        if self.on_done is not None:
            self.on_done(job, pred)
        if not job.future.done():
            job.future.set_result(pred)


__all__ = ["Scheduler", "ContinuousDecoder", "Job", "Row", "sample_rows", "stream_keys", "judge_prefix"]
