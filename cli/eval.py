"""`mlxhv eval` and `mlxhv compare`. Placeholder until issue 5 lands."""

import click


@click.command("eval")
def eval_():
    """Evaluate a judge model on a dataset (not yet implemented)."""
    raise click.ClickException("not implemented yet")


@click.command()
def compare():
    """Compare evaluation runs (not yet implemented)."""
    raise click.ClickException("not implemented yet")
