"""`mlxhv data topics`: distinct topics spread evenly over the domains.

Quota per domain: `apportion(n, equal weights)` (60 over 5 domains → 12 each). Each domain asks for its missing
topics plus a margin (`need + max(2, need // 4)`), keeps the first ones that are not duplicates, and asks again
(with the kept titles to avoid) until the quota is met or `max_rounds` requests were made.

Duplicate test (`is_duplicate`): titles are normalised — lower case, words only, stop words and a plural "s"
dropped — and two titles are the same topic when the normalised word sets are equal or their Jaccard overlap is
≥ `DUPLICATE_JACCARD` (0.75). The test spans domains: a topic is kept in the first domain that proposed it.

Domains run in `pool.run_job`: an API failure or Ctrl-C stops the job, the topics kept so far are written all the
same when there are any (the report says why it stopped, `aborted`); after Ctrl-C KeyboardInterrupt is raised
again.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from mlxhv.data.io import OutputExists, write_jsonl
from mlxhv.datagen.client import APIFailure, ClientSettings, ReplyError, call_json, make_client
from mlxhv.datagen.pool import run_job
from mlxhv.datagen.drafts import TopicList
from mlxhv.datagen.ledger import DEFAULT_PRICES, Ledger
from mlxhv.datagen.plan import apportion, domain_abbreviations
from mlxhv.datagen.instructions import topics_messages
from mlxhv.schema import DOMAINS, Topic

DEFAULT_WRITER_MODEL = "o1"
DUPLICATE_JACCARD = 0.75
_STOP = frozenset("a an and as at by for from in into of on or the to vs versus with their its".split())


@dataclass
class TopicsSettings:
    """Settings of one `topics` job."""

    out: Path
    n: int = 60
    domains: tuple[str, ...] = DOMAINS
    model: str = DEFAULT_WRITER_MODEL
    max_tokens: Optional[int] = 16000  # o1-class reasoning tokens count against this
    max_rounds: int = 4  # requests per domain before giving up on its quota
    concurrency: int = 4
    force: bool = False
    progress: bool = True
    prices: dict = field(default_factory=lambda: dict(DEFAULT_PRICES))
    client: ClientSettings = field(default_factory=ClientSettings)


@dataclass
class TopicsReport:
    topics: list[Topic]
    quota: dict[str, int]
    problems: list[str]
    ledger: Ledger
    aborted: Optional[str] = None  # why the job stopped before every domain was done (an API failure, Ctrl-C)

    @property
    def shortfall(self) -> dict[str, int]:
        have = {d: sum(t.domain == d for t in self.topics) for d in self.quota}
        return {d: q - have[d] for d, q in self.quota.items() if have[d] < q}


def normalize_title(title: str) -> frozenset[str]:
    """The word set a title is compared by: lower case, stop words dropped, plurals made singular (-ies, -s)."""
    return frozenset(_singular(w) for w in re.findall(r"[a-z0-9]+", title.lower()) if w not in _STOP)


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def is_duplicate(title: str, existing: list[frozenset[str]]) -> bool:
    """True when `title` equals, or overlaps by Jaccard ≥ DUPLICATE_JACCARD with, a title already kept."""
    words = normalize_title(title)
    if not words:
        return True
    for other in existing:
        if words == other or len(words & other) / len(words | other) >= DUPLICATE_JACCARD:
            return True
    return False


def generate_topics(settings: TopicsSettings, client=None, echo: Callable[[str], None] = print) -> TopicsReport:
    """Ask for topics domain by domain, de-duplicate, and write `settings.out` (refused if it exists, unless force)."""
    if settings.n < len(settings.domains):
        raise ValueError(f"-n {settings.n} is fewer than the {len(settings.domains)} domains")
    if settings.out.exists() and not settings.force:
        raise OutputExists(f"{settings.out}: already exists (use --force to overwrite)")
    client = client or make_client(settings.client)
    ledger = Ledger(settings.prices)
    quota = apportion(settings.n, {d: 1.0 for d in settings.domains})
    kept: dict[str, list[tuple[str, str]]] = {d: [] for d in settings.domains}
    seen: list[frozenset[str]] = []
    problems: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def one_domain(domain: str) -> None:
        for _ in range(settings.max_rounds):
            if stop.is_set():
                return
            with lock:
                need = quota[domain] - len(kept[domain])
                avoid = [title for title, _ in kept[domain]]
            if need <= 0:
                return
            k = need + max(2, need // 4)
            try:
                reply = call_json(client, settings.client, model=settings.model, schema=TopicList,
                                  messages=topics_messages(domain=domain, k=k, avoid=avoid),
                                  max_tokens=settings.max_tokens, ledger=ledger)
            except ReplyError as e:
                with lock:
                    problems.append(f"{domain}: {e.kind}: {e.detail}")
                continue
            with lock:
                dups = 0
                for t in reply.topics:
                    title = " ".join(t.title.split())
                    if len(kept[domain]) >= quota[domain]:
                        break
                    if is_duplicate(title, seen):
                        dups += 1
                        continue
                    seen.append(normalize_title(title))
                    kept[domain].append((title, " ".join(t.description.split())))
                if dups:
                    problems.append(f"{domain}: dropped {dups} duplicate topic(s)")

    with tqdm(total=len(settings.domains), desc="topics", unit="domain", disable=not settings.progress) as bar:
        aborted, interrupted = run_job(settings.domains, one_domain, settings.concurrency, stop,
                                       on_done=lambda domain, _: bar.update(1))
    abbr = domain_abbreviations(settings.domains)
    with lock:  # abandoned workers (Ctrl-C) may still add to `kept`: write a snapshot
        topics = [Topic(id=f"{abbr[d]}-t{i:03d}", domain=d, title=title, description=desc)
                  for d in settings.domains for i, (title, desc) in enumerate(kept[d], start=1)]
        notes = list(problems)
    if topics or aborted is None:  # a job stopped before it kept anything leaves no file to --force away
        write_jsonl(settings.out, topics, force=settings.force)
    report = TopicsReport(topics=topics, quota=quota, problems=notes, ledger=ledger, aborted=aborted)
    echo(format_topics_report(report, settings.out))
    if interrupted:
        raise KeyboardInterrupt
    return report


def format_topics_report(report: TopicsReport, out: Path) -> str:
    lines = [f"{out}: {len(report.topics)} topics"]
    for d, q in report.quota.items():
        have = sum(t.domain == d for t in report.topics)
        lines.append(f"  {d:<12} {have:3d} / {q}" + ("" if have >= q else "  SHORT"))
    lines += [f"  note: {p}" for p in report.problems[:20]]
    if report.aborted:
        lines.append(f"stopped early: {report.aborted}")
    lines.append(report.ledger.format())
    return "\n".join(lines)


__all__ = ["TopicsSettings", "TopicsReport", "generate_topics", "is_duplicate", "normalize_title", "APIFailure"]
