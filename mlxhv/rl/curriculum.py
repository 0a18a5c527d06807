"""Which training examples each step sees: the difficulty curriculum, class balance, and several data files.

Curriculum `levels` (difficulty 1 clear-cut … 4 subtle, docs/design.md). At training progress
p = (step - 1) / (total_steps - 1) the frontier is

    f(p) = 1 + (L - 1) * min(1, p / ramp)          L levels, `ramp` the share of training that reaches the top

and level l (1-based rank among the levels present) gets weight

    w_l = 1 if l <= floor(f),   f - floor(f) if l = floor(f) + 1,   0 above;   normalised to sum 1.

So step 1 trains on level 1 only, the next level fades in as the frontier passes it, and from p = ramp on every
level is drawn equally often. Curriculum `none`: no level weights; examples are drawn as they are in the data.

`Sampler.draw(step)` gives the example indices of one step, deterministic in (seed, step) whatever the order of
calls (a resumed run replays the same batches): each slot draws a level from w (curriculum) and, with
`balance_classes`, a gold decision uniformly among those present at that level; within the chosen pool examples
are visited epoch-wise (a fresh permutation per pass, every example once per pass).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CURRICULA = ("none", "levels")


def level_weights(step: int, total_steps: int, mode: str = "levels", levels=(1, 2, 3, 4),
                  ramp: float = 0.5) -> dict[int, float] | None:
    """The level mix of training step `step` (1-based) of `total_steps`: {level: weight}, weights summing to 1
    (module docstring); None for mode "none" (draw as the data comes)."""
    if mode not in CURRICULA:
        raise ValueError(f"curriculum must be one of {', '.join(CURRICULA)}, not {mode!r}")
    if mode == "none":
        return None
    if not 0.0 < ramp <= 1.0:
        raise ValueError(f"curriculum_ramp must be in (0, 1], not {ramp}")
    levels = sorted(set(levels))
    p = 0.0 if total_steps <= 1 else min(1.0, max(0.0, (step - 1) / (total_steps - 1)))
    frontier = 1.0 + (len(levels) - 1) * min(1.0, p / ramp)
    whole = math.floor(frontier + 1e-9)
    raw = [1.0 if r <= whole else (frontier - whole if r == whole + 1 else 0.0)
           for r in range(1, len(levels) + 1)]
    total = sum(raw)
    return {lv: w / total for lv, w in zip(levels, raw)}


@dataclass
class _Pool:
    members: list[int]
    key: int  # seeds this pool's permutations
    pos: int = 0

    def take(self, seed: int) -> int:
        epoch, j = divmod(self.pos, len(self.members))
        perm = np.random.default_rng([seed, self.key, epoch]).permutation(len(self.members))
        self.pos += 1
        return self.members[int(perm[j])]


@dataclass
class Sampler:
    """Draws the examples of each training step (module docstring). `levels[i]`, `labels[i]`: example i's
    difficulty level and gold decision."""

    levels: list[int]
    labels: list[str]
    batch_size: int
    total_steps: int
    seed: int = 0
    curriculum: str = "none"
    ramp: float = 0.5
    balance_classes: bool = False
    _pools: dict = field(default_factory=dict, init=False, repr=False)
    _step: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if len(self.levels) != len(self.labels) or not self.levels:
            raise ValueError("Sampler needs one level and one label per example, and at least one example")
        level_weights(1, self.total_steps, self.curriculum, self.levels, self.ramp)  # validates the settings

    def weights(self, step: int) -> dict[int, float] | None:
        return level_weights(step, self.total_steps, self.curriculum, self.levels, self.ramp)

    def _reset(self) -> None:
        self._pools, self._step = {}, 0

    def _pool(self, level, label) -> _Pool:
        if (level, label) not in self._pools:
            members = [i for i, (lv, lab) in enumerate(zip(self.levels, self.labels))
                       if (level is None or lv == level) and (label is None or lab == label)]
            self._pools[(level, label)] = _Pool(members, key=_pool_key(level, label))
        return self._pools[(level, label)]

    def _draw_next(self) -> list[int]:
        self._step += 1
        step = self._step
        w = self.weights(step)
        rng = np.random.default_rng([self.seed, step, 3])
        out = []
        for _ in range(self.batch_size):
            level = None
            if w is not None:
                lv = [k for k, v in w.items() if v > 0]
                level = int(rng.choice(lv, p=np.array([w[k] for k in lv]) / sum(w[k] for k in lv)))
            label = None
            if self.balance_classes:
                present = sorted({lab for lv_, lab in zip(self.levels, self.labels) if level is None or lv_ == level})
                label = present[int(rng.integers(len(present)))]
            out.append(self._pool(level, label).take(self.seed))
        return out

    def draw(self, step: int) -> list[int]:
        """Example indices of step `step` (1-based), the same for a given (seed, step) however it is reached."""
        if step <= self._step:
            self._reset()
        batch = []
        while self._step < step:
            batch = self._draw_next()
        return batch


def _pool_key(level, label) -> int:
    """A stable integer per (level, label) pool, so its permutations do not depend on the order pools appear."""
    lv = 0 if level is None else int(level)
    lab = 0 if label is None else 1 + sum(ord(c) * 31 ** i for i, c in enumerate(label)) % 1_000_003
    return lv * 1_000_033 + lab


def level_mix(levels: list[int]) -> dict[str, int]:
    """{"1": count, …} of the levels drawn in one step (the per-step log)."""
    return {str(k): v for k, v in sorted(Counter(levels).items())}


def load_training_sets(paths, synth: int = 0, synth_seed: int = 0, exclude=()) -> list:
    """The examples of every file in `paths` (in order), plus `synth` procedural examples (`data synth`: every
    domain and level, the default decision mix) whose prompts are in none of the files nor in `exclude`.
    Ids must be unique across all of them (DataError naming the files)."""
    from mlxhv.data.io import DataError, LineError, load_examples
    from mlxhv.data.split import drop_overlap
    from mlxhv.data.synth import synth_examples

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    examples, seen, errors = [], {}, []
    for path in paths:
        for line, e in enumerate(load_examples(path), start=1):
            if e.id in seen:
                errors.append(LineError(str(path), line, "id", f"{e.id!r} is also in {seen[e.id]}"))
            seen[e.id] = str(path)
            examples.append(e)
    if errors:
        raise DataError(errors)
    if synth:
        extra = drop_overlap(synth_examples(synth, seed=synth_seed, prefix="sft-syn"), list(examples) + list(exclude))
        clash = [e.id for e in extra if e.id in seen]
        if clash:
            raise DataError([LineError("synth", 0, "id", f"{clash[0]!r} is also in {seen[clash[0]]}")])
        examples += extra
    return examples
