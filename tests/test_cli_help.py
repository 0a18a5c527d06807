"""Every option of every command says what it does (`mlxhv … --help`)."""

import click

from mlxhv.cli import main


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


PENDING = set()  # options without help yet (none)


def test_every_option_has_help():
    missing = {f"{' '.join(path)} {param.opts[-1]}"
               for path, cmd in _commands(main) for param in cmd.params
               if isinstance(param, click.Option) and not (param.help or "").strip()}
    assert missing - PENDING == set(), "options without help"
    assert PENDING - missing == set(), "these have help now: remove them from PENDING"


def test_every_command_has_a_docstring():
    assert [" ".join(p) for p, cmd in _commands(main) if not (cmd.help or "").strip()] == []
