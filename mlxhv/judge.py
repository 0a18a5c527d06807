"""The judge as a library call: `Judge.load(...)` once, then `judge(hypothesis, evidence) -> Prediction`.

    from mlxhv.judge import Judge
    judge = Judge.load("smollm2-135m", adapter="adapters/judge")
    p = judge.judge("Price cuts raise volume", [{"source": "pilot", "content": "…", "relevance": 0.9}])
    p.decision, p.confidence, p.refined_hypothesis

The prompt is the one `mlxhv eval` and the PPO trainer use (`prompts.render_prompt`), and the answer goes through
the same parser into the same `Prediction` (`answer.completion_prediction`), so a decision here is the
decision eval reports for the same example, model and adapter.

Prompt settings come from the adapter's own `judge_prompt.json` (`prompts.PromptConfig`: system prompt text,
answer prefix, max_tokens) when it has one. A caller's `system_prompt_file` or `answer_prefix` that differs from
the adapter's is refused (`SettingsError`) rather than silently used: the adapter was trained on its prompt.
Without an adapter, or with one that records no prompt, the settings are eval's: built-in system prompt, no
answer prefix, the model family's generation preset (`models.presets.generation_preset`).

A prompt that does not fit the model's context (`max_position_embeddings` of its config) with `max_tokens` of
answer, or that is longer than `max_prompt_tokens` when set, raises `PromptTooLong` before any generation.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlxhv.data.io import LineError, pydantic_errors
from mlxhv.errors import DataError, MlxhvError, SettingsError
from mlxhv.answer import completion_prediction
from mlxhv.models.presets import generation_preset
from mlxhv.prompts import (PromptConfig, load_system_prompt, prompt_opens_think, read_prompt_config, render_prompt,
                           resolve_answer_prefix)
from mlxhv.schema import Evidence, Prediction


class PromptTooLong(MlxhvError, ValueError):
    """A rendered prompt (plus its answer budget) does not fit the model's context or the configured limit."""


class JudgeInput(BaseModel):
    """One thing to judge: a hypothesis and its evidence; `id` names the prediction.

    The other fields of an `Example` (gold label, metadata) are accepted and ignored, so a labelled data file can
    be judged as it is; any other field is refused, as everywhere in mlxhv."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: Optional[str] = Field(default=None, min_length=1, pattern=r"^\S+$")
    hypothesis: str = Field(min_length=1)
    evidence: list[Evidence] = Field(min_length=1)
    # Example fields that the judge does not read
    expected_decision: Any = None
    confidence: Any = None
    refined_hypothesis: Any = None
    metadata: Any = None


@dataclass
class JudgeSettings:
    """How a judge runs. None means: the adapter's `judge_prompt.json`, else eval's default for the model."""

    precision: str = "auto"  # mlxhv.models.load: auto = the float32 CPU fast path where it fits
    system_prompt_file: Optional[str] = None  # must match the adapter's prompt when the adapter records one
    answer_prefix: Optional[str] = None  # "json" = prompts.JSON_ANSWER_PREFIX; must match the adapter's
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: int = 0
    batch_size: int = 16  # prompts per engine batch in judge_many
    max_prompt_tokens: Optional[int] = None  # refuse longer prompts (None: only the model's context bounds them)

    def __post_init__(self):
        if self.batch_size < 1:
            raise SettingsError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise SettingsError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise SettingsError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")


def resolve_prompt_config(adapter: Optional[str], system_prompt_file: Optional[str] = None,
                          answer_prefix: Optional[str] = None) -> PromptConfig:
    """The PromptConfig a judge uses: the adapter's (a differing caller setting is a SettingsError), else the
    caller's settings over eval's defaults (built-in system prompt, no prefix)."""
    try:
        asked_system = load_system_prompt(system_prompt_file) if system_prompt_file else None
    except (FileNotFoundError, ValueError) as e:
        raise SettingsError(f"system_prompt_file: {e}") from None
    asked_prefix = resolve_answer_prefix(answer_prefix) if answer_prefix is not None else None
    saved = read_prompt_config(adapter) if adapter is not None else None
    if saved is None:
        return PromptConfig(system_prompt=asked_system, answer_prefix=asked_prefix or "")
    where = Path(adapter) / "judge_prompt.json"
    if asked_system is not None and asked_system != saved.system_prompt_text:
        raise SettingsError(f"system_prompt_file {system_prompt_file}: differs from the system prompt the adapter "
                            f"was trained with ({where}); leave it unset to use the adapter's")
    if asked_prefix is not None and asked_prefix != saved.answer_prefix:
        raise SettingsError(f"answer_prefix {asked_prefix!r}: the adapter was trained with "
                            f"{saved.answer_prefix!r} ({where}); leave it unset to use the adapter's")
    return saved


def model_context(model) -> Optional[int]:
    """The model's context length in tokens (`max_position_embeddings`), or None when its config has none."""
    args = getattr(model, "args", None)
    n = getattr(args, "max_position_embeddings", None)
    if n:
        return int(n)
    path = (getattr(model, "mlxhv_info", None) or {}).get("path")
    if path:
        try:
            n = json.loads((Path(path) / "config.json").read_text()).get("max_position_embeddings")
        except (OSError, ValueError):
            n = None
    return int(n) if n else None


def as_input(item: Any, where: str = "item") -> JudgeInput:
    """A JudgeInput from a mapping, a JudgeInput, an Example or any object with hypothesis/evidence attributes.

    Evidence items may be `Evidence` objects or plain dicts. Raises DataError naming `where` and the field."""
    if isinstance(item, JudgeInput):
        return item
    if not isinstance(item, Mapping):
        fields = ("id", "hypothesis", "evidence")
        item = {k: getattr(item, k) for k in fields if getattr(item, k, None) is not None}
    data = dict(item)
    if isinstance(data.get("evidence"), list):
        data["evidence"] = [e.model_dump() if isinstance(e, Evidence) else e for e in data["evidence"]]
    try:
        return JudgeInput.model_validate(data)
    except ValidationError as e:
        raise DataError(pydantic_errors(e, where, 0)) from None


class Judge:
    """A loaded judge: model, tokenizer, prompt settings and generation settings, applied alike to every call."""

    def __init__(self, model, tokenizer, prompt: PromptConfig, settings: JudgeSettings, name: str = "model",
                 adapter: Optional[str] = None, generate_fn: Optional[Callable] = None):
        self.model, self.tokenizer, self.prompt, self.name, self.adapter = model, tokenizer, prompt, name, adapter
        preset = generation_preset(name)
        self.settings = dataclasses.replace(
            settings,
            max_tokens=settings.max_tokens or prompt.max_tokens or preset["max_tokens"],
            temperature=settings.temperature if settings.temperature is not None else preset["temperature"],
            top_p=settings.top_p if settings.top_p is not None else preset["top_p"])
        self.context = model_context(model)
        if generate_fn is None:
            from mlxhv.engine import generate as generate_fn
        self._generate = generate_fn

    @classmethod
    def load(cls, model: str = "smollm2-135m", adapter: Optional[str] = None, **settings) -> "Judge":
        """Load `model` (preset | hub id | mlx-lm directory | GGUF) with `adapter` and the adapter's prompt
        settings; keyword arguments are `JudgeSettings` fields."""
        from mlxhv.models import load

        names = {f.name for f in dataclasses.fields(JudgeSettings)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise SettingsError(f"unknown judge setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        s = JudgeSettings(**settings)
        if adapter is not None:  # a path, or the name of a shipped adapter (`smollm2-135m-judge`)
            from mlxhv.paths import resolve_path

            adapter = str(resolve_path(adapter))
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise SettingsError(f"{adapter}: not an adapter directory (no adapter_config.json)")
        prompt = resolve_prompt_config(adapter, s.system_prompt_file, s.answer_prefix)
        m, tok = load(model, precision=s.precision, adapter_path=adapter)
        judge = cls(m, tok, prompt, s, name=str(model), adapter=adapter)
        judge.check_template()
        return judge

    def run_info(self) -> dict:
        """What a judgements file depends on; `judge_file` stores it beside OUT and refuses to resume OUT with a
        judge that differs (as eval's run.json)."""
        from mlxhv.models.loader import adapter_sha
        from mlxhv.prompts import prompt_sha

        g = self.settings
        return {"model": self.name, "adapter": self.adapter, "adapter_sha": adapter_sha(self.adapter),
                "answer_prefix": self.prompt.answer_prefix,
                "prompt_sha": prompt_sha(self.prompt.system_prompt_text), "max_tokens": g.max_tokens,
                "temperature": g.temperature, "top_p": g.top_p, "seed": g.seed}

    def check_template(self) -> None:
        """Refuse, at start, an answer prefix this model's chat template cannot take (one that opens <think>)."""
        probe = JudgeInput(hypothesis="h", evidence=[Evidence(source="s", content="c", relevance=1.0)])
        try:
            render_prompt(self.tokenizer, probe, self.prompt.system_prompt_text, answer_prefix=self.prompt.answer_prefix)
        except ValueError as e:
            raise SettingsError(str(e)) from None

    # ------------------------------------------------------------------------------------------------ prompts

    def generation_settings(self, **overrides):
        """The engine's GenerationSettings for these settings, with per-call `overrides` (max_tokens, …)."""
        from mlxhv.engine import GenerationSettings

        s = self.settings
        g = GenerationSettings(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                               batch_size=s.batch_size)
        return dataclasses.replace(g, **overrides)

    def encode(self, item: JudgeInput, max_tokens: Optional[int] = None) -> list[int]:
        """Prompt token ids for one input; PromptTooLong when it (plus `max_tokens` of answer) cannot fit."""
        ids = render_prompt(self.tokenizer, item, self.prompt.system_prompt_text, answer_prefix=self.prompt.answer_prefix)
        budget = max_tokens or self.settings.max_tokens
        if self.settings.max_prompt_tokens is not None and len(ids) > self.settings.max_prompt_tokens:
            raise PromptTooLong(f"prompt of {len(ids)} tokens is longer than max_prompt_tokens "
                                f"{self.settings.max_prompt_tokens}")
        if self.context is not None and len(ids) + budget > self.context:
            raise PromptTooLong(f"prompt of {len(ids)} tokens + max_tokens {budget} exceeds the model's context "
                                f"of {self.context} tokens")
        return ids

    # --------------------------------------------------------------------------------------------- judging

    def run(self, ids: Sequence[str], prompts: Sequence[list[int]], generation=None,
            on_batch: Optional[Callable[[list[Prediction]], None]] = None) -> list[Prediction]:
        """Generate and parse already-encoded prompts (one engine call, batched); predictions in input order.

        `on_batch(predictions)` runs after every engine batch (for writing them out as they come)."""
        if not prompts:
            return []
        generation = generation or self.generation_settings()
        preds: list[Optional[Prediction]] = [None] * len(prompts)
        last = time.perf_counter()

        def collect(indices, completions):
            nonlocal last
            now = time.perf_counter()
            batch_s, last = now - last, now
            for i, c in zip(indices, completions):
                in_think = prompt_opens_think(self.tokenizer, prompts[i])
                preds[i] = completion_prediction(ids[i], c, self.prompt.answer_prefix, in_think, batch_s,
                                                 self.tokenizer)
            if on_batch is not None:
                on_batch([preds[i] for i in sorted(indices)])  # in input order

        self._generate(self.model, self.tokenizer, list(prompts), generation, progress=False, on_batch=collect)
        missing = [ids[i] for i, p in enumerate(preds) if p is None]
        if missing:
            raise RuntimeError(f"the engine returned no completion for {len(missing)} prompt(s), e.g. {missing[0]}")
        return preds

    def judge(self, hypothesis: str, evidence: Iterable, id: Optional[str] = None) -> Prediction:
        """Judge one hypothesis against its evidence (`Evidence` objects or dicts with source, content,
        relevance). The prediction's id is `id`, or "0"."""
        evidence = list(evidence) if isinstance(evidence, tuple) else evidence
        item = as_input({"id": id, "hypothesis": hypothesis, "evidence": evidence}, "judge()")
        return self.run([item.id or "0"], [self.encode(item)])[0]

    def judge_many(self, items: Iterable, on_batch: Optional[Callable[[list[Prediction]], None]] = None,
                   ) -> list[Prediction]:
        """Judge every item (mappings, `JudgeInput`s or `Example`s), batched through the engine; predictions in
        input order, each with the item's id or, without one, its index. Every bad item is reported at once
        (DataError naming `items[i]` and the field) before anything runs."""
        ids, prompts, errors = [], [], []
        for i, item in enumerate(items):
            try:
                inp = as_input(item, f"items[{i}]")
                prompts.append(self.encode(inp))
                ids.append(inp.id if inp.id is not None else str(i))
            except DataError as e:
                errors.extend(e.errors)
            except PromptTooLong as e:
                errors.append(LineError(f"items[{i}]", 0, "evidence", str(e)))
        if errors:
            raise DataError(errors)
        return self.run(ids, prompts, on_batch=on_batch)


# ------------------------------------------------------------------------------------------ JSONL streaming


@dataclass
class StreamResult:
    judged: int = 0  # predictions written by this call
    skipped: int = 0  # records whose id was already in the output (resumed)
    errors: list = dataclasses.field(default_factory=list)  # LineError per bad line, in file order


def read_inputs(lines: Iterable[bytes], name: str) -> Iterator[tuple[int, JudgeInput | LineError]]:
    """(line_no, JudgeInput or LineError) for each non-blank line of a JSONL byte stream, as `data.io.iter_jsonl`
    reads files; a record without an id gets `line-N`, a repeated id is an error at its second line."""
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield line_no, LineError(name, line_no, "", f"not valid UTF-8 (byte {e.start})")
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield line_no, LineError(name, line_no, "", f"malformed JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(obj, dict):
            yield line_no, LineError(name, line_no, "", f"expected a JSON object, got {type(obj).__name__}")
            continue
        try:
            item = JudgeInput.model_validate(obj)
        except ValidationError as e:
            for err in pydantic_errors(e, name, line_no):
                yield line_no, err
            continue
        if item.id is None:
            item = item.model_copy(update={"id": f"line-{line_no}"})
        if item.id in seen:
            yield line_no, LineError(name, line_no, "id", f"duplicate id {item.id!r} (first on line {seen[item.id]})")
            continue
        seen[item.id] = line_no
        yield line_no, item


def judge_stream(judge: Judge, lines: Iterable[bytes], name: str, write: Callable[[list[Prediction]], None],
                 done_ids: frozenset = frozenset(), on_error: Optional[Callable[[LineError], None]] = None,
                 ) -> StreamResult:
    """Judge a JSONL stream of inputs in chunks of `judge.settings.batch_size`, calling `write(predictions)`
    after every engine batch. Ids in `done_ids` are skipped (resume); a bad line (invalid record, duplicate id,
    prompt too long) goes to `on_error` as it is met and is skipped, the rest are judged."""
    result = StreamResult()
    chunk_ids: list[str] = []
    chunk_prompts: list[list[int]] = []

    def written(preds):
        result.judged += len(preds)
        write(preds)

    def flush():
        judge.run(chunk_ids, chunk_prompts, on_batch=written)
        chunk_ids.clear()
        chunk_prompts.clear()

    def bad(err: LineError):
        result.errors.append(err)
        if on_error is not None:
            on_error(err)

    for line_no, item in read_inputs(lines, name):
        if isinstance(item, LineError):
            bad(item)
            continue
        if item.id in done_ids:
            result.skipped += 1
            continue
        try:
            prompt = judge.encode(item)
        except PromptTooLong as e:
            bad(LineError(name, line_no, "evidence", str(e)))
            continue
        chunk_ids.append(item.id)
        chunk_prompts.append(prompt)
        if len(chunk_ids) >= judge.settings.batch_size:
            flush()
    if chunk_ids:
        flush()
    return result


def run_info_path(out: Path) -> Path:
    return out.with_name(out.name + ".run.json")


def _check_run_info(out: Path, info: dict) -> None:
    """Write OUT's run info, or refuse to resume OUT written by another judge (model, adapter, prompt, decoding)."""
    import json

    from mlxhv.data.io import write_json_atomic

    path = run_info_path(out)
    if path.exists():
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in info.items() if old.get(k) != v]
        if diff:
            raise SettingsError(f"{out}: was written by another judge ({'; '.join(diff)}); use another -o")
    elif out.exists() and out.stat().st_size > 0:
        raise SettingsError(f"{out}: exists without {path.name}, so it is not known which judge wrote it; "
                            "use another -o")
    write_json_atomic(path, info)


def judge_file(judge: Judge, source, out=None, on_error: Optional[Callable[[LineError], None]] = None,
               stdout=None) -> StreamResult:
    """Judge the JSONL file `source` ("-" or a binary stream: read as it comes) into `out`, or write Prediction
    lines to `stdout` (a text stream) when `out` is None.

    `out` resumes like eval's predictions.jsonl: OUT.run.json records the judge (`Judge.run_info`) and a
    different one is refused; a partial last line left by a killed run is cut (`repair_tail`), ids already there
    are skipped, and each engine batch is appended with one write(2) per line (`append_jsonl`),
    so a rerun after a kill leaves exactly one line per record."""
    import sys

    from mlxhv.data.io import append_jsonl, read_predictions, repair_tail

    done: frozenset = frozenset()
    if out is not None:
        out = Path(out)
        _check_run_info(out, judge.run_info())
        if out.exists():
            repair_tail(out)
            done = frozenset(p.id for p in read_predictions(out))

        def write(preds):
            append_jsonl(out, preds)
    else:
        stdout = stdout or sys.stdout

        def write(preds):
            for p in preds:
                stdout.write(p.model_dump_json() + "\n")
            stdout.flush()

    if source == "-" or hasattr(source, "read"):
        stream = sys.stdin.buffer if source == "-" else source
        return judge_stream(judge, stream, "<stdin>" if source == "-" else getattr(source, "name", "<input>"),
                            write, done, on_error)
    path = Path(source)
    if not path.is_file():
        raise DataError([LineError(str(path), 0, "", "no such file" if not path.exists() else "not a file")])
    with open(path, "rb") as f:
        return judge_stream(judge, f, str(path), write, done, on_error)
