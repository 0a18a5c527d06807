"""Batched evaluation of a judge model: prompts → engine → parser → predictions.jsonl → metrics.json, report.md.

Files in the run directory:
- `run.json` — what the predictions depend on (model, precision, adapter, generation settings, prompt hash),
  with the effective values (an adapter's prompt settings applied, see `EvalSettings`); a later run into the same
  directory must match it, or it refuses (`restart=True` starts over).
- `predictions.jsonl` — one `Prediction` per example, appended after every engine batch (one write(2) per line,
  fsync). Resuming: a partial last line from a killed run is cut (`repair_tail`), ids already present are
  skipped, the rest are generated. So a rerun after a kill gives exactly one line per example.
- `sessions.jsonl` — the engine's `GenerationStats` for each finished invocation, plus `n` examples; throughput
  in metrics.json aggregates these (a killed invocation's examples are counted in quality metrics, not timing).
- `metrics.json`, `report.md`, `reliability.png` (when matplotlib is installed) — rewritten at the end of each run.

Under `mlx.launch -n N` (mx.distributed) the examples left to do are sorted by prompt length and dealt to the
ranks round-robin; rank 0 alone reads and writes the run directory (its own answers as they come, the other
ranks' when they are gathered at the end), so a resumed run still ends with one line per example.

`latency_s` of a prediction is the wall time of the engine batch that produced it (batches run concurrently
inside, so every example of a batch waits that long).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from mlxhv import distributed
from mlxhv.data.io import append_jsonl, iter_jsonl, read_predictions, repair_tail, write_json_atomic
from mlxhv.errors import EvalError, SettingsError  # noqa: F401  (raised here, re-exported)
from mlxhv.eval.metrics import compute_metrics, correctness, paired_outcomes
from mlxhv.answer import completion_prediction
from mlxhv.models.loader import adapter_sha
from mlxhv.models.presets import GENERATION_PRESETS, generation_preset  # noqa: F401  (re-exported)
from mlxhv.prompts import (SYSTEM_PROMPT, load_system_prompt, prompt_opens_think, prompt_sha,
                           read_prompt_config, render_prompt, resolve_answer_prefix)
from mlxhv.schema import Example, Prediction

PREDICTIONS = "predictions.jsonl"
SESSIONS = "sessions.jsonl"
RUN_INFO = "run.json"
METRICS = "metrics.json"
REPORT = "report.md"
RELIABILITY_PNG = "reliability.png"

# Fields of EvalSettings a resumed run must share with the run that wrote predictions.jsonl.
# `adapter_sha` hashes the adapter's files, so retraining into the same folder never resumes the old answers.
RESUME_KEYS = ("model", "precision", "adapter_path", "adapter_sha", "max_tokens", "temperature", "top_p", "seed",
               "answer_prefix", "prompt_sha")


@dataclass
class EvalSettings:
    """One evaluation job. None for a generation field means "the model preset's value" (`generation_preset`).

    An adapter that records its prompt settings (`prompts.read_prompt_config`: `judge_prompt.json` beside its
    weights) supplies `answer_prefix`, the system prompt and `max_tokens` wherever they are None here (the
    system prompt counts as set when `system_prompt` or `system_prompt_file` is); a value set here wins.
    `resolved()` applies all defaults and lists the fields it took from the adapter in `from_adapter`.
    """

    model: str = "smollm2-135m"
    data: Optional[str] = None  # JSONL of Examples (used by run_eval; evaluate takes the examples directly)
    out: Optional[str] = None  # run directory; None keeps everything in memory
    precision: str = "auto"
    adapter_path: Optional[str] = None
    limit: Optional[int] = None  # a sample of N examples with the file's mix (`subset`)
    batch_size: int = 16
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: int = 0
    threshold: float = 0.85  # accuracy below which RL is worth pursuing
    restart: bool = False  # discard an existing run in `out` instead of resuming it
    progress: bool = True
    report_samples: int = 5  # wrong answers quoted in report.md
    system_prompt_file: Optional[str] = None  # a variant of prompts.SYSTEM_PROMPT, read from this file
    system_prompt: Optional[str] = None  # or the variant's text itself (an adapter's judge_prompt.json holds one)
    # Opens the assistant's answer ("json" = prompts.JSON_ANSWER_PREFIX); parsed with the completion. None: the
    # adapter's, else none.
    answer_prefix: Optional[str] = None
    from_adapter: tuple = ()  # filled by resolved(): the fields taken from the adapter's prompt settings

    def __post_init__(self):
        from mlxhv.paths import resolve_path

        if self.adapter_path:  # a path, or a shipped adapter's name (`smollm2-135m-judge`)
            self.adapter_path = str(resolve_path(self.adapter_path))
        if self.data:  # a path, or a shipped data file's name (`data/holdout.jsonl`)
            self.data = str(resolve_path(self.data))
        if self.answer_prefix is not None:
            self.answer_prefix = resolve_answer_prefix(self.answer_prefix)
        if self.system_prompt is not None and self.system_prompt_file is not None:
            raise SettingsError("system_prompt and system_prompt_file: give the system prompt one way, not both")
        if self.system_prompt is not None and not self.system_prompt.strip():
            raise SettingsError("system_prompt: empty")

    def resolved(self) -> "EvalSettings":
        """These settings with the adapter's prompt settings, then the model preset, filling what is None."""
        s, taken = self, list(self.from_adapter)
        config = read_prompt_config(self.adapter_path) if self.adapter_path else None
        if config is not None:
            fill = {}
            if s.answer_prefix is None:
                fill["answer_prefix"] = resolve_answer_prefix(config.answer_prefix)
            if s.system_prompt is None and s.system_prompt_file is None and config.system_prompt is not None:
                fill["system_prompt"] = config.system_prompt
            if s.max_tokens is None and config.max_tokens is not None:
                fill["max_tokens"] = config.max_tokens
            taken += list(fill)
            s = dataclasses.replace(s, **fill)
        preset = generation_preset(s.model)
        fill = {k: v for k, v in preset.items() if getattr(s, k) is None}
        return dataclasses.replace(s, **fill, answer_prefix=s.answer_prefix or "", from_adapter=tuple(taken))

    def system_prompt_text(self) -> str:
        """The system prompt used: `system_prompt`, else the file's text, else prompts.SYSTEM_PROMPT."""
        return self.system_prompt if self.system_prompt is not None else load_system_prompt(self.system_prompt_file)

    def run_info(self) -> dict:
        """run.json: the effective RESUME_KEYS values (prompt_sha hashes the system prompt text used), and the
        fields that came from the adapter's prompt settings (informational, not compared on resume)."""
        s = self.resolved()
        return {**{k: getattr(s, k) for k in RESUME_KEYS if k not in ("prompt_sha", "adapter_sha")},
                "adapter_sha": adapter_sha(s.adapter_path), "prompt_sha": prompt_sha(s.system_prompt_text()),
                "prompt_from_adapter": list(s.from_adapter)}


@dataclass
class Run:
    settings: EvalSettings
    examples: list  # the evaluated examples, in file order
    predictions: list  # one Prediction per example that has one, in example order
    metrics: dict
    sessions: list = field(default_factory=list)
    out_dir: Optional[Path] = None


def subset(examples: Sequence, limit: Optional[int], seed: int = 0) -> list:
    """A deterministic sample of `limit` examples, in file order, that follows the file's mix of domains,
    decisions and levels; all of them when limit is None or >= len.

    Greedy proportional allocation over the three marginals at once: each pick takes the example minimising
    Σ_m (picked_m[v] + 1) / count_m[v] over m ∈ {domain, decision, level} (v its value; D'Hondt divisors),
    ties broken by a seeded shuffle. So 10 of the shipped 70-example holdout hold every domain twice, every
    level and every decision, in about the file's proportions — a prefix would test one domain at one level.
    """
    import random
    from collections import Counter

    examples = list(examples)
    if limit is None or limit >= len(examples):
        return examples
    if limit < 0:
        raise EvalError(f"limit must be >= 0, got {limit}")

    def keys(e):
        return (("domain", e.metadata.domain), ("decision", e.expected_decision.value),
                ("level", e.metadata.difficulty_level))

    count = Counter(k for e in examples for k in keys(e))
    picked: Counter = Counter()
    rank = list(range(len(examples)))
    random.Random(seed).shuffle(rank)
    left = set(range(len(examples)))
    chosen = []
    for _ in range(limit):
        best = min(left, key=lambda i: (sum((picked[k] + 1) / count[k] for k in keys(examples[i])), rank[i]))
        left.remove(best)
        chosen.append(best)
        picked.update(keys(examples[best]))
    return [examples[i] for i in sorted(chosen)]


def _engine_settings(s: EvalSettings):
    try:
        from mlxhv.engine import GenerationSettings
    except ImportError:  # only reachable with a stub generate_fn (tests): same fields, no engine
        from types import SimpleNamespace as GenerationSettings

    return GenerationSettings(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                              batch_size=s.batch_size)


def read_sessions(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [obj for _, obj in iter_jsonl(path) if isinstance(obj, dict)]


@contextlib.contextmanager
def _dir_lock(out_dir: Path):
    """Refuse to let two processes append to the same run directory at once."""
    import fcntl

    fd = os.open(out_dir / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvalError(f"{out_dir}: another mlxhv eval is writing to this directory") from None
        yield
    finally:
        os.close(fd)


def _prepare_dir(out_dir: Path, settings: EvalSettings) -> None:
    info_path = out_dir / RUN_INFO
    info = settings.run_info()
    if settings.restart:
        for name in (PREDICTIONS, SESSIONS, METRICS, REPORT, RELIABILITY_PNG, RUN_INFO):
            (out_dir / name).unlink(missing_ok=True)
    if info_path.exists():
        old = json.loads(info_path.read_text())
        diff = [f"{k}: {old.get(k)!r} there, {info[k]!r} now" for k in RESUME_KEYS if old.get(k) != info[k]]
        if diff:
            raise EvalError(f"{info_path}: this directory holds a run with other settings ({'; '.join(diff)}); "
                            "use another --out, or --restart to discard it")
    elif (out_dir / PREDICTIONS).exists():
        raise EvalError(f"{out_dir / PREDICTIONS}: exists without {RUN_INFO}; use another --out or --restart")
    else:
        info_path.write_text(json.dumps(info, indent=2) + "\n")


def evaluate(model, tokenizer, examples: Sequence[Example], settings: EvalSettings,
             out_dir: Optional[os.PathLike] = None, generate_fn: Optional[Callable] = None) -> Run:
    """Evaluate `model` on `examples` with the batched engine; resume from and write to `out_dir` if given.

    `out_dir` defaults to `settings.out`. `generate_fn` defaults to `mlxhv.engine.generate` (tests pass a stub
    with the same signature). `settings.limit` is applied here (`subset`).
    """
    settings = settings.resolved()
    examples = subset(examples, settings.limit)
    out_dir = Path(out_dir) if out_dir is not None else (Path(settings.out) if settings.out else None)
    if generate_fn is None:
        from mlxhv.engine import generate as generate_fn

    world, main = distributed.size(), distributed.is_main()
    writes = out_dir is not None and main  # under mlx.launch rank 0 alone reads and writes the run directory
    lock = contextlib.nullcontext()
    done: dict[str, Prediction] = {}
    if writes:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = _dir_lock(out_dir)
    with lock:
        if writes:
            _prepare_dir(out_dir, settings)
            pred_path = out_dir / PREDICTIONS
            if pred_path.exists():
                repair_tail(pred_path)
                wanted = {ex.id for ex in examples}
                done = {p.id: p for p in read_predictions(pred_path) if p.id in wanted}
        if world > 1:  # every rank learns what rank 0 found on disk
            done = {p.id: p for p in _gather_predictions(list(done.values()) if main else [])}
        todo = [ex for ex in examples if ex.id not in done]
        mine = _shard(todo, tokenizer, settings) if world > 1 else todo
        new_preds: dict[str, Prediction] = {}
        session = None
        if mine:
            session = _generate(model, tokenizer, mine, settings, out_dir if writes else None, generate_fn,
                                new_preds, len(done), len(examples))
        new_sessions = [session] if session else []
        if world > 1:  # rank 0 gathers the other ranks' answers and writes them
            theirs = [p for p in _gather_predictions(list(new_preds.values())) if p.id not in new_preds]
            if writes and theirs:
                append_jsonl(out_dir / PREDICTIONS, theirs)
            new_preds.update({p.id: p for p in theirs})
            new_sessions = distributed.gather_objects(new_sessions)
        if writes and new_sessions:
            append_jsonl(out_dir / SESSIONS, new_sessions)

        by_id = {**done, **new_preds}
        predictions = [by_id[ex.id] for ex in examples if ex.id in by_id]
        sessions = read_sessions(out_dir / SESSIONS) if writes else new_sessions
        metrics = compute_metrics(examples, predictions, sessions)
        metrics["threshold"] = settings.threshold
        run = Run(settings, examples, predictions, metrics, sessions, out_dir)
        if writes:
            write_outputs(run)
    return run


def _gather_predictions(preds: list[Prediction]) -> list[Prediction]:
    """Every rank's predictions, in rank order."""
    return [Prediction.model_validate(d) for d in distributed.gather_objects([p.model_dump(mode="json")
                                                                               for p in preds])]


def _shard(todo: list, tokenizer, settings: EvalSettings) -> list:
    """This rank's examples: sorted by prompt length and dealt round-robin, so ranks get balanced work."""
    system_prompt = settings.system_prompt_text()
    lengths = [len(render_prompt(tokenizer, ex, system_prompt, answer_prefix=settings.answer_prefix)) for ex in todo]
    return [todo[i] for i in distributed.shard(len(todo), key=lambda i: (-lengths[i], todo[i].id))]


def _generate(model, tokenizer, todo, settings, out_dir, generate_fn, new_preds, n_done, n_total) -> dict:
    try:
        system_prompt = settings.system_prompt_text()
        prompts = [render_prompt(tokenizer, ex, system_prompt, answer_prefix=settings.answer_prefix) for ex in todo]
    except ValueError as e:
        raise EvalError(str(e)) from None
    in_think = prompt_opens_think(tokenizer, prompts[0])
    bar = None
    if settings.progress and distributed.is_main():
        from tqdm.auto import tqdm

        # examples/s even below 1/s (tqdm would flip to s/ex), then generated tok/s as the postfix
        fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
        bar = tqdm(total=n_total, initial=n_done, unit="ex", desc=f"eval {Path(str(settings.model)).name}",
                   dynamic_ncols=True, bar_format=fmt)
    t0 = last = time.perf_counter()
    gen_tokens = 0

    def on_batch(indices, completions):
        nonlocal last, gen_tokens
        now = time.perf_counter()
        batch_s, last = now - last, now
        preds = []
        for i, c in zip(indices, completions):
            preds.append(completion_prediction(todo[i].id, c, settings.answer_prefix, in_think, batch_s, tokenizer))
            gen_tokens += len(c.tokens)
        if out_dir is not None:
            append_jsonl(out_dir / PREDICTIONS, preds)
        for p in preds:
            new_preds[p.id] = p
        if bar is not None:
            bar.update(len(preds))
            bar.set_postfix_str(f"{gen_tokens / max(now - t0, 1e-9):.1f} tok/s", refresh=True)

    try:
        _, stats = generate_fn(model, tokenizer, prompts, _engine_settings(settings), progress=False,
                               on_batch=on_batch)
    finally:
        if bar is not None:
            bar.close()
    missing = [ex.id for ex in todo if ex.id not in new_preds]
    if missing:
        raise EvalError(f"the engine returned no completion for {len(missing)} example(s), e.g. {missing[0]}")
    s = dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(vars(stats))
    return {"n": len(todo), "batch_size": settings.batch_size, **s, "finished_at": time.time()}


def write_outputs(run: Run) -> None:
    """metrics.json (atomic), report.md and reliability.png in the run directory."""
    from mlxhv.eval.report import format_report, plot_reliability

    out = run.out_dir
    write_json_atomic(out / METRICS, run.metrics)
    m = run.metrics
    has_plot = plot_reliability(m["reliability"], out / RELIABILITY_PNG, title=f"{run.settings.model} (n={m['n']})",
                                by_class={k: v["reliability"] for k, v in m["by_predicted_class"].items()},
                                token_bins=m.get("reliability_token"))
    (out / REPORT).write_text(format_report(run, plot=RELIABILITY_PNG if has_plot else None))


def run_eval(settings: EvalSettings, generate_fn: Optional[Callable] = None) -> Run:
    """Load the data and the model named in `settings`, then `evaluate` (what `mlxhv eval` runs)."""
    from mlxhv.data.io import load_examples
    from mlxhv.models import load

    if not settings.data:
        raise EvalError("no data file given")
    examples = load_examples(settings.data)
    model, tokenizer = load(settings.model, precision=settings.precision, adapter_path=settings.adapter_path)
    return evaluate(model, tokenizer, examples, settings, generate_fn=generate_fn)


def run_correctness(run_dir: os.PathLike, gold: dict[str, str]) -> dict[str, bool]:
    """{id: right?} for the predictions in a run directory whose id is in `gold` ({id: gold decision});
    INVALID is wrong (`metrics.correctness`)."""
    preds = [p for p in read_predictions(Path(run_dir) / PREDICTIONS) if p.id in gold]
    ok = correctness([gold[p.id] for p in preds], [getattr(p.decision, "value", p.decision) for p in preds])
    return {p.id: right for p, right in zip(preds, ok)}


def paired_with_first(run_dirs: Sequence[os.PathLike], examples: Sequence[Example]) -> list[dict]:
    """Each run after the first paired with the first on their common examples: `metrics.paired_outcomes`
    (a = the first run, b = the other; counts and the exact McNemar p-value), one dict per later run."""
    gold = {e.id: e.expected_decision.value for e in examples}
    right = [run_correctness(r, gold) for r in run_dirs]
    return [paired_outcomes(right[0], other) for other in right[1:]]


def load_run(run_dir: os.PathLike) -> tuple[dict, dict]:
    """(run.json, metrics.json) of a finished run directory, for `mlxhv compare`."""
    run_dir = Path(run_dir)
    m = run_dir / METRICS
    if not m.exists():
        raise EvalError(f"{m}: no such file (run `mlxhv eval --out {run_dir}` first)")
    info_path = run_dir / RUN_INFO
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    try:
        metrics = json.loads(m.read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"{m}:{e.lineno}: malformed JSON: {e.msg}") from None
    return info, metrics
