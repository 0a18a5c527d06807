"""The passes after a rollout, behind one seam: whole rows, or each prompt once for its k answers.

Every pass of an iteration after sampling — old log-probs and values, reference log-probs (LoRA off) and each
minibatch of the update — computes log pi(y_t | x, y_<t) (and V) at the response tokens of a rollout batch. Two
implementations give the same numbers (tests/test_rl_passes.py):

- `RowPasses`: every row (prompt + answer) is one sequence (`rollout.response_forward`). Any mlx-lm model.
- `GroupPasses`: the k answers to a prompt run the prompt once per pass, and the frozen blocks below the first
  LoRA block run once per rollout (`prefix.py`); minibatches are whole prompt groups. Plain decoders only.

`make_passes(model, batch, settings)` picks one when the rollout is laid out; the loop calls `no_grad`,
`minibatches` and `forward` and never asks which it holds. `describe()` says what was picked, for the run log.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxhv.rl.prefix import (Group, Trunk, chunks, group_minibatches, group_trunk, grouped_forward, make_groups,
                             shared_prefix_length, shared_start)
from mlxhv.rl.rollout import RolloutBatch, response_forward


@dataclass
class Minibatch:
    rows: np.ndarray  # (b,) rows of the rollout batch, in the order `forward` returns them
    width: int  # response columns kept: the longest response among these rows
    groups: list[int] | None = None  # GroupPasses: indices of the prompt groups that make up `rows`


def _no_grad(batch: RolloutBatch, passes, model, value_head, temperature: float, parts: list[Minibatch]):
    """Old (or reference) log-probs and values over the whole rollout, part by part: (N, L) numpy arrays, zero on
    padding (values are 0 without a value head)."""
    N, L = batch.targets.shape
    lp_out, v_out = np.zeros((N, L), np.float32), np.zeros((N, L), np.float32)
    for mb in parts:
        lp, _, v = passes.forward(model, value_head, mb, temperature, with_entropy=False)
        if v is None:
            v = mx.zeros_like(lp)
        mx.eval(lp, v)
        lp_out[mb.rows, : mb.width], v_out[mb.rows, : mb.width] = np.array(lp), np.array(v)
    return lp_out * batch.mask, v_out * batch.mask


class RowPasses:
    """Each row of the rollout batch is one sequence, prompt included."""

    def __init__(self, batch: RolloutBatch, rows_per_pass: int):
        self.batch, self.rows_per_pass = batch, rows_per_pass

    def describe(self) -> str:
        return "whole rows"

    def no_grad(self, model, value_head, temperature: float):
        L = self.batch.targets.shape[1]
        N = len(self.batch.targets)
        parts = [Minibatch(np.arange(i, min(i + self.rows_per_pass, N)), L) for i in range(0, N, self.rows_per_pass)]
        return _no_grad(self.batch, self, model, value_head, temperature, parts)

    def minibatches(self, rng: np.random.Generator, size: int) -> list[Minibatch]:
        """Shuffled rows, `size` a minibatch."""
        perm = rng.permutation(len(self.batch.targets))
        return [self._minibatch(perm[i:i + size]) for i in range(0, len(perm), size)]

    def _minibatch(self, rows: np.ndarray) -> Minibatch:
        return Minibatch(rows, int(self.batch.mask[rows].sum(1).max()))

    def forward(self, model, value_head, mb: Minibatch, temperature: float, with_entropy: bool = True):
        """(b, width) log-probs, entropy (or None) and values (or None) of the minibatch's response tokens."""
        b = self.batch
        return response_forward(model, value_head, mx.array(b.tokens[mb.rows]),
                                mx.array(b.positions[mb.rows, : mb.width]), mx.array(b.targets[mb.rows, : mb.width]),
                                temperature, with_entropy)


class GroupPasses:
    """Each prompt once for its k answers, the prompts' shared prefix once per pass; blocks below `start` (the
    frozen trunk) once per rollout."""

    def __init__(self, model, batch: RolloutBatch, start: int, rows_per_pass: int):
        self.batch, self.start, self.rows_per_pass = batch, start, rows_per_pass
        self.groups: list[Group] = make_groups(batch)
        self.C = shared_prefix_length(self.groups)
        self.trunk = group_trunk(model, batch, self.groups, start, self.C) if start else None

    def describe(self) -> str:
        return self.describe_start(self.start)

    @staticmethod
    def describe_start(start: int) -> str:
        return f"shared-prompt, trunk below block {start}" if start else "shared-prompt, no trunk cache"

    def no_grad(self, model, value_head, temperature: float):
        L = self.batch.targets.shape[1]
        parts = [self._minibatch(c, width=L) for c in chunks(range(len(self.groups)), self._sizes(), self.rows_per_pass)]
        return _no_grad(self.batch, self, model, value_head, temperature, parts)

    def minibatches(self, rng: np.random.Generator, size: int) -> list[Minibatch]:
        """Shuffled whole prompt groups, about `size` rows a minibatch, so each minibatch runs its prompts once."""
        return [self._minibatch(c) for c in group_minibatches(self.groups, size, rng)]

    def _sizes(self) -> list[int]:
        return [len(g.rows) for g in self.groups]

    def _minibatch(self, group_ids: list[int], width: int | None = None) -> Minibatch:
        rows = np.concatenate([self.groups[j].rows for j in group_ids])
        return Minibatch(rows, width or int(self.batch.mask[rows].sum(1).max()), list(group_ids))

    def forward(self, model, value_head, mb: Minibatch, temperature: float, with_entropy: bool = True):
        """As `RowPasses.forward`, the prompt of each group run once."""
        groups = [self.groups[j] for j in mb.groups]
        trunk = None if self.trunk is None else Trunk(self.trunk.prefix, [self.trunk.groups[j] for j in mb.groups])
        targets = mx.array(self.batch.targets[mb.rows, : mb.width])
        return grouped_forward(model, value_head, groups, targets, temperature, trunk, self.start, with_entropy,
                               self.C)


Passes = RowPasses | GroupPasses


def passes_start(model, share_prompts: bool, cache_trunk: bool | None) -> int | None:
    """None: whole rows. Else the block at which shared-prompt passes begin their per-pass work: the first LoRA
    block with the trunk cache (`cache_trunk` None means "when sharing"), 0 without it."""
    start = shared_start(model) if share_prompts else None
    if start is None:
        return None
    return start if cache_trunk is not False else 0


def describe_passes(model, share_prompts: bool, cache_trunk: bool | None) -> str:
    """One line for the run log: which passes `make_passes` will pick for this model and these settings."""
    start = passes_start(model, share_prompts, cache_trunk)
    if start is None:
        why = "share_prompts: false" if not share_prompts else f"{type(model).__name__} is not a plain decoder"
        return f"passes: whole rows ({why})"
    return f"passes: {GroupPasses.describe_start(start)}"


def make_passes(model, batch: RolloutBatch, share_prompts: bool, cache_trunk: bool | None,
                rows_per_pass: int) -> Passes:
    """Shared-prompt passes when asked for and the model is a plain decoder (`prefix.shared_start`), else rows."""
    start = passes_start(model, share_prompts, cache_trunk)
    if start is None:
        return RowPasses(batch, rows_per_pass)
    return GroupPasses(model, batch, start, rows_per_pass)
