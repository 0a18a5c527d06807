"""`mlxhv data …`: validate, stats, split, import, synth, schema (topics and generate live in cli/datagen.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mlxhv.data import (
    compute_stats, drop_overlap, format_stats, group_split, load_examples, parse_decision_weights,
    stratified_split, synth_examples, validate_files, write_jsonl,
)
from mlxhv.data.importers import FORMATS, ImportSpec, healthver_spec, import_claims, parse_label_map
from mlxhv.data.io import OutputExists
from mlxhv.schema import SCHEMAS, json_schema


@click.group()
def data():
    """Dataset tools: validate, stats, split, import, synth, schema, topics, generate."""


@data.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["auto", "example", "topic"]), default="auto", show_default=True,
              help="Record type of FILES (auto: from each file's first record).")
def validate(files, kind):
    """Check FILES against the schema; report every bad line as file:line: field: message."""
    recs, errors = validate_files(list(files), kind)
    for err in errors:
        click.echo(str(err), err=True)
    for path, r in recs.items():
        click.echo(f"{path}: {len(r)} valid record(s)")
    if errors:
        click.echo(f"{len(errors)} error(s)", err=True)
        sys.exit(1)
    click.echo("ok")


@data.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@click.option("--strict", is_flag=True, help="Exit non-zero when the balance targets are not met.")
def stats(file, as_json, strict):
    """Counts by decision x level x domain, confidence histogram, balance check."""
    s = compute_stats(load_examples(file))
    click.echo(json.dumps(s, indent=2) if as_json else format_stats(s))
    if strict and not s["balance_ok"]:
        sys.exit(1)


@data.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--holdout", type=float, default=0.2, show_default=True, help="Fraction held out.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split's shuffles.")
@click.option("-o", "--out-dir", type=click.Path(path_type=Path), default=None,
              help="Where train.jsonl and holdout.jsonl go (default: next to FILE).")
@click.option("--by-group", is_flag=True,
              help="Keep each claim group (metadata.topic) wholly on one side instead of stratifying.")
@click.option("--names", default="train,holdout", show_default=True,
              help="Output file stems, comma-separated: TRAIN,HOLDOUT.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def split(file, holdout, seed, out_dir, by_group, names, force):
    """Deterministic split into train.jsonl and holdout.jsonl: stratified (domain x decision x level), or by
    claim group with --by-group (no group on both sides)."""
    out_dir = out_dir or file.parent
    stems = [n.strip() for n in names.split(",")]
    if len(stems) != 2 or not all(stems) or stems[0] == stems[1]:
        raise click.BadParameter("expected two different names, e.g. train,valid", param_hint="--names")
    examples = load_examples(file)
    train, held = (group_split if by_group else stratified_split)(examples, holdout, seed)
    outs = [(out_dir / f"{stems[0]}.jsonl", train), (out_dir / f"{stems[1]}.jsonl", held)]
    for p, _ in outs:
        if p.exists() and not force:
            raise OutputExists(f"{p}: already exists (use --force to overwrite)")
    for p, recs in outs:
        write_jsonl(p, recs, force=True)
        click.echo(f"{p}: {len(recs)} examples")


@data.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="healthver", show_default=True,
              help="healthver: the HealthVer CSV preset; csv / jsonl: any claim dataset, with the column and "
                   "label options below.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output JSONL of examples.")
@click.option("--claim-col", default="claim", show_default=True, help="Column holding the claim (hypothesis).")
@click.option("--evidence-col", default="evidence", show_default=True, help="Column holding the evidence text.")
@click.option("--label-col", default="label", show_default=True, help="Column holding the dataset's label.")
@click.option("--id-col", default="id", show_default=True, help="Column of row ids ('' for row numbers).")
@click.option("--group-col", default=None, help="Claim-group column (metadata.topic; `split --by-group` keeps "
                                                "groups whole). Default: the claim text.")
@click.option("--source-col", default=None, help="Column naming the evidence's source.")
@click.option("--label", "labels", multiple=True, metavar="LABEL=DECISION",
              help="Map a dataset label to VALIDATED or REJECTED, or to 'drop' (repeatable; csv/jsonl formats).")
@click.option("--neutral", type=click.Choice(["drop", "REJECTED"]), default="drop", show_default=True,
              help="healthver: what HealthVer's Neutral becomes (it is not REFINED: see the module docs).")
@click.option("--name", default=None, help="Id prefix and default evidence source (csv/jsonl; default: the file stem).")
@click.option("--domain", default="general", show_default=True, help="metadata.domain (csv/jsonl).")
@click.option("--confidence", type=float, default=0.9, show_default=True,
              help="The gold confidence written to every example.")
@click.option("--force", is_flag=True, help="Overwrite OUT.")
def import_(file, fmt, out, claim_col, evidence_col, label_col, id_col, group_col, source_col, labels, neutral,
            name, domain, confidence, force):
    """Import a claim / evidence / label dataset (HealthVer, or any CSV / JSONL) as examples.

    Every problem is reported as file:line: field: message, and a refused import writes nothing."""
    if fmt == "healthver":
        if labels:
            raise click.BadParameter("--format healthver has its own labels; use --neutral", param_hint="--label")
        spec = healthver_spec(neutral=None if neutral == "drop" else neutral, confidence=confidence)
    else:
        if not labels:
            raise click.BadParameter("give the label map, e.g. --label Supports=VALIDATED --label Refutes=REJECTED",
                                     param_hint="--label")
        spec = ImportSpec(name=name or file.stem, claim=claim_col, evidence=evidence_col, label=label_col,
                          id=id_col or None, group=group_col, source=source_col, labels=parse_label_map(labels),
                          domain=domain, confidence=confidence)
    if out.exists() and not force:
        raise OutputExists(f"{out}: already exists (use --force to overwrite)")
    result = import_claims(file, spec, "jsonl" if fmt == "jsonl" else "csv")
    count = write_jsonl(out, result.examples, force=force)
    by = {}
    for e in result.examples:
        by[e.expected_decision.value] = by.get(e.expected_decision.value, 0) + 1
    click.echo(f"{out}: {count} examples ({', '.join(f'{k} {v}' for k, v in sorted(by.items()))}) "
               f"from {result.rows} rows")
    for label, k in sorted(result.dropped.items()):
        click.echo(f"dropped {k} row(s) labelled {label!r}")


@data.command()
@click.option("-n", "n", type=int, default=100, show_default=True, help="Examples to generate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generator.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output JSONL of examples.")
@click.option("--levels", default="1,2,3,4", show_default=True, help="Comma-separated curriculum levels.")
@click.option("--decision-weights", default=None,
              help="Class mix, e.g. 'balanced' or 'VALIDATED=2,REJECTED=1,REFINED=1' [default: 0.5/0.3/0.2].")
@click.option("--exclude", "excludes", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL file of examples (repeatable): leave out any example with the same hypothesis and "
                   "evidence, so a holdout shares no prompt with a training set.")
@click.option("--force", is_flag=True, help="Overwrite OUT.")
def synth(n, seed, out, levels, decision_weights, excludes, force):
    """Procedurally generate N examples with known, rule-checkable labels (for tests and RL smoke runs)."""
    lv = tuple(int(x) for x in levels.split(","))
    try:
        weights = parse_decision_weights(decision_weights) if decision_weights else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--decision-weights") from None
    examples = synth_examples(n, seed=seed, levels=lv, decision_weights=weights)
    for path in excludes:
        kept = drop_overlap(examples, load_examples(path))
        click.echo(f"{len(examples) - len(kept)} examples left out: same hypothesis and evidence as in {path}")
        examples = kept
    count = write_jsonl(out, examples, force=force)
    click.echo(f"{out}: {count} examples")


@data.command()
@click.option("--kind", type=click.Choice(sorted(SCHEMAS)), default="example", show_default=True,
              help="Which record type's schema to print.")
def schema(kind):
    """Print the JSON schema of a record type (what structured outputs are given)."""
    click.echo(json.dumps(json_schema(kind), indent=2))
