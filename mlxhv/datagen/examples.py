"""`mlxhv data generate`: planned examples, written by one model, graded by another, resumable.

The job, by module: `settings` (DatagenSettings, file names), `resume` (the plan file, what OUT already holds),
`worker` (one planned item: write, grade, keep or reject), `pool` (the threads, the stop event, the failure
policy), `report` (counts and their text), `estimate` (--dry-run). This module runs them in order.

Files, next to OUT (e.g. examples.jsonl):
- OUT                  accepted examples, appended one whole line at a time as they come;
- OUT.plan.json        the plan and its fingerprint, written before the first call;
- OUT.qa.jsonl         every QA verdict (accepted or not);
- OUT.rejects.jsonl    every failed attempt: kind, reasons, the raw reply or the rejected example;
- OUT.ledger.json      tokens and cost per model, summed over all runs of this plan (rewritten after each item);
- OUT.report.json      this run's counts (rejections by domain × level and by kind, failed ids).

An API failure stops the run (`pool.run_pool`): it is reported (`DatagenReport.aborted`), not raised, and what
was accepted stays in OUT. Ctrl-C stops it within `pool.DEFAULT_GRACE_S` seconds: the report is saved and
printed, then KeyboardInterrupt is raised again. Either way, the same command resumes.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from tqdm import tqdm

from mlxhv.data.io import write_json_atomic
from mlxhv.datagen.client import make_client
from mlxhv.datagen.ledger import Ledger
from mlxhv.datagen.pool import run_job
from mlxhv.datagen.run_report import DatagenReport, format_report
from mlxhv.datagen.resume import make_plan, open_output
from mlxhv.datagen.job import DatagenSettings, side_path
from mlxhv.datagen.worker import Recorder, process_item


def generate_examples(settings: DatagenSettings, client=None, echo: Callable[[str], None] = print,
                      stop: Optional[threading.Event] = None) -> DatagenReport:
    """Run (or resume) the plan; print and return the report (see module doc for failures and Ctrl-C).

    `stop`, when given, lets another thread end the run early: items running finish, no new one starts."""
    t0 = time.time()
    _, items, fingerprint = make_plan(settings)
    done = open_output(settings, items, fingerprint)
    todo = [it for it in items if it.id not in done]
    report = DatagenReport(planned=len(items), fingerprint=fingerprint, done_before=len(done),
                            ledger=Ledger(settings.prices))
    if done:
        echo(f"{settings.out}: resuming plan {fingerprint}: {len(done)} of {len(items)} done, {len(todo)} to go")
    ledger_file = side_path(settings.out, "ledger.json")
    earlier = Ledger.load(ledger_file, settings.prices)

    def save_ledger() -> Ledger:  # earlier runs + this run, rewritten as items finish (a kill loses little)
        total = Ledger(settings.prices)
        total.merge(earlier)
        total.merge(report.ledger)
        total.save(ledger_file)
        return total

    def finish() -> None:
        report.elapsed_s = time.time() - t0
        report.cumulative = save_ledger()
        write_json_atomic(side_path(settings.out, "report.json"), report.to_json(), indent=1)
        echo(format_report(report, settings))

    if not todo:
        finish()
        return report
    client = client or make_client(settings.client)
    secret = client.api_key if isinstance(client.api_key, str) else None
    rec = Recorder(settings, report, secret, stop or threading.Event())

    def done_one(item, accepted: bool) -> None:
        save_ledger()
        bar.update(1)
        bar.set_postfix(accepted=report.accepted, failed=len(report.failed))

    with tqdm(total=len(todo), desc="examples", unit="ex", disable=not settings.progress) as bar:
        try:
            report.aborted, interrupted = run_job(todo, lambda it: process_item(it, client, rec),
                                                  settings.concurrency, rec.stop, on_done=done_one)
        finally:
            rec.close()  # abandoned workers write nothing more: the report matches the files
    if report.aborted is None and rec.stop.is_set() and not report.complete:
        report.aborted = "stopped by the caller"
    finish()
    if interrupted:
        raise KeyboardInterrupt
    return report
