import csv
import json

import pytest
from click.testing import CliRunner

from mlxhv.data import DataError, group_split, load_examples
from mlxhv.data.importers import ImportSpec, healthver_spec, import_claims, parse_label_map
from mlxhv.errors import SettingsError

HEADER = ["id", "evidence", "claim", "label", "topic_ip", "question"]
ROWS = [
    ["7", "Masks cut transmission by 50 %.", "Masks reduce spread", "Supports", "3", "q"],
    ["8", "No effect of vitamin C was found\nin the trial.", "Vitamin C cures COVID-19", "Refutes", "4", "q"],
    ["9", "The virus began in Wuhan.", "5G spreads the virus", "Neutral", "5", "q"],
    ["10", "Hand washing lowers risk.", "Washing hands helps", "Supports", "3", "q"],
]


def _csv(path, rows, header=HEADER):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_healthver_rows_become_examples(tmp_path):
    res = import_claims(_csv(tmp_path / "hv.csv", ROWS), healthver_spec())
    assert [e.id for e in res.examples] == ["healthver-7", "healthver-8", "healthver-10"]
    assert [e.expected_decision.value for e in res.examples] == ["VALIDATED", "REJECTED", "VALIDATED"]
    e = res.examples[1]
    assert e.hypothesis == "Vitamin C cures COVID-19"
    assert e.evidence[0].content == "No effect of vitamin C was found in the trial."  # whitespace folded
    assert (e.metadata.domain, e.metadata.topic, e.confidence) == ("health", "healthver-4", 0.9)
    assert res.dropped == {"Neutral": 1} and res.rows == 4
    mapped = import_claims(tmp_path / "hv.csv", healthver_spec(neutral="REJECTED"))
    assert [e.expected_decision.value for e in mapped.examples] == ["VALIDATED", "REJECTED", "REJECTED", "VALIDATED"]


def test_errors_name_file_line_and_field(tmp_path):
    rows = [ROWS[0], ["8", "x", "y", "Maybe", "4", "q"], ["9", "", "z", "Supports", "4", "q"]]
    with pytest.raises(DataError) as info:
        import_claims(_csv(tmp_path / "bad.csv", rows), healthver_spec())
    got = [(err.line, err.field, err.message) for err in info.value.errors]
    assert got[0][:2] == (3, "label") and "'Maybe'" in got[0][2]
    assert got[1] == (4, "evidence", "missing or empty")
    with pytest.raises(DataError, match="topic_ip: missing column"):
        import_claims(_csv(tmp_path / "nocol.csv", [r[:4] for r in ROWS], HEADER[:4]), healthver_spec())


def test_generic_jsonl_with_column_and_label_maps(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"text": "A works", "passage": "A worked in 3 trials", "verdict": "SUPPORT", "src": "trial"},
        {"text": "B works", "passage": "B failed", "verdict": "CONTRADICT"},
        {"text": "C works", "passage": "unrelated", "verdict": "NOINFO"}]) + "\n")
    spec = ImportSpec(name="sf", claim="text", evidence="passage", label="verdict", id=None, source="src",
                      labels=parse_label_map(["SUPPORT=VALIDATED", "CONTRADICT=rejected", "NOINFO=drop"]))
    res = import_claims(p, spec, "jsonl")
    assert [(e.id, e.expected_decision.value, e.evidence[0].source) for e in res.examples] == [
        ("sf-1", "VALIDATED", "trial"), ("sf-2", "REJECTED", "sf")]
    with pytest.raises(SettingsError, match="REFINED"):
        ImportSpec(labels={"x": "REFINED"})
    with pytest.raises(SettingsError, match="expected DATASET_LABEL"):
        parse_label_map(["SUPPORT"])


def test_cli_import_refused_leaves_no_output_and_split_by_group(tmp_path):
    from cli import main

    out = tmp_path / "out.jsonl"
    bad = _csv(tmp_path / "bad.csv", ROWS + [["11", "e", "c", "Unknown", "6", "q"]])
    r = CliRunner().invoke(main, ["data", "import", str(bad), "-o", str(out)])
    # the vitamin C row spans two lines of the file, so the bad row starts on line 7
    assert r.exit_code == 2 and "bad.csv:7: label: unknown label 'Unknown'" in r.output and not out.exists()
    r = CliRunner().invoke(main, ["data", "import", str(_csv(tmp_path / "hv.csv", ROWS)), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 examples" in r.output and "dropped 1 row(s) labelled 'Neutral'" in r.output
    r = CliRunner().invoke(main, ["data", "split", str(out), "--by-group", "--holdout", "0.3",
                                  "--names", "tr,va"])
    assert r.exit_code == 0, r.output
    tr, va = load_examples(tmp_path / "tr.jsonl"), load_examples(tmp_path / "va.jsonl")
    assert len(tr) + len(va) == 3 and not {e.metadata.topic for e in tr} & {e.metadata.topic for e in va}


def test_group_split_keeps_groups_whole_and_is_deterministic():
    from mlxhv.data import synth_examples

    exs = synth_examples(60, seed=1)
    for i, e in enumerate(exs):
        e.metadata.topic = f"g{i % 7}"
    tr, va = group_split(exs, 0.25, seed=3)
    assert not {e.metadata.topic for e in tr} & {e.metadata.topic for e in va}
    assert len(va) >= 15 and len(tr) + len(va) == 60
    assert [e.id for e in group_split(exs, 0.25, seed=3)[1]] == [e.id for e in va]
    with pytest.raises(SettingsError, match="at least 2 groups"):
        group_split(exs[:1], 0.5, 0)
