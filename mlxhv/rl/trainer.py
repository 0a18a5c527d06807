"""The PPO loop: rollout -> reward -> KL-penalised per-token rewards -> GAE -> clipped PPO epochs.

One iteration (`ppo_iteration`) reads top to bottom against Algorithm 1 of the PPO paper and cleanrl's ppo.py;
`train` wraps it with data, logging, evaluation and checkpoints. Everything random is derived from
(settings.seed, step), so `--resume` replays exactly the run that a checkpoint came from.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlxhv import _blas
from mlxhv.rl.lora import LoRASettings, apply_lora, lora_disabled, save_adapters
from mlxhv.rl.ppo import (AdaptiveKLController, PPOLossSettings, explained_variance, gae, kl_penalised_rewards,
                          leave_one_out_scores, masked_whiten, ppo_loss)
from mlxhv.rl.prefix import (group_minibatches, group_trunk, grouped_forward, grouped_no_grad, make_groups,
                             shared_start)
from mlxhv.rl.reward import RewardSettings
from mlxhv.rl.rollout import RolloutBatch, batched_no_grad, build_batch, eos_id, response_forward
from mlxhv.rl.value import ValueHead, hidden_size


@dataclass
class PPOSettings:
    # what to train on
    model: str = "smollm2-135m"
    precision: str = "auto"
    train: str = "data/train.jsonl"
    holdout: str | None = "data/holdout.jsonl"
    out: str = "runs/ppo"
    # schedule
    steps: int = 20
    max_minutes: float | None = None  # wall-clock budget: the first step begun after it is spent is the last one
    prompts_per_step: int = 8
    samples_per_prompt: int = 2  # k answers per prompt
    balance_classes: bool = False  # each step draws its prompts evenly from every gold decision
    ppo_epochs: int = 2
    minibatch_size: int = 4
    # sampling (logits are divided by this temperature when computing log-probs too)
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    rollout_batch_size: int = 16
    system_prompt_file: str | None = None  # a variant of prompts.SYSTEM_PROMPT (rollouts and holdout evaluation)
    answer_prefix: str = ""  # opens every answer, in rollouts and holdout evaluation (prompts.JSON_ANSWER_PREFIX)
    # optimisation
    lr: float = 5e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping (37 details #11)
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True  # advantage normalisation (37 details #7)
    whiten_rewards: bool = False  # reward whitening (N details of RLHF): off, our reward has a fixed scale
    score_baseline: str = "none"  # "loo": subtract the mean score of the prompt's other answers (RLOO), k >= 2
    kl_coef: float = 0.05  # initial beta of the per-token KL penalty
    kl_target: float | None = 1.0  # adaptive KL controller target (sequence KL, nats); None: fixed beta
    kl_horizon: int = 1000
    value_inner: int = 256
    train_threads: int | None = 2  # OpenBLAS threads for prompts, reference and update passes; None: as is
    share_prompts: bool = True  # run each prompt once for its k answers in every pass (rl/prefix.py)
    cache_trunk: bool = True  # with share_prompts: blocks below the first LoRA block run once per rollout
    seed: int = 0
    # bookkeeping
    save_every: int = 10
    eval_every: int = 0  # 0: evaluate on the holdout only at the end
    eval_limit: int | None = None
    eval_max_tokens: int | None = None  # default: max_new_tokens
    lora: LoRASettings = field(default_factory=LoRASettings)
    loss: PPOLossSettings = field(default_factory=PPOLossSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)

    def __post_init__(self):
        from mlxhv.prompts import resolve_answer_prefix

        self.answer_prefix = resolve_answer_prefix(self.answer_prefix)
        if self.score_baseline not in ("none", "loo"):
            raise ValueError(f"score_baseline must be 'none' or 'loo', not {self.score_baseline!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "PPOSettings":
        nested = {"lora": LoRASettings, "loss": PPOLossSettings, "reward": RewardSettings}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PPO setting(s): {', '.join(sorted(unknown))}")
        kw = {k: (nested[k](**v) if k in nested and isinstance(v, dict) else v) for k, v in d.items()}
        return cls(**kw)


class Policy(nn.Module):
    """The language model (frozen base + LoRA) and the value head: one module, one optimizer."""

    def __init__(self, model: nn.Module, value_head: ValueHead):
        super().__init__()
        self.model = model
        self.value_head = value_head


@dataclass
class PPOState:
    policy: Policy
    tokenizer: object
    optimizer: optim.Optimizer
    kl_ctl: AdaptiveKLController
    settings: PPOSettings
    step: int = 0
    skipped_updates: int = 0


def init_state(model, tokenizer, settings: PPOSettings) -> PPOState:
    apply_lora(model, settings.lora, seed=settings.seed)
    mx.random.seed(settings.seed)
    policy = Policy(model, ValueHead(hidden_size(model), settings.value_inner))
    optimizer = optim.AdamW(learning_rate=settings.lr, weight_decay=settings.weight_decay)
    optimizer.init(policy.trainable_parameters())
    mx.eval(policy.parameters(), optimizer.state)
    kl = AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
    return PPOState(policy, tokenizer, optimizer, kl, settings)


def _loss_fn(policy: Policy, tokens, positions, targets, mask, old_logprobs, old_values, advantages, returns,
             temperature: float, loss_settings: PPOLossSettings, shared=None):
    if shared is None:  # whole rows
        logprobs, entropy, values = response_forward(policy.model, policy.value_head, tokens, positions, targets,
                                                     temperature)
    else:  # (groups, trunk, start): each prompt once, rows ordered group by group
        groups, trunk, start = shared
        logprobs, entropy, values = grouped_forward(policy.model, policy.value_head, groups, targets, temperature,
                                                    trunk, start)
    return ppo_loss(logprobs, values, entropy, old_logprobs, old_values, advantages, returns, mask, loss_settings)


def update_minibatch(state: PPOState, mb: dict, shared=None) -> tuple[bool, dict]:
    """One gradient step on one minibatch. A step whose loss or gradient norm is not finite is skipped.
    `shared` = (groups, trunk, start) runs the minibatch's rows as prompt groups (rl/prefix.py)."""
    s = state.settings
    loss_and_grad = nn.value_and_grad(state.policy, _loss_fn)
    (loss, metrics), grads = loss_and_grad(state.policy, *(mx.array(mb[k]) for k in (
        "tokens", "positions", "targets", "mask", "old_logprobs", "old_values", "advantages", "returns")),
        s.temperature, s.loss, shared)
    grads, grad_norm = optim.clip_grad_norm(grads, s.max_grad_norm)
    mx.eval(loss, grad_norm, metrics)  # one sync to decide whether the step is safe to apply
    if not (math.isfinite(loss.item()) and math.isfinite(grad_norm.item())):
        state.skipped_updates += 1
        return False, {}
    state.optimizer.update(state.policy, grads)
    mx.eval(state.policy.trainable_parameters(), state.optimizer.state)
    out = {k: v.item() for k, v in metrics.items()}
    out.update(loss=loss.item(), grad_norm=grad_norm.item())
    return True, out


def ppo_iteration(state: PPOState, prompts: list[list[int]],
                  score_fn: Callable[[int, object], tuple[float, dict]], step: int) -> dict:
    """Sample, score and update once. `score_fn(prompt_index, completion) -> (score, info)`; returns metrics."""
    from mlxhv.engine import GenerationSettings, generate

    s = state.settings
    model, value_head = state.policy.model, state.policy.value_head
    k = s.samples_per_prompt
    t0 = time.perf_counter()

    # 1. rollouts: k samples per prompt, dropout off (LoRA dropout defaults to 0)
    prompt_index = [i for i in range(len(prompts)) for _ in range(k)]
    gen = GenerationSettings(max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                             seed=s.seed * 1_000_003 + step, batch_size=s.rollout_batch_size,
                             prefill_threads=s.train_threads,
                             decode_threads=1)  # 1 thread is the safe choice for decode steps (DESIGN.md)
    completions, gen_stats = generate(model, state.tokenizer, [prompts[i] for i in prompt_index], gen)
    t_rollout = time.perf_counter() - t0

    # 2. scores from the task's reward function
    scored = [score_fn(pi, c) for pi, c in zip(prompt_index, completions)]
    scores = np.array([sc for sc, _ in scored], dtype=np.float32)  # (N,)
    batch: RolloutBatch = build_batch(prompts, completions, prompt_index, eos_id(state.tokenizer))
    mask = batch.mask

    # 3. old log-probs and values (policy), reference log-probs (same weights, LoRA off)
    t1 = time.perf_counter()
    threads_before = _blas.get_threads()
    if s.train_threads:
        _blas.set_threads(s.train_threads)  # whole sequences: compute-bound, 2 threads help (DESIGN.md)
    start = shared_start(model) if s.share_prompts else None
    groups = trunk = None
    if start is None:  # whole rows
        old_logprobs, old_values = batched_no_grad(model, value_head, batch, s.temperature, s.minibatch_size)
        with lora_disabled(model):
            ref_logprobs, _ = batched_no_grad(model, None, batch, s.temperature, s.minibatch_size)
    else:  # each prompt once per pass; the frozen trunk once per rollout
        groups = make_groups(batch)
        start = start if s.cache_trunk else 0
        trunk = group_trunk(model, batch, groups, start) if start else None
        old_logprobs, old_values = grouped_no_grad(model, value_head, batch, groups, s.temperature, trunk, start,
                                                   s.minibatch_size)
        with lora_disabled(model):
            ref_logprobs, _ = grouped_no_grad(model, None, batch, groups, s.temperature, trunk, start,
                                              s.minibatch_size)
    t_reference = time.perf_counter() - t1

    # 4. per-token rewards: -beta * KL, score at the last token; GAE; whitening
    if s.score_baseline == "loo":
        scores = leave_one_out_scores(scores, batch.prompt_index)
    if s.whiten_rewards:
        scores = (scores - scores.mean()) / (scores.std() + 1e-8)
    rewards, kl = kl_penalised_rewards(scores, old_logprobs, ref_logprobs, mask, state.kl_ctl.kl_coef)
    advantages, returns = gae(rewards, old_values, mask, s.gamma, s.lam)
    if s.whiten_advantages:
        advantages = np.array(masked_whiten(mx.array(advantages), mx.array(mask)))

    # 5. PPO epochs over shuffled minibatches
    t2 = time.perf_counter()
    rng = np.random.default_rng([s.seed, step, 1])
    data = {"tokens": batch.tokens, "positions": batch.positions, "targets": batch.targets, "mask": mask,
            "old_logprobs": old_logprobs, "old_values": old_values, "advantages": advantages.astype(np.float32),
            "returns": returns.astype(np.float32)}
    N = len(scores)
    logs: list[dict] = []
    skipped_before = state.skipped_updates
    for _ in range(s.ppo_epochs):
        if groups is None:  # shuffled rows
            perm = rng.permutation(N)
            minibatches = [(perm[i:i + s.minibatch_size], None) for i in range(0, N, s.minibatch_size)]
        else:  # shuffled whole prompt groups, so each minibatch runs its prompts once
            minibatches = [(np.concatenate([groups[j].rows for j in chunk]), chunk)
                           for chunk in group_minibatches(groups, s.minibatch_size, rng)]
        for idx, chunk in minibatches:
            mb = {key: val[idx] for key, val in data.items()}
            width = int(mb["mask"].sum(1).max())  # trim response padding of this minibatch
            for key in ("positions", "targets", "mask", "old_logprobs", "old_values", "advantages", "returns"):
                mb[key] = mb[key][:, :width]
            shared = None if chunk is None else (
                [groups[j] for j in chunk], None if trunk is None else [trunk[j] for j in chunk], start)
            ok, m = update_minibatch(state, mb, shared)
            if ok:
                logs.append(m)
    t_update = time.perf_counter() - t2
    if s.train_threads and threads_before:
        _blas.set_threads(threads_before)

    # 6. adapt beta towards the target sequence KL
    seq_kl = float(kl.sum(1).mean())
    state.kl_ctl.update(seq_kl, N)
    state.step = step

    resp_len = mask.sum(1)
    infos = [info for _, info in scored]
    metrics = {
        "step": step,
        "reward_mean": float(np.mean([sc for sc, _ in scored])),
        "reward_std": float(np.std([sc for sc, _ in scored])),
        "kl": seq_kl,
        "kl_coef": state.kl_ctl.kl_coef,
        "explained_variance": explained_variance(old_values[mask > 0], returns[mask > 0]),
        "response_length": float(resp_len.mean()),
        "truncated_frac": float(np.mean([c.finish_reason == "length" for c in completions])),
        "rollout_s": t_rollout,
        "reference_s": t_reference,
        "update_s": t_update,
        "rollout_gen_tok_s": gen_stats.generation_tps,
        "rollout_prompt_tok_s": gen_stats.prompt_tps,
        "update_tok_s": float(s.ppo_epochs * (batch.tokens.shape[1] * N)) / max(t_update, 1e-9),
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
        "skipped_updates": state.skipped_updates - skipped_before,
    }
    for key in ("loss", "pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "vf_clipfrac", "grad_norm"):
        vals = [m[key] for m in logs]
        metrics[key] = float(np.mean(vals)) if vals else float("nan")
    metrics.update(mean_infos(infos))
    return metrics


def mean_infos(infos: list[dict]) -> dict[str, float]:
    """Per-answer numbers of the score function -> their means; a key missing from some answers (acc_<gold>)
    is averaged over the answers that have it. Non-numeric values are left out."""
    out = {}
    for key in dict.fromkeys(k for i in infos for k in i):
        vals = [i[key] for i in infos if isinstance(i.get(key), (int, float, bool))]
        if vals:
            out[key] = float(np.mean(vals))
    return out


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(state: PPOState, out_dir: str | Path) -> Path:
    """Write step-NNNNNN/ atomically: adapters (mlx-lm format), value head, optimizer, trainer state."""
    out_dir = Path(out_dir)
    final = out_dir / "checkpoints" / f"step-{state.step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_adapters(state.policy.model, state.settings.lora, tmp)
    mx.save_safetensors(str(tmp / "value_head.safetensors"), dict(tree_flatten(state.policy.value_head.parameters())))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(state.optimizer.state)))
    (tmp / "trainer_state.json").write_text(json.dumps({
        "step": state.step, "kl_coef": state.kl_ctl.kl_coef, "skipped_updates": state.skipped_updates,
        "settings": asdict(state.settings)}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for name in ("adapters.safetensors", "adapter_config.json", "value_head.safetensors"):  # latest, at the top
        shutil.copy2(final / name, out_dir / name)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = sorted((Path(out_dir) / "checkpoints").glob("step-[0-9]*[0-9]"))
    return ckpts[-1] if ckpts else None


def load_checkpoint(state: PPOState, ckpt: str | Path) -> None:
    """Restore LoRA weights, value head, optimizer and counters into a freshly initialised state."""
    ckpt = Path(ckpt)
    state.policy.model.load_weights(str(ckpt / "adapters.safetensors"), strict=False)
    state.policy.value_head.load_weights(str(ckpt / "value_head.safetensors"))
    state.optimizer.state = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
    ts = json.loads((ckpt / "trainer_state.json").read_text())
    state.step = ts["step"]
    state.kl_ctl.kl_coef = ts["kl_coef"]
    state.skipped_updates = ts["skipped_updates"]
    mx.eval(state.policy.parameters(), state.optimizer.state)


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


# ---------------------------------------------------------------- the judge task


def judge_score_fn(examples, reward_settings: RewardSettings, answer_prefix: str = ""):
    """score_fn for the hypothesis-validation task: parse prefix + answer, then `reward.reward`."""
    from mlxhv.prompts import parse_answer
    from mlxhv.rl.reward import reward
    from mlxhv.schema import DECISIONS

    def score(i: int, completion) -> tuple[float, dict]:
        p = parse_answer(answer_prefix + completion.text)
        gold = examples[i].expected_decision.value
        r = reward(p.decision, p.confidence, gold, completion.finish_reason == "length", reward_settings,
                   json_format=p.method == "json")
        correct = p.decision == gold
        info = {"accuracy": correct, "invalid_frac": not p.is_valid}
        info.update({f"frac_{d}": p.decision == d for d in DECISIONS})  # what the policy samples, per class
        info[f"acc_{gold}"] = correct  # accuracy per gold class: does the answer follow the evidence?
        info.update(_conf=p.confidence, _correct=correct, _valid=p.is_valid, _gold=gold,
                    _text=completion.text, _reward=r)
        return r, info

    return score


def _log(path: Path, record: dict) -> None:
    from mlxhv.data.io import append_jsonl

    append_jsonl(path, [record])


def _truncate_log(path: Path, last_step: int) -> None:
    """On resume: keep only the metrics lines of steps <= last_step (no duplicates after a kill)."""
    from mlxhv.data.io import iter_jsonl, repair_tail, write_jsonl

    if not path.exists():
        return
    repair_tail(path)
    keep = [obj for _, obj in iter_jsonl(path) if isinstance(obj, dict) and obj.get("step", 0) <= last_step]
    write_jsonl(path, keep, force=True)


def evaluate_holdout(state: PPOState, examples, out_dir: Path) -> dict:
    """Greedy evaluation of the current policy on the holdout through the eval module."""
    from mlxhv.eval import EvalSettings, evaluate

    s = state.settings
    es = EvalSettings(model=s.model, max_tokens=s.eval_max_tokens or s.max_new_tokens, temperature=0.0,
                      batch_size=s.rollout_batch_size, progress=False, answer_prefix=s.answer_prefix,
                      system_prompt_file=s.system_prompt_file)
    run = evaluate(state.policy.model, state.tokenizer, examples, es, out_dir=out_dir)
    return run.metrics


def train(settings: PPOSettings, resume: bool = False, progress: bool = True) -> PPOState:
    """Train the judge with PPO; writes metrics.jsonl, checkpoints and adapters under settings.out."""
    from tqdm import tqdm

    from mlxhv.data.io import load_examples
    from mlxhv.eval.metrics import ece
    from mlxhv.models import load
    from mlxhv.prompts import load_system_prompt, render_prompt

    s = settings
    out = Path(s.out)
    ckpt = latest_checkpoint(out) if resume else None
    if not resume and (out / "metrics.jsonl").exists():
        raise FileExistsError(f"{out}: holds a run already; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(asdict(s), indent=2))

    system_prompt = load_system_prompt(s.system_prompt_file)  # a bad file fails before the model loads
    model, tokenizer = load(s.model, precision=s.precision)
    train_examples = load_examples(s.train)
    holdout = load_examples(s.holdout)[: s.eval_limit] if s.holdout else []
    prompts = [render_prompt(tokenizer, e, system_prompt, answer_prefix=s.answer_prefix) for e in train_examples]
    state = init_state(model, tokenizer, s)
    if ckpt is not None:
        load_checkpoint(state, ckpt)
        _truncate_log(out / "metrics.jsonl", state.step)
        _truncate_log(out / "samples.jsonl", state.step)
    elif holdout and not (out / "eval-step-000000").exists():
        m = evaluate_holdout(state, holdout, out / "eval-step-000000")
        _log(out / "metrics.jsonl", {"step": 0, "eval": _eval_summary(m)})

    score_all = judge_score_fn(train_examples, s.reward, s.answer_prefix)
    labels = [e.expected_decision.value for e in train_examples]
    bar = tqdm(range(state.step + 1, s.steps + 1), desc="ppo", disable=not progress, initial=state.step,
               total=s.steps)
    t_start = time.perf_counter()
    for step in bar:
        last = step == s.steps or (s.max_minutes is not None and time.perf_counter() - t_start > s.max_minutes * 60)
        if s.balance_classes:
            idx = select_prompts_by_class(labels, s.prompts_per_step, s.seed, step)
        else:
            idx = select_prompts(len(train_examples), s.prompts_per_step, s.seed, step)
        step_prompts = [prompts[i] for i in idx]
        infos: list[dict] = []

        def score(j, completion, idx=idx):
            r, info = score_all(idx[j], completion)
            infos.append(info)
            return r, {k: v for k, v in info.items() if not k.startswith("_")}

        metrics = ppo_iteration(state, step_prompts, score, step)
        conf = [i["_conf"] if (i["_valid"] and i["_conf"] is not None) else 0.0 for i in infos]
        metrics["ece"] = ece(conf, [i["_correct"] for i in infos])
        if holdout and ((s.eval_every and step % s.eval_every == 0) or last):
            metrics["eval"] = _eval_summary(evaluate_holdout(state, holdout, out / f"eval-step-{step:06d}"))
        _log(out / "metrics.jsonl", metrics)
        _log(out / "samples.jsonl", {"step": step, "samples": [  # every answer of the step, for reading
            {"gold": i["_gold"], "reward": round(i["_reward"], 4), "text": i["_text"]} for i in infos]})
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", acc=f"{metrics.get('accuracy', 0):.2f}",
                        kl=f"{metrics['kl']:.3f}")
        if step % s.save_every == 0 or last:
            save_checkpoint(state, out)
        if last:
            break
    from mlxhv.rl.plot import plot_run

    plot_run(out)
    return state


def _eval_summary(m: dict) -> dict:
    keys = ("accuracy", "ece", "brier", "ece_answered", "brier_answered", "macro_f1", "parse_failure_rate")
    return {k: m.get(k) for k in keys if k in m}
