"""Dataset tools: JSONL I/O with line-numbered errors, validation, stats, stratified split, procedural examples."""

from mlxhv.data.io import (
    DataError,
    LineError,
    OutputExists,
    append_jsonl,
    iter_jsonl,
    load_examples,
    load_records,
    read_records,
    repair_tail,
    write_jsonl,
)
from mlxhv.data.split import drop_overlap, group_split, stratified_split
from mlxhv.data.stats import balance_targets, compute_stats, format_stats
from mlxhv.data.synth import parse_decision_weights, rule_label, synth_examples
from mlxhv.data.validate import validate_file, validate_files

__all__ = [
    "DataError", "LineError", "OutputExists", "append_jsonl", "iter_jsonl", "load_examples", "load_records",
    "read_records", "repair_tail", "write_jsonl", "stratified_split", "group_split", "drop_overlap", "balance_targets",
    "compute_stats", "format_stats", "parse_decision_weights", "rule_label", "synth_examples", "validate_file",
    "validate_files",
]
