"""`mlxhv data generate --dry-run`: the plan and its expected token cost, with no call made and no file written."""

from __future__ import annotations

import math
from typing import Callable

from mlxhv.data.io import DataError
from mlxhv.datagen.client import schema_instructions
from mlxhv.datagen.drafts import SAMPLES, ExampleDraft, QAVerdict
from mlxhv.datagen.ledger import Ledger, ModelUsage
from mlxhv.datagen.plan import PlanItem, format_plan
from mlxhv.datagen.instructions import qa_messages, writer_messages
from mlxhv.datagen.resume import check_output, make_plan, read_done, read_stored_plan
from mlxhv.datagen.job import DatagenSettings, side_path
from mlxhv.schema import Example


def approx_tokens(text: str) -> int:
    """Rough token count: ceil(characters / 4) (English text, GPT tokenisers)."""
    return math.ceil(len(text) / 4)


def estimate_cost(items: list[PlanItem], settings: DatagenSettings) -> Ledger:
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


def dry_run(settings: DatagenSettings, echo: Callable[[str], None] = print) -> tuple[list[PlanItem], Ledger]:
    """Print the plan and the estimated token cost; call nothing, write nothing."""
    _, items, fingerprint = make_plan(settings)
    echo(format_plan(items))
    echo(f"fingerprint: {fingerprint}")
    try:
        stored = read_stored_plan(side_path(settings.out, "plan.json"))
    except DataError:
        stored = {}  # a damaged plan file: a run would refuse it like a different plan
    if stored is not None:
        same = stored.get("fingerprint") == fingerprint
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


def estimate_remaining(settings: DatagenSettings) -> tuple[int, Ledger]:
    """(examples still to write, their expected tokens and cost): the plan less what OUT already holds. Refuses an
    OUT the run would refuse (`resume.check_output`). Calls nothing, writes nothing."""
    _, items, fingerprint = make_plan(settings)
    stored = check_output(settings, fingerprint)
    done = read_done(settings.out, items) if stored is not None and settings.out.exists() else {}
    todo = [it for it in items if it.id not in done]
    return len(todo), estimate_cost(todo, settings)
