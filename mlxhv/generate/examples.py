"""`mlxhv data generate`: planned examples, written by one model, graded by another, resumable.

For each planned item (see `plan.py`), up to `max_attempts` times:

1. the writer model is asked for an `ExampleDraft` in the item's cell (domain, level, decision, topic), with the
   reasons earlier attempts failed; the draft becomes an `Example` (schema rules) and its decision must be the
   planned one — a violation is re-asked with the errors (`client.call_json`), a reply cut by length, refused, or
   still invalid counts as a failed attempt (kind `length` / `refused` / `invalid`);
2. the QA model grades it (`QAVerdict`: label right for the evidence, difficulty as the level asks, confidence
   consistent, evidence realistic); accepted → the example is appended to the output, else the attempt failed
   (kind `qa`) and the judge's reasons go into the next prompt; a QA reply still unusable after `qa_attempts`
   requests discards the example too (kind `qa-error`).

Files, next to OUT (e.g. examples.jsonl):
- OUT                  accepted examples, appended one whole line at a time as they come;
- OUT.plan.json        the plan and its fingerprint, written before the first call;
- OUT.qa.jsonl         every QA verdict (accepted or not);
- OUT.rejects.jsonl    every failed attempt: kind, reasons, the raw reply or the rejected example;
- OUT.ledger.json      tokens and cost per model, summed over all runs of this plan;
- OUT.report.json      this run's counts (rejections by domain × level and by kind, failed ids).

Resume: running the same command again reads OUT (a partial last line is cut), checks that every record belongs
to this plan and cell, and does only the missing items, so no id is written twice. An OUT made by a different
plan (other topics, n, seed, levels, domains or id prefix) is refused unless `force`, which starts over.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from mlxhv.data.io import (
    DataError, LineError, OutputExists, append_jsonl, load_records, read_records, repair_tail,
)
from mlxhv.generate.client import (
    APIFailure, ClientSettings, ReplyError, call_json, make_client, redact, schema_instructions,
)
from mlxhv.generate.drafts import SAMPLES, ExampleDraft, QAVerdict, draft_to_example, qa_accepts, qa_reasons
from mlxhv.generate.ledger import DEFAULT_PRICES, Ledger, ModelUsage
from mlxhv.generate.plan import PlanItem, format_plan, plan_examples, plan_fingerprint
from mlxhv.generate.prompts import qa_messages, writer_messages
from mlxhv.schema import LEVELS, Example, Topic

DEFAULT_WRITER_MODEL = "o1"
DEFAULT_QA_MODEL = "gpt-4o-mini"
SIDE_FILES = ("plan.json", "qa.jsonl", "rejects.jsonl", "ledger.json", "report.json")
HOT_CELL_RATE = 0.5  # a domain × level cell is flagged when at least this share of its attempts was rejected


@dataclass
class GenerateSettings:
    """Settings of one `generate` job (the CLI builds this; use it directly from Python too)."""

    topics: Path
    out: Path
    n: int = 350
    seed: int = 0
    domains: Optional[tuple[str, ...]] = None  # None: every domain in the topics file
    levels: tuple[int, ...] = LEVELS
    id_prefix: str = "gen"
    writer_model: str = DEFAULT_WRITER_MODEL
    qa_model: str = DEFAULT_QA_MODEL
    qa: bool = True
    writer_max_tokens: Optional[int] = 16000  # o1-class reasoning tokens count against this
    qa_max_tokens: Optional[int] = 4000
    max_attempts: int = 4  # writer attempts per example (invalid replies and QA rejections alike)
    qa_attempts: int = 2  # QA requests per example before an unusable verdict discards it (kind qa-error)
    concurrency: int = 4
    force: bool = False
    progress: bool = True
    prices: dict = field(default_factory=lambda: dict(DEFAULT_PRICES))
    client: ClientSettings = field(default_factory=ClientSettings)
    # --dry-run cost estimate: completion tokens per call (o1 reasoning included) and expected share regenerated
    est_writer_completion_tokens: int = 2500
    est_qa_completion_tokens: int = 300
    est_reject_rate: float = 0.25


def side_path(out: Path, suffix: str) -> Path:
    """OUT.plan.json, OUT.qa.jsonl, … (`suffix` one of SIDE_FILES)."""
    return out.with_name(f"{out.name}.{suffix}")


def make_plan(settings: GenerateSettings) -> tuple[list[Topic], list[PlanItem], str]:
    """Load the topics and plan the run: (topics, items in run order, fingerprint)."""
    topics = load_records(settings.topics, Topic)
    items = plan_examples(topics, settings.n, seed=settings.seed, domains=settings.domains,
                          levels=settings.levels, id_prefix=settings.id_prefix)
    return topics, items, plan_fingerprint(items)


# ---------------------------------------------------------------------------------------------------- resume


def read_done(out: Path, items: list[PlanItem]) -> dict[str, Example]:
    """The examples already in `out`, checked against the plan; raises DataError listing every problem."""
    by_id = {it.id: it for it in items}

    def against_plan(ex: Example):
        item = by_id.get(ex.id)
        if item is None:
            return "id", f"{ex.id!r} is not in this plan"
        if (ex.metadata.domain, ex.metadata.difficulty_level, ex.expected_decision.value) != (
                item.domain, item.level, item.decision):
            return "metadata", (f"{ex.id} is {ex.metadata.domain} level {ex.metadata.difficulty_level} "
                                f"{ex.expected_decision.value}, the plan has {item.domain} level {item.level} "
                                f"{item.decision}")
        return None

    records, errors = read_records(out, Example, allow_empty=True, check=against_plan)
    if errors:
        raise DataError(errors)
    return {ex.id: ex for ex in records}


def open_output(settings: GenerateSettings, items: list[PlanItem], fingerprint: str) -> dict[str, Example]:
    """Start or resume OUT: check the stored plan, cut partial lines, return the examples already done."""
    out = settings.out
    plan_file = side_path(out, "plan.json")
    if settings.force:
        for p in [out] + [side_path(out, s) for s in SIDE_FILES]:
            p.unlink(missing_ok=True)
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"{out}: is a directory, expected a .jsonl file")
    if plan_file.exists():
        try:
            stored = json.loads(plan_file.read_text())
        except ValueError as e:
            raise DataError([LineError(str(plan_file), 0, "", f"malformed JSON: {e}")]) from None
        if stored.get("fingerprint") != fingerprint:
            raise OutputExists(
                f"{out}: was written for a different plan (n={stored.get('n')}, seed={stored.get('seed')}, "
                f"fingerprint {stored.get('fingerprint')}; this plan: n={settings.n}, seed={settings.seed}, "
                f"fingerprint {fingerprint}); use --force to discard it and start over")
    elif out.exists() and out.stat().st_size > 0:
        raise OutputExists(f"{out}: already exists and has no {plan_file.name}, so it is not from this plan "
                           "(use --force to discard it and start over)")
    else:
        record = {"fingerprint": fingerprint, "n": settings.n, "seed": settings.seed,
                  "levels": list(settings.levels), "domains": sorted({it.domain for it in items}),
                  "id_prefix": settings.id_prefix, "topics": str(settings.topics),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "items": [asdict(it) for it in items]}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = plan_file.with_name(plan_file.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        tmp.replace(plan_file)
    for p in (out, side_path(out, "qa.jsonl"), side_path(out, "rejects.jsonl")):
        repair_tail(p)
    return read_done(out, items) if out.exists() else {}


# ---------------------------------------------------------------------------------------------------- the run


@dataclass
class GenerateReport:
    planned: int
    fingerprint: str
    done_before: int = 0
    accepted: int = 0
    accepted_first_try: int = 0
    attempts: Counter = field(default_factory=Counter)  # (domain, level) -> writer attempts
    rejects: Counter = field(default_factory=Counter)  # (domain, level) -> failed attempts
    rejects_by_kind: Counter = field(default_factory=Counter)
    reasons: dict = field(default_factory=dict)  # (domain, level) -> Counter of reasons
    failed: list = field(default_factory=list)  # (id, cell text, last reasons)
    aborted: Optional[str] = None
    ledger: Optional[Ledger] = None
    cumulative: Optional[Ledger] = None
    elapsed_s: float = 0.0

    @property
    def missing(self) -> int:
        return self.planned - self.done_before - self.accepted

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def hot_cells(self, min_rejects: int = 2) -> list[tuple[tuple[str, int], int, int]]:
        """(cell, rejected, attempts) for domain × level cells where ≥ HOT_CELL_RATE of attempts failed."""
        hot = [(cell, r, self.attempts[cell]) for cell, r in self.rejects.items()
               if r >= min_rejects and r >= HOT_CELL_RATE * self.attempts[cell]]
        return sorted(hot, key=lambda h: (-h[1] / max(h[2], 1), -h[1], h[0]))

    def to_json(self) -> dict:
        def cells(c: Counter) -> dict:
            table: dict = {}
            for (d, lv), v in sorted(c.items()):
                table.setdefault(d, {})[str(lv)] = v
            return table

        return {
            "planned": self.planned, "fingerprint": self.fingerprint, "done_before": self.done_before,
            "accepted": self.accepted, "accepted_first_try": self.accepted_first_try, "missing": self.missing,
            "attempts_by_domain_level": cells(self.attempts), "rejects_by_domain_level": cells(self.rejects),
            "rejects_by_kind": dict(self.rejects_by_kind),
            "hot_cells": [{"domain": c[0], "level": c[1], "rejected": r, "attempts": a}
                          for c, r, a in self.hot_cells()],
            "top_reasons": {f"{d}/{lv}": cnt.most_common(5) for (d, lv), cnt in sorted(self.reasons.items())},
            "failed": [{"id": i, "cell": c, "reasons": r} for i, c, r in self.failed],
            "aborted": self.aborted, "elapsed_s": round(self.elapsed_s, 2),
            "ledger": self.ledger.to_json() if self.ledger else {},
        }


class _Run:
    """Shared state of one run: files, counters, the abort flag (all writes under one lock)."""

    def __init__(self, settings: GenerateSettings, report: GenerateReport, secret: Optional[str]):
        self.s, self.report, self.secret = settings, report, secret
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.qa_file = side_path(settings.out, "qa.jsonl")
        self.rejects_file = side_path(settings.out, "rejects.jsonl")

    def attempt(self, item: PlanItem) -> None:
        with self.lock:
            self.report.attempts[(item.domain, item.level)] += 1

    def verdict(self, item: PlanItem, attempt: int, verdict: QAVerdict, accepted: bool, reasons: list[str]) -> None:
        rec = {"id": item.id, "attempt": attempt, "accepted": accepted, "model": self.s.qa_model,
               "reasons": [] if accepted else reasons, "verdict": verdict.model_dump(mode="json")}
        with self.lock:
            append_jsonl(self.qa_file, [rec])

    def accept(self, example: Example, attempt: int) -> None:
        with self.lock:
            append_jsonl(self.s.out, [example])
            self.report.accepted += 1
            self.report.accepted_first_try += attempt == 1

    def reject(self, item: PlanItem, attempt: int, kind: str, reasons: list[str], raw: str = "",
               example: Optional[Example] = None) -> None:
        reasons = [redact(r, self.secret) for r in reasons]
        rec = {"id": item.id, "attempt": attempt, "kind": kind, "domain": item.domain, "level": item.level,
               "decision": item.decision, "topic": item.topic_title, "reasons": reasons,
               "model": self.s.writer_model if kind != "qa-error" else self.s.qa_model,
               "raw": redact(raw, self.secret) if raw else None,
               "example": example.model_dump(mode="json") if example else None}
        cell = (item.domain, item.level)
        with self.lock:
            append_jsonl(self.rejects_file, [rec])
            self.report.rejects[cell] += 1
            self.report.rejects_by_kind[kind] += 1
            counter = self.report.reasons.setdefault(cell, Counter())
            for r in reasons:
                counter[_short(f"{kind}: {r}")] += 1

    def fail(self, item: PlanItem, reasons: list[str]) -> None:
        with self.lock:
            self.report.failed.append((item.id, f"{item.domain} L{item.level} {item.decision}", reasons))

    def stop(self, why: str) -> None:
        with self.lock:
            if self.report.aborted is None:
                self.report.aborted = why
        self.abort.set()


def _short(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _feedback(kind: str, detail: str) -> list[str]:
    if kind == "length":
        return ["the reply was cut by the token limit: keep it shorter (2-4 concise evidence items)"]
    if kind == "refused":
        return ["the request was refused: write a neutral, fictional business example"]
    return [f"the reply was invalid: {detail}"]


def process_item(item: PlanItem, client, run: _Run) -> bool:
    """Write, grade and keep one planned example (see module doc). True when it was accepted."""
    s = run.s

    def check(draft: ExampleDraft) -> Example:
        if draft.expected_decision.value != item.decision:
            raise ValueError(f"expected_decision: is {draft.expected_decision.value}, but this example must be "
                             f"{item.decision}; rewrite it so the evidence supports {item.decision}")
        return draft_to_example(draft, id=item.id, domain=item.domain, level=item.level, topic=item.topic_title)

    feedback: list[str] = []
    for attempt in range(1, s.max_attempts + 1):
        if run.abort.is_set():
            return False
        run.attempt(item)
        messages = writer_messages(domain=item.domain, level=item.level, decision=item.decision,
                                   topic_title=item.topic_title, topic_description=item.topic_description,
                                   feedback=feedback)
        try:
            example = call_json(client, s.client, model=s.writer_model, messages=messages, schema=ExampleDraft,
                                check=check, max_tokens=s.writer_max_tokens, ledger=run.report.ledger)
        except ReplyError as e:
            run.reject(item, attempt, e.kind, [e.detail], raw=e.raw)
            feedback = _feedback(e.kind, e.detail)
            continue
        if not s.qa:
            run.accept(example, attempt)
            return True
        if run.abort.is_set():
            return False
        verdict, qa_error = None, None
        for _ in range(max(1, s.qa_attempts)):  # an unusable verdict is the judge's fault: ask it again first
            try:
                verdict = call_json(client, s.client, model=s.qa_model, messages=qa_messages(example),
                                    schema=QAVerdict, max_tokens=s.qa_max_tokens, ledger=run.report.ledger)
                break
            except ReplyError as e:
                qa_error = e
        if verdict is None:
            run.reject(item, attempt, "qa-error", [f"the QA reply was unusable ({qa_error.kind}: "
                                                   f"{qa_error.detail})"], raw=qa_error.raw, example=example)
            feedback = []
            continue
        accepted = qa_accepts(verdict, example)
        reasons = qa_reasons(verdict, example) if not accepted else []
        run.verdict(item, attempt, verdict, accepted, reasons)
        if accepted:
            run.accept(example, attempt)
            return True
        run.reject(item, attempt, "qa", reasons, example=example)
        feedback = reasons
    run.fail(item, feedback or ["attempts exhausted"])
    return False


def _guarded(item: PlanItem, client, run: _Run) -> bool:
    """process_item, with an API failure stopping the run from the worker itself (no new item starts after it)."""
    try:
        return process_item(item, client, run)
    except APIFailure as e:
        run.stop(str(e))
        return False


def generate_examples(settings: GenerateSettings, client=None, echo: Callable[[str], None] = print) -> GenerateReport:
    """Run (or resume) the plan; print and return the report. API failures stop the run, reported, not raised."""
    t0 = time.time()
    _, items, fingerprint = make_plan(settings)
    done = open_output(settings, items, fingerprint)
    todo = [it for it in items if it.id not in done]
    report = GenerateReport(planned=len(items), fingerprint=fingerprint, done_before=len(done),
                            ledger=Ledger(settings.prices))
    if done:
        echo(f"{settings.out}: resuming plan {fingerprint}: {len(done)} of {len(items)} done, {len(todo)} to go")
    ledger_file = side_path(settings.out, "ledger.json")
    earlier = _load_ledger(ledger_file, settings.prices)

    def save_ledger() -> Ledger:  # earlier runs + this run, rewritten as items finish (a kill loses little)
        total = Ledger(settings.prices)
        total.merge(earlier)
        total.merge(report.ledger)
        total.save(ledger_file)
        return total

    if todo:
        client = client or make_client(settings.client)
        secret = client.api_key if isinstance(client.api_key, str) else None
        run = _Run(settings, report, secret)
        bar = tqdm(total=len(todo), desc="examples", unit="ex", disable=not settings.progress)
        pool = ThreadPoolExecutor(max_workers=max(1, settings.concurrency))
        try:
            futures = {pool.submit(_guarded, it, client, run): it for it in todo}
            for fut in as_completed(futures):
                fut.result()
                save_ledger()
                bar.update(1)
                bar.set_postfix(accepted=report.accepted, failed=len(report.failed))
        except KeyboardInterrupt:
            run.stop("interrupted")
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            bar.close()
    report.elapsed_s = time.time() - t0
    report.cumulative = save_ledger()
    tmp = side_path(settings.out, "report.json.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=1, ensure_ascii=False) + "\n")
    tmp.replace(side_path(settings.out, "report.json"))
    echo(format_report(report, settings))
    return report


def _load_ledger(path: Path, prices: dict) -> Ledger:
    """The ledger of earlier runs of this plan (empty when missing; a damaged file restarts the count)."""
    if path.exists():
        try:
            return Ledger.from_json(json.loads(path.read_text()), prices)
        except (ValueError, TypeError, AttributeError):
            pass
    return Ledger(prices)


def format_report(report: GenerateReport, settings: GenerateSettings) -> str:
    """What a person reads at the end of a run: progress, rejections by domain × level, hot cells, the ledger."""
    have = report.done_before + report.accepted
    first = f", {report.accepted_first_try} at the first attempt" if report.accepted else ""
    lines = [f"{settings.out}: {have} of {report.planned} planned examples (plan {report.fingerprint}; "
             f"{report.done_before} from earlier runs, {report.accepted} accepted now{first}) "
             f"in {report.elapsed_s:.1f}s"]
    n_att, n_rej = sum(report.attempts.values()), sum(report.rejects.values())
    if n_att:
        kinds = ", ".join(f"{k} {v}" for k, v in report.rejects_by_kind.most_common()) or "none"
        lines.append(f"writer attempts {n_att}, rejected {n_rej} ({kinds})")
    if n_rej:
        domains = sorted({d for d, _ in report.attempts})
        levels = sorted({lv for _, lv in report.attempts})
        lines += ["", "rejected / attempts by domain × level:",
                  "| domain \\ level | " + " | ".join(str(lv) for lv in levels) + " |",
                  "|---" * (len(levels) + 1) + "|"]
        for d in domains:
            lines.append(f"| {d} | " + " | ".join(
                f"{report.rejects[(d, lv)]}/{report.attempts[(d, lv)]}" if report.attempts[(d, lv)] else "-"
                for lv in levels) + " |")
        hot = report.hot_cells()
        if hot:
            lines += ["", f"cells that fail most (≥ {HOT_CELL_RATE:.0%} of attempts rejected):"]
            for (d, lv), r, a in hot[:10]:
                top = report.reasons.get((d, lv), Counter()).most_common(2)
                why = "; ".join(f"{txt} (×{c})" for txt, c in top)
                lines.append(f"  {d} level {lv}: {r} of {a} attempts rejected — {why}")
    if report.failed:
        lines += ["", f"gave up after {settings.max_attempts} attempts on {len(report.failed)} example(s):"]
        for i, cell, reasons in report.failed[:10]:
            lines.append(f"  {i} ({cell}): {_short('; '.join(reasons), 200)}")
        if len(report.failed) > 10:
            lines.append(f"  … and {len(report.failed) - 10} more (see {side_path(settings.out, 'report.json')})")
    if report.aborted:
        lines += ["", f"stopped early: {report.aborted}"]
    lines += ["", report.ledger.format("token ledger (this run)")]
    if report.done_before and report.cumulative is not None:
        total = report.cumulative.total_cost()
        lines.append(f"  all runs of this plan: {'?' if total is None else f'${total:.4f}'}")
    if not report.complete:
        lines += ["", f"incomplete: {report.missing} of {report.planned} planned examples are missing; "
                      "run the same command again to retry them"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- dry run


def approx_tokens(text: str) -> int:
    """Rough token count: ceil(characters / 4) (English text, GPT tokenisers)."""
    return math.ceil(len(text) / 4)


def estimate_cost(items: list[PlanItem], settings: GenerateSettings) -> Ledger:
    """Expected tokens and cost as a Ledger. Per item, calls = 1 + est_reject_rate for the writer and the judge;

        writer prompt = tokens(messages + schema);  writer completion = est_writer_completion_tokens
        QA prompt     = tokens(QA messages for a typical example + schema);  QA completion = est_qa_completion_tokens
    """
    calls = 1 + settings.est_reject_rate
    ledger = Ledger(settings.prices)
    writer = ledger.usage.setdefault(settings.writer_model, ModelUsage())
    sample = Example.model_validate({**SAMPLES[ExampleDraft], "id": "x", "metadata": {
        "domain": "finance", "difficulty_level": 2, "topic": "t"}})
    sample_chars = len(sample.to_json()) * 2  # generated examples run longer than the sample
    for it in items:
        msgs = writer_messages(domain=it.domain, level=it.level, decision=it.decision, topic_title=it.topic_title,
                               topic_description=it.topic_description)
        prompt = approx_tokens("".join(m["content"] for m in msgs) + schema_instructions(ExampleDraft))
        writer.requests += calls
        writer.prompt_tokens += round(prompt * calls)
        writer.completion_tokens += round(settings.est_writer_completion_tokens * calls)
    if settings.qa:
        qa = ledger.usage.setdefault(settings.qa_model, ModelUsage())
        qa_prompt = approx_tokens("".join(m["content"] for m in qa_messages(sample)) + schema_instructions(QAVerdict))
        qa_prompt += approx_tokens("x" * sample_chars) - approx_tokens(sample.to_json())
        qa.requests += len(items) * calls
        qa.prompt_tokens += round(qa_prompt * len(items) * calls)
        qa.completion_tokens += round(settings.est_qa_completion_tokens * len(items) * calls)
    for u in ledger.usage.values():
        u.requests = round(u.requests)
    return ledger


def dry_run(settings: GenerateSettings, echo: Callable[[str], None] = print) -> tuple[list[PlanItem], Ledger]:
    """Print the plan and the estimated token cost; call nothing, write nothing."""
    _, items, fingerprint = make_plan(settings)
    echo(format_plan(items))
    echo(f"fingerprint: {fingerprint}")
    plan_file = side_path(settings.out, "plan.json")
    if plan_file.exists():
        try:
            same = json.loads(plan_file.read_text()).get("fingerprint") == fingerprint
        except ValueError:
            same = False
        if same and settings.out.exists():
            done = read_done(settings.out, items)
            echo(f"{settings.out}: {len(done)} of {len(items)} already done (a run would resume)")
        elif not same:
            echo(f"{settings.out}: holds a different plan (a run would refuse it without --force)")
    est = estimate_cost(items, settings)
    echo("")
    echo(est.format(f"estimated tokens and cost (assumes {settings.est_reject_rate:.0%} regenerated, "
                    f"{settings.est_writer_completion_tokens} completion tokens per writer call incl. reasoning)"))
    return items, est
