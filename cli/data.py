"""`mlxhv data …`: validate, stats, split, synth, schema (topics and generate live in cli/datagen.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mlxhv.data import (
    compute_stats, drop_overlap, format_stats, load_examples, parse_decision_weights, stratified_split,
    synth_examples, validate_files, write_jsonl,
)
from mlxhv.data.io import OutputExists
from mlxhv.schema import SCHEMAS, json_schema


@click.group()
def data():
    """Dataset tools: validate, stats, split, synth, schema, topics, generate."""


@data.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["auto", "example", "topic"]), default="auto", show_default=True)
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--out-dir", type=click.Path(path_type=Path), default=None,
              help="Where train.jsonl and holdout.jsonl go (default: next to FILE).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def split(file, holdout, seed, out_dir, force):
    """Deterministic stratified split (domain x decision x level) into train.jsonl and holdout.jsonl."""
    out_dir = out_dir or file.parent
    examples = load_examples(file)
    train, held = stratified_split(examples, holdout, seed)
    outs = [(out_dir / "train.jsonl", train), (out_dir / "holdout.jsonl", held)]
    for p, _ in outs:
        if p.exists() and not force:
            raise OutputExists(f"{p}: already exists (use --force to overwrite)")
    for p, recs in outs:
        write_jsonl(p, recs, force=True)
        click.echo(f"{p}: {len(recs)} examples")


@data.command()
@click.option("-n", "n", type=int, default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@click.option("--levels", default="1,2,3,4", show_default=True, help="Comma-separated curriculum levels.")
@click.option("--decision-weights", default=None,
              help="Class mix, e.g. 'balanced' or 'VALIDATED=2,REJECTED=1,REFINED=1' [default: 0.5/0.3/0.2].")
@click.option("--exclude", "excludes", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL file of examples (repeatable): leave out any example with the same hypothesis and "
                   "evidence, so a holdout shares no prompt with a training set.")
@click.option("--force", is_flag=True)
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
@click.option("--kind", type=click.Choice(sorted(SCHEMAS)), default="example", show_default=True)
def schema(kind):
    """Print the JSON schema of a record type (what structured outputs are given)."""
    click.echo(json.dumps(json_schema(kind), indent=2))
