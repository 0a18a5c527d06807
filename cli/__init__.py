"""The `mlxhv` click app. Thin: each command parses options into a settings dataclass and calls the library."""

from __future__ import annotations

import click

from mlxhv.cli.common import App
from mlxhv import __version__


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlxhv")
def main():
    """mlxhv — turn a small open LLM into a calibrated hypothesis-validation judge (MLX)."""


def _register():
    from mlxhv.cli import data, datagen, eval as eval_cmd, judge, models, serve, train

    data.data.add_command(datagen.topics)
    data.data.add_command(datagen.generate)
    main.add_command(data.data)
    main.add_command(models.models)
    main.add_command(models.doctor)
    main.add_command(models.generate)
    main.add_command(eval_cmd.eval_)
    main.add_command(eval_cmd.compare)
    main.add_command(train.train)
    main.add_command(judge.judge)
    main.add_command(serve.serve)


_register()
