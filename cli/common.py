"""The one way the CLI reports an error a user caused: `error: <message>` on stderr, exit status 2.

`mlxhv.cli.main` is an `App` group, so every command runs inside `user_errors()`; commands raise the library's
`mlxhv.errors.MlxhvError` subclasses and never format errors themselves.

Exit status, one per kind of outcome:

- 0: done.
- 1: the command ran and says, on stderr, that its goal is not met (`data stats --strict`: balance targets
  missed; `data topics` / `data generate`: short of the quota, rerun to retry), or a bug (a traceback).
- 2: the user's input is wrong: a usage error (click's own format: unknown option, missing argument, a path
  that does not exist), or any `MlxhvError` — bad data lines, invalid or conflicting settings, a model that
  cannot load, an output that exists, a refused confirmation.
- 130: interrupted (Ctrl-C); every long job resumes when run again.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from mlxhv.errors import DataError, MlxhvError
from mlxhv.paths import resolve_path


class ShippedPath(click.Path):
    """A click.Path that also accepts the name of a shipped file or adapter (`data/holdout.jsonl`,
    `configs/sft-run2.json`, `smollm2-135m-judge`): a path that exists here wins, else the installed package's
    copy is used (mlxhv.paths.resolve_path). Converts to a pathlib.Path."""

    def __init__(self, **kw):
        kw.setdefault("path_type", Path)
        super().__init__(**kw)

    def convert(self, value, param, ctx):
        return super().convert(resolve_path(value), param, ctx)


def report(e: MlxhvError) -> None:
    """Print `e` as `error: …` lines: one per bad input line for a DataError (file:line: field: message)."""
    if isinstance(e, DataError) and e.errors:
        for err in e.errors:
            click.echo(f"error: {err}", err=True)
        if len(e.errors) > 1:
            click.echo(f"error: {len(e.errors)} errors", err=True)
    else:
        click.echo(f"error: {e}", err=True)


USER_ERROR = 2
INTERRUPTED = 130


@contextlib.contextmanager
def user_errors():
    """Run a command; an MlxhvError becomes `report(e)` and exit status 2, Ctrl-C exit status 130."""
    try:
        yield
    except MlxhvError as e:
        report(e)
        sys.exit(USER_ERROR)
    except KeyboardInterrupt:
        click.echo("error: interrupted; run the same command again to resume", err=True)
        sys.exit(INTERRUPTED)


class App(click.Group):
    """The top-level group: every subcommand (nested groups included) is invoked inside `user_errors()`."""

    def invoke(self, ctx):
        with user_errors():
            return super().invoke(ctx)
