"""JSONL reading and writing with line-numbered errors.

- `iter_jsonl` streams `(line_no, obj)`; a bad line becomes a `LineError`, never an exception mid-file.
- `append_jsonl` writes each record as one whole line with a single `write` on an O_APPEND descriptor and fsyncs,
  so a killed run leaves at worst a missing line, never half of one; `repair_tail` cuts a partial last line that an
  older writer (or a full disk) left behind, before a run resumes by appending.
- `write_jsonl` writes a whole file atomically and refuses to overwrite unless `force`; `write_json_atomic` writes
  one JSON document the same way. Atomic here: a temp file in the same directory, fsync, `os.replace`, so a crash
  leaves the old file or the new one, never a mix; the temp file is removed when the write fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO, Union

from pydantic import BaseModel, ValidationError

from mlxhv.errors import DataError, OutputExists  # noqa: F401  (raised here, re-exported)
from mlxhv.paths import resolve_path

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class LineError:
    file: str
    line: int  # 1-based; 0 when the error is about the whole file
    field: str  # dotted path such as "evidence[0].relevance", or "" when not about a field
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def field_path(loc: tuple) -> str:
    """('evidence', 0, 'relevance') -> 'evidence[0].relevance'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def pydantic_errors(exc: ValidationError, file: str, line: int) -> list[LineError]:
    errors = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        errors.append(LineError(file, line, field_path(loc), msg))
    return errors


def _check_is_file(path: Path) -> LineError | None:
    if not path.exists():
        return LineError(str(path), 0, "", "no such file")
    if path.is_dir():
        return LineError(str(path), 0, "", "is a directory, expected a .jsonl file")
    return None


def iter_jsonl(path: PathLike) -> Iterator[tuple[int, Any | LineError]]:
    """Yield (line_no, parsed object) or (line_no, LineError) for each non-blank line."""
    path = Path(path)
    problem = _check_is_file(path)
    if problem:
        yield 0, problem
        return
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, LineError(str(path), line_no, "", f"not valid UTF-8 (byte {e.start})")
                continue
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as e:
                yield line_no, LineError(str(path), line_no, "", f"malformed JSON: {e.msg} (column {e.colno})")


def read_records(path: PathLike, model: type[BaseModel], unique_ids: bool = True, allow_empty: bool = False,
                 check: Optional[Callable[[Any], Optional[tuple[str, str]]]] = None) -> tuple[list, list[LineError]]:
    """Parse every line of `path` as `model`; return (records, errors) — all errors, not just the first.

    `check(record)` may return (field, message) to reject a valid record with an error at its line."""
    records, errors, seen = [], [], {}
    path_s = str(path)
    n_lines = 0
    for line_no, obj in iter_jsonl(path):
        if isinstance(obj, LineError):
            errors.append(obj)
            continue
        n_lines += 1
        if not isinstance(obj, dict):
            errors.append(LineError(path_s, line_no, "", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        try:
            rec = model.model_validate(obj)
        except ValidationError as e:
            errors.extend(pydantic_errors(e, path_s, line_no))
            continue
        rid = getattr(rec, "id", None)
        if unique_ids and rid is not None:
            if rid in seen:
                errors.append(LineError(path_s, line_no, "id", f"duplicate id {rid!r} (first on line {seen[rid]})"))
                continue
            seen[rid] = line_no
        problem = check(rec) if check is not None else None
        if problem is not None:
            errors.append(LineError(path_s, line_no, *problem))
            continue
        records.append(rec)
    if n_lines == 0 and not errors and not allow_empty:
        errors.append(LineError(path_s, 0, "", "empty file: no records"))
    return records, errors


def load_records(path: PathLike, model: type[BaseModel], unique_ids: bool = True) -> list:
    """Like read_records but raises DataError listing every problem."""
    records, errors = read_records(path, model, unique_ids)
    if errors:
        raise DataError(errors)
    return records


def load_examples(path: PathLike) -> list:
    """The Examples of a JSONL file; `path` may name a shipped dataset (`data/holdout.jsonl`) from any folder."""
    from mlxhv.schema import Example

    return load_records(resolve_path(path), Example)


def read_predictions(path: PathLike) -> list:
    """Predictions in file order, first occurrence of each id kept; a bad line is a DataError naming it."""
    from mlxhv.schema import Prediction

    records, errors = read_records(path, Prediction, unique_ids=False, allow_empty=True)
    if errors:
        raise DataError(errors)
    preds, seen = [], set()
    for p in records:
        if p.id not in seen:
            seen.add(p.id)
            preds.append(p)
    return preds


def _dump(rec: Any) -> str:
    if isinstance(rec, BaseModel):
        rec = rec.model_dump(mode="json")
    line = json.dumps(rec, ensure_ascii=False)
    assert "\n" not in line
    return line + "\n"


def repair_tail(path: PathLike) -> int:
    """Cut a trailing partial line (no final newline) left by a killed writer. Returns bytes removed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        return len(data) - keep


def append_jsonl(path: PathLike, records: Iterable[Any], fsync: bool = True) -> int:
    """Append records, one whole line per write(2) call. Returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    n = 0
    try:
        for rec in records:
            data = _dump(rec).encode("utf-8")
            written = os.write(fd, data)
            if written != len(data):  # a short write (disk full): undo it so no half line remains
                os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_END) - written)
                raise OSError(f"{path}: short write ({written} of {len(data)} bytes)")
            n += 1
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return n


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[TextIO]:
    """A text file that replaces `path` when the block ends without error (see module doc), else is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for a plain open()
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: PathLike, records: Iterable[Any], force: bool = False) -> int:
    """Write a whole file atomically; refuse to replace an existing file unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExists(f"{path}: already exists (use --force to overwrite)")
    n = 0
    with _atomic_file(path) as f:
        for rec in records:
            f.write(_dump(rec))
            n += 1
    return n


def write_json_atomic(path: PathLike, obj: Any, *, indent: int = 2) -> None:
    """Write `obj` as one JSON document (UTF-8, trailing newline) atomically, replacing any file at `path`."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"  # serialise first: a bad obj writes nothing
    with _atomic_file(Path(path)) as f:
        f.write(text)
