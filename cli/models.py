"""`mlxhv models …`, `mlxhv doctor`, `mlxhv generate`. Placeholder until issue 4 lands."""

import click


@click.group()
def models():
    """Model presets, GGUF import."""


@click.command()
def doctor():
    """Report platform, backend, BLAS speed (not yet implemented)."""
    raise click.ClickException("not implemented yet")


@click.command()
def generate():
    """Generate text with a model (not yet implemented)."""
    raise click.ClickException("not implemented yet")
