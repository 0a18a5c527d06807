"""`mlxhv train sft`: a LoRA supervised warm start on the judge's answer, built on mlx-lm's tuner.

Each training example becomes one sequence (the mlx-lm dataset item `(tokens, offset)`):

    tokens = render_prompt(example, system_prompt, answer_prefix) + encode(answer) + [EOS]
    answer = the JSON answer {"decision": gold, "confidence": example.confidence, "refined_hypothesis": …}
             with `answer_prefix` cut from its start (the prompt already ends with it)

and the loss is the mean cross-entropy over the answer tokens only (prompt masked):

    L = sum_{b, t : offset_b <= t < len_b} -log p(x_{b,t} | x_{b,<t}) / #{answer tokens}

What comes from mlx-lm: the loop (`mlx_lm.tuner.trainer.train`: the compiled step over model and optimizer
state, token and memory reporting, the training callback), its dataset protocol and `CacheDataset`, its
learning-rate schedules (`tuner.utils.build_schedule`), the `(model, batch, lengths)` loss contract of
`default_loss` and the adapter files. What is ours: the fast path (float32 + OpenBLAS) and our LoRA layers
(`rl.lora`), the batches (`iterate_batches` seam: the curriculum / class-balanced sampler of `rl.curriculum`,
deterministic in (seed, step)), checkpoints and resume as in the PPO trainer, and validation on a stratified
slice of the first training file: answer loss, and the decision read where the three answers first differ
(teacher forced: argmax over the three decisions' tokens there), optionally greedy answers through `mlxhv.eval`.

Where we depart from mlx-lm, and why:
1. **The loss drops the pad target.** `default_loss` keeps `steps <= length`, one position past the end, so
   every row is also trained to predict the pad id after EOS (mlx-lm PR #1697, closed). `answer_loss` uses
   `steps < length`; a test shows the two differ by exactly that target.
2. **Logits only where the answer is.** The batch carries `positions` (B, K): the columns whose outputs predict
   the answer tokens; the head runs on those K ≈ 16-80 columns instead of all ~500 (a (B, K, V) logit tensor
   instead of (B, T, V)), as the PPO passes do (`rollout.response_forward`).
3. **Batches are drawn, not length-sorted.** mlx-lm groups rows of similar length and shuffles the groups; our
   steps follow the curriculum (level mix per step) and may balance the gold decisions.
4. **The frozen trunk runs once per example.** Blocks below the first LoRA block never change, so their output
   for each example is kept (`FrozenTrunk`, ~1.2 MB per 500-token example at H = 576), and every prompt's shared
   opening (system prompt and template, ~40 % of a judge prompt) runs once for all; later epochs run only the
   LoRA blocks. A test checks loss and gradients against a full pass.
5. **Checkpoints carry the optimizer** (`step-NNNNNN/`), so `--resume` continues the run exactly, and the
   adapter directory holds `judge_prompt.json`, so eval and the judge API prompt the adapter as it was trained.
   The top-level adapter is the best checkpoint by the validation metric (`select_by`) once training ends.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlxhv.errors import OutputExists, SettingsError
from mlxhv.paths import resolve_path
from mlxhv.rl.checkpoints import latest_checkpoint, publish, restore, truncate_log, write_checkpoint
from mlxhv.rl.curriculum import CURRICULA, Sampler, level_mix
from mlxhv.rl.lora import LoRASettings, apply_lora
from mlxhv.rl.settings import build_nested
from mlxhv.rl.sft_data import (  # noqa: F401  (the dataset and loss of this job, re-exported)
    FrozenTrunk, JudgeAnswers, answer_logits, answer_loss, answer_text, common_prefix, decision_tokens,
    encode_example, make_batch,
)

SELECT_BY = ("decision_accuracy", "decision_macro_f1", "accuracy", "macro_f1", "loss")


def _default_lora() -> LoRASettings:
    return LoRASettings(rank=8, alpha=16.0, num_layers=8,
                        keys=["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])


@dataclass
class SFTSettings:
    # what to train on
    model: str = "smollm2-135m"
    precision: str = "auto"
    train: list[str] = field(default_factory=lambda: ["data/train.jsonl"])  # the first file gives the val slice
    synth: int = 0  # add this many `data synth` examples (every level) to the training set
    synth_seed: int = 0
    valid_fraction: float = 0.15  # stratified slice of the first training file held out for choosing checkpoints
    valid: list[str] = field(default_factory=list)  # more validation files (e.g. a group split of a claim dataset)
    out: str = "runs/sft"
    # prompt (the same options as eval and PPO)
    system_prompt_file: str | None = None
    answer_prefix: str = ""  # "json": prompts.JSON_ANSWER_PREFIX
    max_new_tokens: int = 96  # greedy validation budget; saved in judge_prompt.json
    # schedule
    steps: int = 200
    max_minutes: float | None = None  # wall-clock budget: the first step begun after it is spent is the last one
    batch_size: int = 4
    curriculum: str = "none"  # "levels": level 1 first, towards level 4 (rl/curriculum.py)
    curriculum_ramp: float = 0.5  # share of the steps after which every level is drawn equally
    balance_classes: bool = False  # every slot draws its gold decision uniformly
    # optimisation
    lr: float = 1e-4
    decision_weight: float = 1.0  # weight of the decision's first token in the loss (answer_loss)
    lr_schedule: dict | None = None  # mlx-lm's format: {"name": "cosine_decay", "arguments": [1e-4, 200], "warmup": 10}
    weight_decay: float = 0.0
    max_seq_length: int = 2048  # longer examples are refused (truncation would cut the answer)
    train_threads: int | None = 2  # OpenBLAS threads while training; None: as is
    cache_trunk: bool = True  # keep each example's states below the first LoRA block (frozen): computed once
    seed: int = 0
    # bookkeeping
    save_every: int = 25
    eval_every: int = 25  # validation loss + greedy accuracy every N steps and at the end (0: at the end only)
    val_generate: bool = False  # also greedy decoding on the val slice (accuracy, macro-F1, ECE): slow on a CPU
    select_by: str = "decision_accuracy"  # the validation number that picks the checkpoint put at the top
    eval_batch_size: int = 16
    lora: LoRASettings = field(default_factory=_default_lora)

    def __post_init__(self):
        from mlxhv.prompts import resolve_answer_prefix

        build_nested(self, {"lora": LoRASettings})
        self.answer_prefix = resolve_answer_prefix(self.answer_prefix)
        # one file or several; paths, or the names of shipped files (data/train.jsonl) found from any folder
        self.train, self.valid = ([str(resolve_path(p)) for p in ([v] if isinstance(v, (str, Path)) else v)]
                                  for v in (self.train, self.valid))
        problems = []
        clash = sorted(set(self.valid) & set(self.train))
        if clash:
            problems.append(f"valid: {clash[0]} is also a training file")
        if not self.train:
            problems.append("train: at least one training file")
        if self.steps < 1:
            problems.append(f"steps: must be >= 1, not {self.steps}")
        if self.batch_size < 1:
            problems.append(f"batch_size: must be >= 1, not {self.batch_size}")
        if not 0.0 <= self.valid_fraction < 1.0:
            problems.append(f"valid_fraction: must be in [0, 1), not {self.valid_fraction}")
        if self.curriculum not in CURRICULA:
            problems.append(f"curriculum: one of {', '.join(CURRICULA)}, not {self.curriculum!r}")
        if not 0.0 < self.curriculum_ramp <= 1.0:
            problems.append(f"curriculum_ramp: must be in (0, 1], not {self.curriculum_ramp}")
        if self.select_by not in SELECT_BY:
            problems.append(f"select_by: one of {', '.join(SELECT_BY)}, not {self.select_by!r}")
        elif self.select_by in ("accuracy", "macro_f1") and not self.val_generate and self.valid_fraction > 0:
            problems.append(f"select_by {self.select_by!r} needs val_generate (greedy answers); use "
                            "decision_accuracy, decision_macro_f1 or loss, or turn val_generate on")
        if self.save_every < 1 or self.eval_every < 0:
            problems.append("save_every must be >= 1 and eval_every >= 0")
        try:
            answer_text(None, self.answer_prefix)
        except SettingsError as e:
            problems.append(str(e))
        if problems:
            raise SettingsError("SFT settings: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict) -> "SFTSettings":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SettingsError(f"unknown SFT setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(model, optimizer, settings: SFTSettings, step: int, out_dir: Path, best: dict | None,
                    prompt_config) -> Path:
    """step-NNNNNN/ (rl/checkpoints.write_checkpoint): adapters, judge_prompt.json, optimizer, trainer state
    (step, the best checkpoint so far, the settings), its adapter files copied to the top of the run."""
    return write_checkpoint(out_dir, step, model, settings.lora, optimizer, prompt_config,
                            {"step": step, "best": best, "settings": asdict(settings)},
                            adapter_extra={"mlxhv_sft": {"step": step}})


def load_checkpoint(model, optimizer, ckpt: Path) -> dict:
    """Restore LoRA weights and optimizer state; returns the trainer state (step, best)."""
    return restore(model, optimizer, ckpt, init_params=model.trainable_parameters())


def better(a: dict, b: dict | None, select_by: str) -> bool:
    """Is validation record `a` better than `b` by `select_by`? (accuracy / macro-F1 higher, ties by lower loss;
    loss lower)."""
    if b is None:
        return True
    if select_by == "loss":
        return a["loss"] < b["loss"]
    ka, kb = a.get(select_by), b.get(select_by)
    ka = -1.0 if ka is None else ka
    kb = -1.0 if kb is None else kb
    return ka > kb or (ka == kb and a["loss"] < b["loss"])


# ---------------------------------------------------------------- the run


@dataclass
class SFTResult:
    step: int
    best: dict | None  # {"step", "loss", "accuracy", …} of the checkpoint at the top of the run
    out: Path


class _Run:
    """The state shared by the batch iterator (what each step drew) and mlx-lm's training callback."""

    def __init__(self, settings, model, tokenizer, optimizer, train_set, val_set, val_examples, sampler,
                 examples, start, out, prompt_config, best):
        self.s, self.model, self.tokenizer, self.optimizer = settings, model, tokenizer, optimizer
        self.train_set, self.val_set, self.val_examples = train_set, val_set, val_examples
        self.sampler, self.examples, self.start, self.out = sampler, examples, start, out
        self.prompt_config, self.best = prompt_config, best
        self.step, self.last, self.drawn = start, False, []
        self.trunk = None  # FrozenTrunk when the blocks below the first LoRA block are cached (plain decoders)
        self.loss = partial(answer_loss, decision_weight=settings.decision_weight)
        self.decisions = decision_tokens(tokenizer, settings.answer_prefix)
        self.deadline = None if settings.max_minutes is None else time.perf_counter() + settings.max_minutes * 60
        self.t_last = time.perf_counter()

    def cache_trunk(self, rows: list[list[int]]) -> None:
        from mlxhv.rl.prefix import shared_start

        start = shared_start(self.model)
        if start:
            self.trunk = FrozenTrunk(self.model, start, common_prefix(rows, min(len(r) for r in rows) - 2))
            self.loss = partial(answer_loss, start=start, decision_weight=self.s.decision_weight)

    def _batch(self, dataset, indices: list[int]):
        items = [dataset[i] for i in indices]
        out = make_batch(items)
        if self.trunk is None:
            return out
        keys = [(dataset is self.train_set, i) for i in indices]
        return out + (self.trunk.batch(keys, items, out[0].shape[1]), self.trunk.hp)

    def iterate_batches(self, dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        """mlx-lm's `iterate_batches` seam. Training (`loop=True`): the sampler's rows of steps start+1 … until
        the last step; validation (`loop=False`): every example once, in order."""
        rank, size = (comm_group.rank(), comm_group.size()) if comm_group is not None else (0, 1)
        if not loop:
            for i in range(0, len(dataset), batch_size):
                yield self._batch(dataset, list(range(i, min(i + batch_size, len(dataset))))[rank::size])
            return
        step = self.start
        while not self.last and step < self.s.steps:
            step += 1
            self.last = step == self.s.steps or (self.deadline is not None and time.perf_counter() > self.deadline)
            self.step, self.drawn = step, self.sampler.draw(step)
            yield self._batch(dataset, self.drawn[rank::size])

    def validate(self) -> dict:
        """Validation: answer loss; the decision read at the first token where the decisions differ (teacher
        forced, the argmax over the three) with its accuracy and macro-F1; with `val_generate`, greedy answers
        through `mlxhv.eval` (accuracy, macro-F1, ECE of the stated confidence)."""
        from mlxhv.eval.metrics import macro_f1, per_class_prf

        t0 = time.perf_counter()
        self.model.eval()
        ce_sum, n_tok, pred = 0.0, 0, []
        for batch in self.iterate_batches(self.val_set, self.s.batch_size, self.s.max_seq_length):
            logits, tgt, mask = answer_logits(self.model, *batch[:3], *batch[3:],
                                              start=self.trunk.start if self.trunk else 0)
            ce = (nn.losses.cross_entropy(logits, tgt) * mask).sum()
            if self.decisions is not None:
                k, ids = self.decisions
                names = list(ids)
                first = logits[:, k][:, mx.array([ids[d] for d in names])]  # (B, 3)
                mx.eval(ce, mask, first)
                pred += [names[i] for i in np.argmax(np.array(first), axis=1)]
            else:
                mx.eval(ce, mask)
            ce_sum, n_tok = ce_sum + ce.item(), n_tok + int(mask.sum().item())
        rec = {"loss": ce_sum / max(n_tok, 1)}
        gold = [e.expected_decision.value for e in self.val_examples]
        if pred:
            prf = per_class_prf(gold, pred)
            rec.update(decision_accuracy=float(np.mean([g == p for g, p in zip(gold, pred)])),
                       decision_macro_f1=macro_f1(prf),
                       decision_recall={c: v.get("recall") for c, v in prf.items()})
            domains = sorted({e.metadata.domain for e in self.val_examples})
            if len(domains) > 1:  # e.g. a claim dataset beside the hand-written examples: each one's own figures
                rec["by_domain"] = {}
                for dom in domains:
                    gp = [(g, p) for g, p, e in zip(gold, pred, self.val_examples) if e.metadata.domain == dom]
                    dprf = per_class_prf([g for g, _ in gp], [p for _, p in gp])
                    rec["by_domain"][dom] = {"n": len(gp), "decision_accuracy": float(np.mean([g == p for g, p in gp])),
                                             "decision_macro_f1": macro_f1(dprf)}
        if self.s.val_generate:
            from mlxhv.eval import EvalSettings, evaluate

            es = EvalSettings(model=self.s.model, max_tokens=self.s.max_new_tokens, temperature=0.0,
                              batch_size=self.s.eval_batch_size, progress=False, answer_prefix=self.s.answer_prefix,
                              system_prompt_file=self.s.system_prompt_file)
            m = evaluate(self.model, self.tokenizer, self.val_examples, es,
                         out_dir=self.out / f"val-step-{self.step:06d}").metrics
            rec.update({k: m.get(k) for k in ("accuracy", "macro_f1", "ece", "brier", "parse_failure_rate")})
            rec["recall"] = {c: v.get("recall") for c, v in (m.get("per_class") or {}).items()}
        rec["val_s"] = time.perf_counter() - t0
        self.model.train()
        return rec


def _callback(run: _Run):
    from mlx_lm.tuner.callbacks import TrainingCallback

    from mlxhv.data.io import append_jsonl

    class Callback(TrainingCallback):
        def on_train_loss_report(self, info: dict):
            s, step = run.s, run.start + info["iteration"]
            assert step == run.step, (step, run.step)
            drawn = [run.examples[i] for i in run.drawn]
            weights = run.sampler.weights(step)
            now = time.perf_counter()
            rec = {"step": step, "loss": info["train_loss"], "lr": info["learning_rate"],
                   "answer_tokens_per_s": info["tokens_per_second"], "step_s": 1.0 / info["iterations_per_second"],
                   "wall_s": now - run.t_last,  # the step with its batch (and first-epoch trunk states)
                   "peak_memory_gb": info["peak_memory"],
                   "level_mix": level_mix([e.metadata.difficulty_level for e in drawn]),
                   "class_mix": dict(sorted(level_mix([e.expected_decision.value for e in drawn]).items()))}
            if weights is not None:
                rec["level_weights"] = {str(k): round(v, 4) for k, v in weights.items()}
            if run.val_set is not None and ((s.eval_every and step % s.eval_every == 0) or run.last):
                rec["val"] = run.validate()
                if better(rec["val"], run.best, s.select_by):
                    run.best = {"step": step, **rec["val"]}
            append_jsonl(run.out / "metrics.jsonl", [rec])
            run.t_last = time.perf_counter()
            if step % s.save_every == 0 or run.last or "val" in rec:
                save_checkpoint(run.model, run.optimizer, s, step, run.out, run.best, run.prompt_config)

    return Callback()


def split_validation(settings: SFTSettings):
    """(training examples, validation examples): a stratified `valid_fraction` of the first file is held out,
    and every `valid` file is added to it; the other training files and `synth` examples all train."""
    from mlxhv.data.io import load_examples
    from mlxhv.data.split import stratified_split
    from mlxhv.rl.curriculum import load_training_sets

    first = load_examples(settings.train[0])
    if settings.valid_fraction > 0:
        kept, val = stratified_split(first, settings.valid_fraction, settings.seed)
    else:
        kept, val = first, []
    extra_val = load_training_sets(settings.valid) if settings.valid else []
    rest = load_training_sets(settings.train[1:], settings.synth, settings.synth_seed, exclude=first + extra_val) \
        if (settings.train[1:] or settings.synth) else []
    val = val + extra_val
    ids = {e.id for e in first}
    clash = [e.id for e in rest if e.id in ids]
    if clash:
        from mlxhv.data.io import DataError, LineError

        raise DataError([LineError(settings.train[0], 0, "id", f"{clash[0]!r} is also in another training file")])
    return kept + rest, val


def train_sft(settings: SFTSettings, resume: bool = False) -> SFTResult:
    """Supervised LoRA warm start of the judge (module docstring); writes metrics.jsonl, checkpoints and the
    adapter (best by validation) under settings.out. `resume` continues from the latest checkpoint."""
    from mlx_lm.tuner.datasets import CacheDataset
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import build_schedule

    from mlxhv import _blas
    from mlxhv.data.io import append_jsonl
    from mlxhv.models import load
    from mlxhv.prompts import PromptConfig, load_system_prompt

    s = settings
    out = Path(s.out)
    ckpt = latest_checkpoint(out) if resume else None
    if not resume and (out / "metrics.jsonl").exists():
        raise OutputExists(f"{out}: holds a run already; pass --resume to continue it or choose another --out")
    system_prompt = load_system_prompt(s.system_prompt_file)  # a bad file fails before the model loads
    train_examples, val_examples = split_validation(s)
    if len(train_examples) < 1:
        raise SettingsError(f"{s.train[0]}: no training examples left after the validation slice")
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(asdict(s), indent=2))
    (out / "split.json").write_text(json.dumps({"train": [e.id for e in train_examples],
                                                "valid": [e.id for e in val_examples]}, indent=1))

    model, tokenizer = load(s.model, precision=s.precision)
    train_set = CacheDataset(JudgeAnswers(train_examples, tokenizer, system_prompt, s.answer_prefix))
    val_set = CacheDataset(JudgeAnswers(val_examples, tokenizer, system_prompt, s.answer_prefix)) \
        if val_examples else None
    too_long = [e.id for ds, exs in ((train_set, train_examples), (val_set, val_examples)) if ds is not None
                for i, e in enumerate(exs) if len(ds[i][0]) > s.max_seq_length]
    if too_long:
        raise SettingsError(f"max_seq_length {s.max_seq_length}: {len(too_long)} example(s) are longer "
                            f"(first {too_long[0]}); raise it")

    apply_lora(model, s.lora, seed=s.seed)
    mx.random.seed(s.seed)
    lr = build_schedule(s.lr_schedule) if s.lr_schedule else s.lr
    optimizer = optim.AdamW(learning_rate=lr, weight_decay=s.weight_decay)
    optimizer.init(model.trainable_parameters())
    best, start = None, 0
    if ckpt is not None:
        ts = load_checkpoint(model, optimizer, ckpt)
        start, best = ts["step"], ts.get("best")
        truncate_log(out / "metrics.jsonl", start)
    elif resume:  # killed before its first checkpoint: start again
        truncate_log(out / "metrics.jsonl", -1)
    for d in out.glob("val-step-*"):  # validations of steps the resumed run will redo
        if int(d.name.rsplit("-", 1)[1]) > (start if ckpt is not None else -1):
            shutil.rmtree(d, ignore_errors=True)
    mx.eval(model.parameters(), optimizer.state)

    sampler = Sampler([e.metadata.difficulty_level for e in train_examples],
                      [e.expected_decision.value for e in train_examples], s.batch_size, s.steps, s.seed,
                      s.curriculum, s.curriculum_ramp, s.balance_classes)
    prompt_config = PromptConfig(system_prompt=system_prompt, answer_prefix=s.answer_prefix,
                                 max_tokens=s.max_new_tokens)
    run = _Run(s, model, tokenizer, optimizer, train_set, val_set, val_examples, sampler, train_examples, start,
               out, prompt_config, best)
    if s.cache_trunk:
        run.cache_trunk([ds[i][0] for ds in (train_set, val_set) if ds is not None for i in range(len(ds))])
    iters = s.steps - start
    with _blas.threads(s.train_threads):
        if val_set is not None and ckpt is None:  # the base model's validation numbers, step 0
            append_jsonl(out / "metrics.jsonl", [{"step": 0, "val": run.validate()}])
        run.t_last = time.perf_counter()
        if iters > 0:
            args = TrainingArgs(batch_size=s.batch_size, iters=iters, steps_per_report=1, steps_per_eval=iters + 1,
                                steps_per_save=iters + 1, max_seq_length=s.max_seq_length,
                                adapter_file=str(out / "adapters.safetensors"))
            train(model, optimizer, train_set, None, args, loss=run.loss, iterate_batches=run.iterate_batches,
                  training_callback=_callback(run))
    if run.best is not None:
        publish(out / "checkpoints" / f"step-{run.best['step']:06d}", out)
    else:
        last = latest_checkpoint(out)
        if last is not None:
            publish(last, out)
    (out / "best.json").write_text(json.dumps(run.best, indent=2))
    return SFTResult(run.step, run.best, out)
