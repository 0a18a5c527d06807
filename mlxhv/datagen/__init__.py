"""Dataset generation through an OpenAI-compatible API: topics, a balanced curriculum plan, a QA judge loop.

- `client`: the SDK wrapper (structured outputs or schema-in-prompt, retries, re-asks, key redaction);
- `instructions`: the messages sent to the writer and QA models (topics, examples, QA);
- `drafts`: the pydantic models the API fills, and their conversion to `mlxhv.schema.Example`;
- `plan`: the deterministic plan (domain × level × decision × topic per id) and its fingerprint;
- `topics` / `examples`: the two jobs behind `mlxhv data topics` and `mlxhv data generate`; `examples` runs
  `settings`, `resume` (plan file, what OUT holds), `worker` (one item), `report` and `estimate` (--dry-run);
- `pool`: the one worker pool both jobs use (`run_pool`), with its failure policy;
- `ledger`: tokens and cost per model.
"""

from mlxhv.datagen.client import APIFailure, ClientSettings, DatagenError, ReplyError, call_json, make_client
from mlxhv.datagen.estimate import dry_run, estimate_cost
from mlxhv.datagen.examples import generate_examples
from mlxhv.datagen.ledger import DEFAULT_PRICES, Ledger
from mlxhv.datagen.plan import PlanItem, format_plan, plan_examples, plan_fingerprint
from mlxhv.datagen.pool import run_pool
from mlxhv.datagen.run_report import DatagenReport
from mlxhv.datagen.job import DatagenSettings
from mlxhv.datagen.topics import TopicsSettings, generate_topics

__all__ = [
    "APIFailure", "ClientSettings", "DatagenError", "ReplyError", "call_json", "make_client", "DatagenReport",
    "DatagenSettings", "dry_run", "estimate_cost", "generate_examples", "DEFAULT_PRICES", "Ledger", "PlanItem",
    "format_plan", "plan_examples", "plan_fingerprint", "run_pool", "TopicsSettings", "generate_topics",
]
