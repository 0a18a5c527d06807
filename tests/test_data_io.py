import json
import os

import pytest

from mlxhv.data import DataError, append_jsonl, load_examples, read_records, repair_tail, synth_examples, write_jsonl
from mlxhv.data.io import OutputExists, write_json_atomic
from mlxhv.data.validate import validate_file
from mlxhv.schema import Example


def good_lines(n=3):
    return [e.to_json() for e in synth_examples(n, seed=3)]


def test_planted_faults_each_reported_with_line(tmp_path):
    lines = good_lines(4)
    bad = json.loads(lines[1])
    bad["evidence"][0]["relevance"] = 1.5
    missing = json.loads(lines[2])
    del missing["hypothesis"]
    wrong_enum = json.loads(lines[3])
    wrong_enum["expected_decision"] = "ACCEPTED"
    dup = json.loads(lines[0])
    content = [
        lines[0],                      # 1 ok
        json.dumps(bad),               # 2 relevance > 1
        "{not json",                   # 3 malformed
        json.dumps(missing),           # 4 missing field
        "",                            # 5 blank (ignored)
        json.dumps(wrong_enum),        # 6 wrong enum
        json.dumps(dup),               # 7 duplicate id
        "[1, 2]",                      # 8 not an object
    ]
    p = tmp_path / "bad.jsonl"
    data = ("\n".join(content) + "\n").encode() + b'{"id": "\xff\xfe"}\n'  # 9 invalid UTF-8
    p.write_bytes(data)
    recs, errors = validate_file(p)
    got = [(e.line, e.field) for e in errors]
    assert (2, "evidence[0].relevance") in got
    assert (3, "") in got and "malformed JSON" in str(errors[got.index((3, ""))])
    assert (4, "hypothesis") in got
    assert (6, "expected_decision") in got
    assert (7, "id") in got and "first on line 1" in str(errors[got.index((7, "id"))])
    assert (8, "") in got
    assert (9, "") in got and "UTF-8" in str(errors[got.index((9, ""))])
    assert [r.id for r in recs] == [json.loads(lines[0])["id"]]
    assert str(errors[0]).startswith(f"{p}:2: evidence[0].relevance:")


def test_empty_and_directory_and_missing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    _, errs = read_records(empty, Example)
    assert len(errs) == 1 and "empty file" in str(errs[0])
    _, errs = read_records(tmp_path, Example)
    assert "is a directory" in str(errs[0])
    _, errs = read_records(tmp_path / "nope.jsonl", Example)
    assert "no such file" in str(errs[0])
    with pytest.raises(DataError) as info:
        load_examples(empty)
    assert "empty.jsonl" in str(info.value)


def test_write_refuses_overwrite_and_is_atomic(tmp_path):
    p = tmp_path / "out.jsonl"
    exs = synth_examples(5, seed=1)
    assert write_jsonl(p, exs) == 5
    with pytest.raises(OutputExists):
        write_jsonl(p, exs[:1])
    assert len(load_examples(p)) == 5
    write_jsonl(p, exs[:2], force=True)
    assert len(load_examples(p)) == 2
    assert [f.name for f in tmp_path.iterdir()] == ["out.jsonl"]  # no temp files left


def test_append_and_repair_tail(tmp_path):
    p = tmp_path / "a.jsonl"
    exs = synth_examples(3, seed=2)
    append_jsonl(p, exs[:2])
    with open(p, "ab") as f:  # a killed writer left half a line
        f.write(exs[2].to_json().encode()[:40])
    assert repair_tail(p) == 40
    assert repair_tail(p) == 0
    append_jsonl(p, exs[2:])
    assert [e.id for e in load_examples(p)] == [e.id for e in exs]
    assert p.read_bytes().endswith(b"\n")
    assert os.path.getsize(p) == sum(len(e.to_json().encode()) + 1 for e in exs)


def test_write_json_atomic_replaces_the_file_whole(tmp_path):
    p = tmp_path / "sub" / "m.json"
    obj = {"model": "smöl", "n": 3, "ece": 0.125, "by": {"a": [1, 2]}}
    write_json_atomic(p, obj)
    assert json.loads(p.read_text(encoding="utf-8")) == obj and p.read_text(encoding="utf-8").endswith("}\n")
    assert "smöl" in p.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    write_json_atomic(p, [1], indent=1)
    assert p.read_text() == "[\n 1\n]\n"
    assert [f.name for f in p.parent.iterdir()] == ["m.json"]  # no temp files left


def test_write_json_atomic_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {})
        write_jsonl(tmp_path / "b.jsonl", synth_examples(1, seed=0))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # as open(..., "w") would make it
    assert (tmp_path / "b.jsonl").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("crash", ["replace", "fsync", "serialise"])
def test_write_json_atomic_crash_leaves_the_old_file(tmp_path, monkeypatch, crash):
    p = tmp_path / "ledger.json"
    p.write_text('{"old": true}\n')
    before = p.read_bytes()
    obj = {"new": list(range(1000))}

    def boom(*args):
        raise OSError("simulated crash")

    if crash == "replace":
        monkeypatch.setattr(os, "replace", boom)  # killed after the temp file was written, before the rename
    elif crash == "fsync":
        monkeypatch.setattr(os, "fsync", boom)  # killed mid-write
    else:
        obj = {"new": object()}  # not JSON: fails before anything is written
    with pytest.raises((OSError, TypeError)):
        write_json_atomic(p, obj)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["ledger.json"]  # the temp file was removed
