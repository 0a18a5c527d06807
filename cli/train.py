"""`mlxhv train …`. Placeholder until issue 7 lands."""

import click


@click.group()
def train():
    """Train a judge (PPO with LoRA)."""
