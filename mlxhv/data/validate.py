"""Validate example files: every bad line is reported as `file:line: field.path: message`."""

from __future__ import annotations

from mlxhv.data.io import LineError, PathLike, read_records
from mlxhv.schema import Example, Topic


def validate_file(path: PathLike, kind: str = "auto") -> tuple[list, list[LineError]]:
    """Return (records, errors) for an examples or topics file. `kind`: auto | example | topic.

    `auto` picks topics for files whose first record has a `title` field and no `hypothesis`.
    """
    model = {"example": Example, "topic": Topic}.get(kind)
    if model is None:
        model = Example
        from mlxhv.data.io import iter_jsonl

        for _, obj in iter_jsonl(path):
            if isinstance(obj, dict) and "title" in obj and "hypothesis" not in obj:
                model = Topic
            break
    return read_records(path, model, unique_ids=True)


def validate_files(paths: list[PathLike], kind: str = "auto") -> tuple[dict, list[LineError]]:
    """Validate several files; ids must be unique within each file. Returns ({path: records}, all errors)."""
    out, errors = {}, []
    for p in paths:
        recs, errs = validate_file(p, kind)
        out[str(p)] = recs
        errors.extend(errs)
    return out, errors
