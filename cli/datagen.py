"""`mlxhv data topics` and `mlxhv data generate` (OpenAI structured outputs). Placeholder until issue 6 lands."""

import click


@click.command()
def topics():
    """Generate distinct topics per domain (not yet implemented)."""
    raise click.ClickException("not implemented yet")


@click.command()
def generate():
    """Generate curriculum examples with an OpenAI-compatible API (not yet implemented)."""
    raise click.ClickException("not implemented yet")
