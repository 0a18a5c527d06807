"""The hypothesis-validation task for the RL trainer: prompts, which prompts a step trains on, the score of an
answer, the numbers logged per step, and greedy evaluation on a holdout.

The trainer knows none of this: it calls `task.select(step)`, `task.score(i, completion) -> Scored` and
`task.step_metrics(scored)` (nanochat's `train_task.reward(...)` seam), so another task is another module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlxhv.rl.reward import RewardSettings, reward
from mlxhv.schema import DECISIONS


@dataclass(frozen=True)
class Scored:
    """One sampled answer, scored: `reward` drives the update, the rest is what the task logs."""

    reward: float
    decision: str  # parsed decision, INVALID when unreadable
    confidence: float | None  # stated confidence (None when not stated)
    valid: bool  # the parser could read a decision
    gold: str
    correct: bool
    text: str  # the completion as sampled (after the answer prefix)


def select_prompts(n_examples: int, per_step: int, seed: int, step: int) -> list[int]:
    """Which examples step `step` trains on: epoch-wise permutations, so every example is seen once per epoch."""
    per_step = min(per_step, n_examples)
    start = (step - 1) * per_step
    out = []
    for pos in range(start, start + per_step):
        epoch, j = divmod(pos, n_examples)
        perm = np.random.default_rng([seed, epoch, 2]).permutation(n_examples)
        out.append(int(perm[j]))
    return out


def select_prompts_by_class(labels: list[str], per_step: int, seed: int, step: int) -> list[int]:
    """Class-balanced steps: `per_step` prompts split evenly over the labels present (in sorted order, the first
    take any remainder); within a class, examples are visited epoch-wise as in `select_prompts`. With one class
    per prompt slot, what a step teaches about the class prior cancels out and what tells classes apart stays."""
    classes = sorted(set(labels))
    base, extra = divmod(per_step, len(classes))
    out = []
    for ci, c in enumerate(classes):
        members = [i for i, lab in enumerate(labels) if lab == c]
        m = base + (1 if ci < extra else 0)
        if m:
            out += [members[j] for j in select_prompts(len(members), m, seed * 7919 + ci + 1, step)]
    return out


class JudgeTask:
    """Examples rendered as judge prompts, scored by `reward.reward` on the parsed answer (prefix + completion)."""

    def __init__(self, examples, prompts: list[list[int]], reward_settings: RewardSettings = RewardSettings(),
                 answer_prefix: str = "", balance_classes: bool = False, curriculum: str = "none",
                 curriculum_ramp: float = 0.5, total_steps: int = 1):
        self.examples, self.prompts = list(examples), prompts
        self.reward_settings, self.answer_prefix, self.balance_classes = reward_settings, answer_prefix, balance_classes
        self.labels = [e.expected_decision.value for e in self.examples]
        self.levels = [e.metadata.difficulty_level for e in self.examples]
        self.curriculum, self.curriculum_ramp, self.total_steps = curriculum, curriculum_ramp, total_steps
        self._sampler = None

    @classmethod
    def build(cls, examples, tokenizer, system_prompt: str, answer_prefix: str = "",
              reward_settings: RewardSettings = RewardSettings(), balance_classes: bool = False,
              curriculum: str = "none", curriculum_ramp: float = 0.5, total_steps: int = 1) -> "JudgeTask":
        from mlxhv.prompts import render_prompt

        prompts = [render_prompt(tokenizer, e, system_prompt, answer_prefix=answer_prefix) for e in examples]
        return cls(examples, prompts, reward_settings, answer_prefix, balance_classes, curriculum, curriculum_ramp,
                   total_steps)

    def select(self, step: int, per_step: int, seed: int) -> list[int]:
        """The example indices step `step` trains on; deterministic in (seed, step), so a resumed run replays them.
        With curriculum "levels": `curriculum.Sampler` (level 1 first, class balance within a level)."""
        if self.curriculum != "none":
            from mlxhv.rl.curriculum import Sampler

            if self._sampler is None or self._sampler.batch_size != per_step or self._sampler.seed != seed:
                self._sampler = Sampler(self.levels, self.labels, per_step, self.total_steps, seed, self.curriculum,
                                        self.curriculum_ramp, self.balance_classes)
            return self._sampler.draw(step)
        if self.balance_classes:
            return select_prompts_by_class(self.labels, per_step, seed, step)
        return select_prompts(len(self.examples), per_step, seed, step)

    def level_mix(self, idx: list[int]) -> dict[str, int]:
        """{"1": n, …}: the difficulty levels of a step's prompts."""
        from mlxhv.rl.curriculum import level_mix

        return level_mix([self.levels[i] for i in idx])

    def score(self, i: int, completion) -> Scored:
        """Parse prefix + answer to example i's prompt, then `reward.reward` (formula in reward.py)."""
        from mlxhv.answer import parse_answer

        p = parse_answer(self.answer_prefix + completion.text)
        gold = self.labels[i]
        r = reward(p.decision, p.confidence, gold, completion.finish_reason == "length", self.reward_settings,
                   json_format=p.method == "json")
        return Scored(r, p.decision, p.confidence, p.is_valid, gold, p.decision == gold, completion.text)

    def step_metrics(self, scored: list[Scored], idx: list[int] | None = None) -> dict:
        """Means over a step's answers: accuracy, unparseable share, sampled share of each decision (frac_<D>),
        accuracy per gold class (acc_<gold>: does the answer follow the evidence?) and the ECE of the stated
        confidence (`eval.metrics.scored_confidences`: 0 for unstated); with a curriculum, the level mix of the
        step's prompts `idx` (level_mix)."""
        from mlxhv.eval.metrics import ece, scored_confidences

        out = {"accuracy": float(np.mean([s.correct for s in scored])),
               "invalid_frac": float(np.mean([not s.valid for s in scored]))}
        out.update({f"frac_{d}": float(np.mean([s.decision == d for s in scored])) for d in DECISIONS})
        for gold in dict.fromkeys(s.gold for s in scored):
            out[f"acc_{gold}"] = float(np.mean([s.correct for s in scored if s.gold == gold]))
        conf = scored_confidences([s.decision for s in scored], [s.confidence for s in scored])
        out["ece"] = ece(conf, [s.correct for s in scored])
        if self.curriculum != "none" and idx is not None:
            out["level_mix"] = self.level_mix(idx)
        return out

    @staticmethod
    def sample_record(step: int, scored: list[Scored]) -> dict:
        """The line samples.jsonl gets per step: every answer, for reading (`decisions_by_gold`)."""
        return {"step": step, "samples": [{"gold": s.gold, "reward": round(s.reward, 4), "text": s.text}
                                          for s in scored]}


# ---------------------------------------------------------------- evaluation and reading a run back

EVAL_KEYS = ("accuracy", "ece", "brier", "ece_answered", "brier_answered", "macro_f1", "parse_failure_rate")


def eval_summary(m: dict) -> dict:
    """The holdout numbers a training log keeps of an evaluation's metrics."""
    return {k: m.get(k) for k in EVAL_KEYS if k in m}


def evaluate_holdout(model, tokenizer, examples, out_dir: Path, *, model_name: str, max_tokens: int,
                     batch_size: int, answer_prefix: str, system_prompt_file: str | None) -> dict:
    """Greedy evaluation of the current policy through the eval module; returns `eval_summary`."""
    from mlxhv.eval import EvalSettings, evaluate

    es = EvalSettings(model=model_name, max_tokens=max_tokens, temperature=0.0, batch_size=batch_size,
                      progress=False, answer_prefix=answer_prefix, system_prompt_file=system_prompt_file)
    return eval_summary(evaluate(model, tokenizer, examples, es, out_dir=out_dir).metrics)


def decisions_by_gold(run_dir: str | Path, every: int = 25) -> list[dict]:
    """What the policy sampled, per gold class, in windows of `every` steps, from RUN/samples.jsonl (answers
    parsed after the run's answer prefix): [{"steps": [first, last], "counts": {gold: {decision: n}}}]. A judge
    that reads the evidence answers differently for different gold classes; one that does not, the same."""
    from mlxhv.data.io import iter_jsonl
    from mlxhv.answer import parse_answer

    run_dir = Path(run_dir)
    prefix = json.loads((run_dir / "settings.json").read_text()).get("answer_prefix", "")
    windows: dict[int, dict] = {}
    for _, rec in iter_jsonl(run_dir / "samples.jsonl"):
        if not isinstance(rec, dict):
            continue
        w = windows.setdefault((rec["step"] - 1) // every, {"steps": [rec["step"], rec["step"]], "counts": {}})
        w["steps"] = [min(w["steps"][0], rec["step"]), max(w["steps"][1], rec["step"])]
        for s in rec["samples"]:
            d = parse_answer(prefix + s["text"]).decision
            row = w["counts"].setdefault(s["gold"], {})
            row[d] = row.get(d, 0) + 1
    return [windows[k] for k in sorted(windows)]


def format_decisions(windows: list[dict]) -> str:
    """Markdown: one row per window, per gold class the shares sampled VALIDATED / REJECTED / REFINED / other."""
    head = "| steps | " + " | ".join(f"gold {g}: V / RJ / RF / other" for g in DECISIONS) + " |"
    lines = [head, "| --- |" + " ---: |" * len(DECISIONS)]
    for w in windows:
        cells = []
        for g in DECISIONS:
            c = w["counts"].get(g, {})
            n = sum(c.values())
            if not n:
                cells.append("–")
                continue
            shares = [c.get(d, 0) / n for d in DECISIONS] + [sum(v for k, v in c.items() if k not in DECISIONS) / n]
            cells.append(" / ".join(f"{x:.2f}" for x in shares) + f" (n={n})")
        lines.append(f"| {w['steps'][0]}-{w['steps'][1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
