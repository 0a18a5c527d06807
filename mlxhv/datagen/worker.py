"""One planned example: written by one model, graded by another, kept or rejected (`process_item`).

Up to `max_attempts` times:

1. the writer model is asked for an `ExampleDraft` in the item's cell (domain, level, decision, topic), with the
   reasons earlier attempts failed; the draft becomes an `Example` (schema rules) and its decision must be the
   planned one — a violation is re-asked with the errors (`client.call_json`), a reply cut by length, refused, or
   still invalid counts as a failed attempt (kind `length` / `refused` / `invalid`);
2. the QA model grades it (`QAVerdict`: label right for the evidence, difficulty as the level asks, confidence
   consistent, evidence realistic); accepted → the example is appended to OUT, else the attempt failed (kind
   `qa`) and the judge's reasons go into the next prompt; a QA reply still unusable after `qa_attempts` requests
   discards the example too (kind `qa-error`).

`Recorder` is what the workers share: the side files, the report's counters and the stop event. Every write is
one whole JSONL line under one lock, as it happens; after `close()` nothing more is written, so the saved report
matches the files even when abandoned workers (Ctrl-C) get a late reply.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Optional

from mlxhv.data.io import append_jsonl
from mlxhv.datagen.client import ReplyError, call_json, redact
from mlxhv.datagen.drafts import ExampleDraft, QAVerdict, draft_to_example, qa_accepts, qa_reasons
from mlxhv.datagen.plan import PlanItem
from mlxhv.datagen.instructions import qa_messages, writer_messages
from mlxhv.datagen.run_report import DatagenReport, short
from mlxhv.datagen.job import DatagenSettings, side_path
from mlxhv.schema import Example


class Recorder:
    """Shared state of one run: files, counters, the stop event (all writes under one lock)."""

    def __init__(self, settings: DatagenSettings, report: DatagenReport, secret: Optional[str],
                 stop: threading.Event):
        self.s, self.report, self.secret, self.stop = settings, report, secret, stop
        self.lock = threading.Lock()
        self.closed = False
        self.qa_file = side_path(settings.out, "qa.jsonl")
        self.rejects_file = side_path(settings.out, "rejects.jsonl")

    def close(self) -> None:
        """Write nothing more (the run is over and its report is being saved)."""
        with self.lock:
            self.closed = True

    def attempt(self, item: PlanItem) -> None:
        with self.lock:
            self.report.attempts[(item.domain, item.level)] += 1

    def verdict(self, item: PlanItem, attempt: int, verdict: QAVerdict, accepted: bool, reasons: list[str]) -> None:
        rec = {"id": item.id, "attempt": attempt, "accepted": accepted, "model": self.s.qa_model,
               "reasons": [] if accepted else reasons, "verdict": verdict.model_dump(mode="json")}
        with self.lock:
            if not self.closed:
                append_jsonl(self.qa_file, [rec])

    def accept(self, example: Example, attempt: int) -> None:
        with self.lock:
            if not self.closed:
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
            if self.closed:
                return
            append_jsonl(self.rejects_file, [rec])
            self.report.rejects[cell] += 1
            self.report.rejects_by_kind[kind] += 1
            counter = self.report.reasons.setdefault(cell, Counter())
            for r in reasons:
                counter[short(f"{kind}: {r}")] += 1

    def fail(self, item: PlanItem, reasons: list[str]) -> None:
        with self.lock:
            if not self.closed:
                self.report.failed.append((item.id, f"{item.domain} L{item.level} {item.decision}", reasons))


def _feedback(kind: str, detail: str) -> list[str]:
    if kind == "length":
        return ["the reply was cut by the token limit: keep it shorter (2-4 concise evidence items)"]
    if kind == "refused":
        return ["the request was refused: write a neutral, fictional business example"]
    return [f"the reply was invalid: {detail}"]


def process_item(item: PlanItem, client, rec: Recorder) -> bool:
    """Write, grade and keep one planned example (see module doc). True when it was accepted.

    Returns False at once when `rec.stop` is set (checked before each API call); `APIFailure` propagates."""
    s = rec.s

    def check(draft: ExampleDraft) -> Example:
        if draft.expected_decision.value != item.decision:
            raise ValueError(f"expected_decision: is {draft.expected_decision.value}, but this example must be "
                             f"{item.decision}; rewrite it so the evidence supports {item.decision}")
        return draft_to_example(draft, id=item.id, domain=item.domain, level=item.level, topic=item.topic_title)

    feedback: list[str] = []
    for attempt in range(1, s.max_attempts + 1):
        if rec.stop.is_set():
            return False
        rec.attempt(item)
        messages = writer_messages(domain=item.domain, level=item.level, decision=item.decision,
                                   topic_title=item.topic_title, topic_description=item.topic_description,
                                   feedback=feedback)
        try:
            example = call_json(client, s.client, model=s.writer_model, messages=messages, schema=ExampleDraft,
                                check=check, max_tokens=s.writer_max_tokens, ledger=rec.report.ledger)
        except ReplyError as e:
            rec.reject(item, attempt, e.kind, [e.detail], raw=e.raw)
            feedback = _feedback(e.kind, e.detail)
            continue
        if not s.qa:
            rec.accept(example, attempt)
            return True
        if rec.stop.is_set():
            return False
        verdict, qa_error = None, None
        for _ in range(max(1, s.qa_attempts)):  # an unusable verdict is the judge's fault: ask it again first
            try:
                verdict = call_json(client, s.client, model=s.qa_model, messages=qa_messages(example),
                                    schema=QAVerdict, max_tokens=s.qa_max_tokens, ledger=rec.report.ledger)
                break
            except ReplyError as e:
                qa_error = e
        if verdict is None:
            rec.reject(item, attempt, "qa-error", [f"the QA reply was unusable ({qa_error.kind}: "
                                                   f"{qa_error.detail})"], raw=qa_error.raw, example=example)
            feedback = []
            continue
        accepted = qa_accepts(verdict, example)
        reasons = qa_reasons(verdict, example) if not accepted else []
        rec.verdict(item, attempt, verdict, accepted, reasons)
        if accepted:
            rec.accept(example, attempt)
            return True
        rec.reject(item, attempt, "qa", reasons, example=example)
        feedback = reasons
    rec.fail(item, feedback or ["attempts exhausted"])
    return False
