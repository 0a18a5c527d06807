"""Helpers shared by the CLI modules: turning library errors into one-line click errors."""

from __future__ import annotations

import contextlib
import sys

import click

from mlxhv.data.io import DataError, OutputExists


@contextlib.contextmanager
def user_errors():
    """Show DataError / OutputExists / FileNotFoundError as clean messages with exit status 1 or 2."""
    try:
        yield
    except DataError as e:
        for err in e.errors:
            click.echo(str(err), err=True)
        click.echo(f"{len(e.errors)} error(s)", err=True)
        sys.exit(1)
    except (OutputExists, FileNotFoundError, IsADirectoryError) as e:
        raise click.ClickException(str(e))
