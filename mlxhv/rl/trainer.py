"""The RL loop: rollout -> scores -> advantages (PPO or GRPO) -> clipped policy-gradient epochs.

One iteration (`rl_iteration`) reads top to bottom against Algorithm 1 of the PPO paper and cleanrl's ppo.py;
`train` wraps it with data, logging, evaluation and checkpoints. Everything random is derived from
(settings.seed, step), so `--resume` replays exactly the run that a checkpoint came from.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlxhv import _blas, distributed
from mlxhv.errors import OutputExists, SettingsError
from mlxhv.paths import resolve_path
from mlxhv.rl.algorithms import make_algorithm
from mlxhv.rl.checkpoints import ADAPTER_FILES, latest_checkpoint, restore, truncate_log, write_checkpoint
from mlxhv.rl.lora import (LoRASettings, adapter_weights, apply_lora, load_adapters, lora_disabled, lora_weights)
from mlxhv.rl.passes import Minibatch, Passes, describe_passes, make_passes
from mlxhv.rl.ppo import AdaptiveKLController, explained_variance
from mlxhv.rl.rollout import build_batch, eos_id
from mlxhv.rl.value import ValueHead, hidden_size


from mlxhv.rl.settings import (  # noqa: F401  (the run's settings, re-exported)
    RLSettings, apply_adapter_prompt, restore_settings,
)


class Policy(nn.Module):
    """The language model (frozen base + LoRA) and the value head: one module, one optimizer."""

    def __init__(self, model: nn.Module, value_head: ValueHead):
        super().__init__()
        self.model = model
        self.value_head = value_head


@dataclass
class RLState:
    policy: Policy
    tokenizer: object
    optimizer: optim.Optimizer
    kl_ctl: AdaptiveKLController
    settings: RLSettings
    algo: object  # rl/algorithms.py: PPO or GRPO, picked from settings.algo
    step: int = 0
    skipped_updates: int = 0
    reference: dict | None = None  # the init adapter's weights when they are the KL reference; None: LoRA off


def reference_policy(state: RLState):
    """Context in which the policy model is the KL reference (`RLSettings.kl_reference`)."""
    model = state.policy.model
    return lora_disabled(model) if state.reference is None else lora_weights(model, state.reference)


def init_state(model, tokenizer, settings: RLSettings) -> RLState:
    """Wrap the model with LoRA (fresh, B = 0, or `settings.init_adapter`'s), add the value head and optimizer.
    With an init adapter, `settings.lora` becomes the adapter's layout (leave lora unset, or equal to that layout)."""
    if settings.init_adapter:
        where = resolve_path(settings.init_adapter)
        if not (where / "adapter_config.json").is_file():
            raise SettingsError(f"init_adapter {settings.init_adapter}: not an adapter directory "
                                "(no adapter_config.json)")
        layout = load_adapters(model, str(where))
        if settings.lora not in (LoRASettings(), layout):
            raise SettingsError("lora: the LoRA layout comes from init_adapter; leave lora unset")
        settings.lora = layout
    else:
        apply_lora(model, settings.lora, seed=settings.seed)
    reference = None
    if settings.init_adapter and settings.kl_reference == "init":
        reference = {k: mx.array(v) for k, v in adapter_weights(model).items()}  # a copy: training updates the own
    mx.random.seed(settings.seed)
    policy = Policy(model, ValueHead(hidden_size(model), settings.value_inner))
    optimizer = optim.AdamW(learning_rate=settings.lr, weight_decay=settings.weight_decay)
    optimizer.init(policy.trainable_parameters())
    mx.eval(policy.parameters(), optimizer.state)
    kl = AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
    return RLState(policy, tokenizer, optimizer, kl, settings, make_algorithm(settings), reference=reference)


def _loss_fn(policy: Policy, passes: Passes, mb: Minibatch, mb_data: dict, temperature: float, algo, kl_coef,
             weight: float | None):
    value_head = policy.value_head if algo.uses_critic else None
    logprobs, entropy, values = passes.forward(policy.model, value_head, mb, temperature)  # (b, width) each
    loss, metrics = algo.loss(logprobs, values, entropy, mb_data, kl_coef)
    return (loss if weight is None else loss * weight), metrics


def update_minibatch(state: RLState, passes: Passes, mb: Minibatch, data: dict[str, np.ndarray]) -> tuple[bool, dict]:
    """One gradient step on the rows of `mb` (`data`: per-token (N, L) arrays of the whole rollout, cut here to the
    minibatch's rows and width). A step whose loss or gradient norm is not finite is skipped.

    The gradient is clipped by one global norm over the LoRA weights and the value head together, so `vf_coef`
    does two things: it scales the value loss's gradient (under AdamW, whose step size is invariant to a constant
    scale of a parameter's gradient, that barely changes the head's own steps), and it sets how much of the shared
    clipping norm the head takes: a larger `vf_coef` makes clipping shrink the LoRA step sooner.

    On several ranks each holds its own minibatch; its loss is weighted by its share of what the loss averages
    over (`algo.loss_units`: tokens or rows) times the number of ranks, so the average of the ranks' gradients
    (`nn.average_gradients`) is the gradient of the loss over all ranks' rows together."""
    s = state.settings
    mb_data = {k: mx.array(v[mb.rows, : mb.width]) for k, v in data.items()}
    weight = None
    if distributed.size() > 1:
        units = state.algo.loss_units(data["mask"][mb.rows, : mb.width])
        weight = units * distributed.size() / distributed.all_sum(units)
    loss_and_grad = nn.value_and_grad(state.policy, _loss_fn)
    (loss, metrics), grads = loss_and_grad(state.policy, passes, mb, mb_data, s.temperature, state.algo,
                                           state.kl_ctl.kl_coef, weight)
    if weight is not None:
        with distributed.watchdog("gradient average"):
            grads = nn.average_gradients(grads)
    grads, grad_norm = optim.clip_grad_norm(grads, s.max_grad_norm)
    mx.eval(loss, grad_norm, metrics)  # one sync to decide whether the step is safe to apply
    finite = math.isfinite(loss.item()) and math.isfinite(grad_norm.item())
    if weight is not None:  # every rank takes the same decision
        finite = distributed.all_sum(0.0 if finite else 1.0) == 0
    if not finite:
        state.skipped_updates += 1
        return False, {}
    state.optimizer.update(state.policy, grads)
    mx.eval(state.policy.trainable_parameters(), state.optimizer.state)
    out = {k: v.item() for k, v in metrics.items()}
    out.update(loss=loss.item() if weight is None else loss.item() / weight, grad_norm=grad_norm.item())
    return True, out


def rl_iteration(state: RLState, prompts: list[list[int]], score_fn: Callable, step: int,
                 prompt_ids: list[int] | None = None) -> tuple[dict, list]:
    """Sample, score and update once: Algorithm 1 of the PPO paper, with the advantages and the loss of
    `state.algo` (PPO or GRPO, rl/algorithms.py) and the passes of `passes.make_passes`.

    `score_fn(prompt_index, completion)` returns a record with a `reward` float (the task's `Scored`). Returns
    (metrics, the records in rollout order: k per prompt, prompt after prompt).

    Launched on several ranks (`mlx.launch`), `prompts` are this rank's share of the step; what is batch-wide
    (whitening, the KL controller, the logged means) is computed over all ranks, gradients are averaged, and the
    records of every rank are returned (rank order). `prompt_ids` are the prompts' positions in the whole step
    (default 0, 1, …): each answer's random stream follows it, so a rank samples what one process would."""
    s, algo = state.settings, state.algo
    model = state.policy.model
    value_head = state.policy.value_head if algo.uses_critic else None

    # 1. rollouts: k samples per prompt, dropout off (LoRA dropout defaults to 0)
    t0 = time.perf_counter()
    prompt_index = [i for i in range(len(prompts)) for _ in range(s.samples_per_prompt)]
    N = len(prompt_index)
    ids = prompt_ids if prompt_ids is not None else range(len(prompts))
    streams = [p * s.samples_per_prompt + t for p in ids for t in range(s.samples_per_prompt)]
    completions, gen_stats = sample(state, [prompts[i] for i in prompt_index], step, streams)
    t_rollout = time.perf_counter() - t0

    # 2. scores from the task
    scored = [score_fn(pi, c) for pi, c in zip(prompt_index, completions)]
    scores = np.array([x.reward for x in scored], dtype=np.float32)  # (N,)
    batch = build_batch(prompts, completions, prompt_index, eos_id(state.tokenizer))
    mask = batch.mask  # (N, L)

    with _blas.threads(s.train_threads):  # whole sequences: compute-bound, 2 threads help (docs/design.md)
        # 3. old log-probs and values (policy), reference log-probs (LoRA off, or the init adapter's weights)
        t1 = time.perf_counter()
        passes = make_passes(model, batch, s.share_prompts, s.cache_trunk, s.minibatch_size)
        old_logprobs, old_values = passes.no_grad(model, value_head, s.temperature)  # (N, L) each
        with reference_policy(state):
            ref_logprobs, _ = passes.no_grad(model, None, s.temperature)
        t_reference = time.perf_counter() - t1

        # 4. advantages (PPO: KL-penalised rewards + GAE; GRPO: group-normalised scores)
        advantages, returns, kl = algo.advantages(scores, batch.prompt_index, old_logprobs, ref_logprobs, old_values,
                                                  mask, state.kl_ctl.kl_coef)

        # 5. epochs over shuffled minibatches
        t2 = time.perf_counter()
        rng = np.random.default_rng([s.seed, step, 1])
        data = {"mask": mask, "old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs, "old_values": old_values,
                "advantages": advantages, "returns": returns}
        logs: list[dict] = []
        skipped_before = state.skipped_updates
        for _ in range(s.ppo_epochs):
            for mb in passes.minibatches(rng, s.minibatch_size):
                ok, m = update_minibatch(state, passes, mb, data)
                if ok:
                    logs.append(m)
        t_update = time.perf_counter() - t2

    # 6. adapt beta towards the target sequence KL (over every rank's answers)
    seq_kl = distributed.mean(kl.sum(1))
    scored_all = distributed.gather_records(scored)
    state.kl_ctl.update(seq_kl, len(scored_all))
    state.step = step

    rewards = [x.reward for x in scored_all]
    metrics = {"step": step, "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
               "kl": seq_kl, "kl_coef": state.kl_ctl.kl_coef}
    if algo.uses_critic:
        metrics["explained_variance"] = _explained_variance(old_values[mask > 0], returns[mask > 0])
    metrics.update({
        "response_length": distributed.mean(mask.sum(1)),
        "truncated_frac": distributed.mean(np.array([c.finish_reason == "length" for c in completions], float)),
        "rollout_s": t_rollout, "reference_s": t_reference, "update_s": t_update,
        "rollout_gen_tok_s": gen_stats.generation_tps, "rollout_prompt_tok_s": gen_stats.prompt_tps,
        "update_tok_s": float(s.ppo_epochs * (batch.tokens.shape[1] * N)) / max(t_update, 1e-9),
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
        "skipped_updates": state.skipped_updates - skipped_before,
    })
    metrics.update(_mean_losses(logs, algo.loss_keys))
    return metrics, scored_all


def _explained_variance(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """`ppo.explained_variance` over every rank's tokens (moments summed over ranks)."""
    if distributed.size() == 1:
        return explained_variance(y_pred, y_true)
    d = y_true - y_pred
    n, sy, syy, sd, sdd = distributed.all_sum(np.array([y_true.size, y_true.sum(), (y_true ** 2).sum(), d.sum(),
                                                        (d ** 2).sum()], np.float64))
    var_y, var_d = syy / n - (sy / n) ** 2, sdd / n - (sd / n) ** 2
    return float("nan") if var_y <= 0 else float(1 - var_d / var_y)


def sample(state: RLState, prompts: list[list[int]], step: int, streams: list[int]):
    """The rollout: one sampled answer per prompt row through the batched engine; row i draws from random
    stream `streams[i]` of this step's seed."""
    from mlxhv.engine import GenerationSettings, generate

    s = state.settings
    gen = GenerationSettings(max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                             seed=s.seed * 1_000_003 + step, batch_size=s.rollout_batch_size,
                             prefill_threads=s.train_threads,
                             decode_threads=1,  # 1 thread is the safe choice for decode steps (docs/design.md)
                             streams=streams)
    return generate(state.policy.model, state.tokenizer, prompts, gen)


def _mean_losses(logs: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """Means over the applied minibatch updates of an iteration (nan when every update was skipped), averaged
    over ranks (every rank applies the same number of updates)."""
    means = np.array([np.mean([m[k] for m in logs]) if logs else np.nan for k in keys])
    if distributed.size() > 1:
        means = distributed.all_sum(means) / distributed.size()
    return {k: float(v) for k, v in zip(keys, means)}


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(state: RLState, out_dir: str | Path) -> Path:
    """step-NNNNNN/ (rl/checkpoints.write_checkpoint): adapters, judge_prompt.json, value head, optimizer and
    trainer state (step, KL coefficient, skipped updates, ranks, settings); published to the top of the run."""
    trainer_state = {"step": state.step, "kl_coef": state.kl_ctl.kl_coef, "skipped_updates": state.skipped_updates,
                     "world_size": distributed.size(), "settings": asdict(state.settings)}
    return write_checkpoint(out_dir, state.step, state.policy.model, state.settings.lora, state.optimizer,
                            prompt_config(state.settings), trainer_state,
                            arrays={"value_head.safetensors": state.policy.value_head},
                            published=ADAPTER_FILES + ("value_head.safetensors",))


def prompt_config(s: RLSettings):
    """How the trained adapter is to be prompted (saved beside it as judge_prompt.json, read by eval and Judge)."""
    from mlxhv.prompts import PromptConfig, load_system_prompt

    return PromptConfig(system_prompt=load_system_prompt(s.system_prompt_file), answer_prefix=s.answer_prefix,
                        max_tokens=s.eval_max_tokens or s.max_new_tokens)


def load_checkpoint(state: RLState, ckpt: str | Path) -> None:
    """Restore LoRA weights, value head, optimizer and counters into a freshly initialised state."""
    ts = restore(state.policy.model, state.optimizer, ckpt, arrays={"value_head.safetensors": state.policy.value_head})
    if ts.get("world_size", 1) != distributed.size():
        raise distributed.DistributedError(f"{ckpt}: written by {ts.get('world_size', 1)} rank(s); resume it with "
                                           f"the same number (this run has {distributed.size()})")
    state.step = ts["step"]
    state.kl_ctl.kl_coef = ts["kl_coef"]
    state.skipped_updates = ts["skipped_updates"]
    mx.eval(state.policy.parameters(), state.optimizer.state)


def _log(path: Path, record: dict) -> None:
    from mlxhv.data.io import append_jsonl

    append_jsonl(path, [record])


def train(settings: RLSettings, resume: bool = False, progress: bool = True, task=None) -> RLState:
    """Train with PPO or GRPO; writes metrics.jsonl, samples.jsonl, checkpoints and adapters under settings.out.

    `task` (default: the judge task of `rl/task.py` on settings.train) gives the prompts, picks each step's
    prompts, scores answers and adds its own numbers to each step's metrics. Under `mlx.launch` each rank takes
    every size-th prompt of a step; rank 0 alone writes files."""
    from tqdm import tqdm

    from mlxhv.data.io import load_examples
    from mlxhv.models import load
    from mlxhv.prompts import load_system_prompt
    from mlxhv.rl.curriculum import load_training_sets
    from mlxhv.rl.task import JudgeTask, evaluate_holdout

    s = settings
    rank, world = distributed.rank(), distributed.size()
    if s.prompts_per_step % world:
        raise SettingsError(f"prompts_per_step {s.prompts_per_step} does not split over {world} ranks: "
                            "make it a multiple of the number of ranks")
    out = Path(s.out)
    ckpt = latest_checkpoint(out) if resume else None
    if not resume and (out / "metrics.jsonl").exists():
        raise OutputExists(f"{out}: holds a run already; pass --resume to continue it or choose another --out")
    main = distributed.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)

    apply_adapter_prompt(s, out)
    system_prompt = load_system_prompt(s.system_prompt_file)  # a bad file fails before the model loads
    model, tokenizer = load(s.model, precision=s.precision)
    holdout = load_examples(s.holdout)[: s.eval_limit] if s.holdout else []  # paths or shipped names
    if task is None:
        examples = load_training_sets(s.train, s.synth, s.synth_seed, exclude=holdout)
        task = JudgeTask.build(examples, tokenizer, system_prompt, s.answer_prefix, s.reward, s.balance_classes,
                               s.curriculum, s.curriculum_ramp, s.steps)
    state = init_state(model, tokenizer, s)
    if main:  # after init_state: with init_adapter, settings.lora is the adapter's layout
        (out / "settings.json").write_text(json.dumps(asdict(s), indent=2))
        print(describe_passes(model, s.share_prompts, s.cache_trunk) + (f", {world} ranks" if world > 1 else ""),
              file=sys.stderr)  # once per run

    def evaluate(step: int) -> dict:
        return evaluate_holdout(state.policy.model, tokenizer, holdout, out / f"eval-step-{step:06d}",
                                model_name=s.model, max_tokens=s.eval_max_tokens or s.max_new_tokens,
                                batch_size=s.rollout_batch_size, answer_prefix=s.answer_prefix,
                                system_prompt_file=s.system_prompt_file)

    if ckpt is not None:
        load_checkpoint(state, ckpt)
        if main:
            truncate_log(out / "metrics.jsonl", state.step)
            truncate_log(out / "samples.jsonl", state.step)
    elif holdout and not (out / "eval-step-000000").exists():
        summary = evaluate(0)
        if main:
            _log(out / "metrics.jsonl", {"step": 0, "eval": summary})
    distributed.check_same(state.policy.trainable_parameters(), "initial weights")

    bar = tqdm(range(state.step + 1, s.steps + 1), desc=s.algo, disable=not (progress and main), initial=state.step,
               total=s.steps)
    t_start = time.perf_counter()
    for step in bar:
        last = step == s.steps or (s.max_minutes is not None and time.perf_counter() - t_start > s.max_minutes * 60)
        if world > 1:  # the ranks stop together
            last = distributed.all_sum(float(last)) > 0
        step_idx = task.select(step, s.prompts_per_step, s.seed)  # the same on every rank
        idx = step_idx[rank::world]
        metrics, scored = rl_iteration(state, [task.prompts[i] for i in idx],
                                       lambda j, completion: task.score(idx[j], completion), step,
                                       prompt_ids=list(range(rank, len(step_idx), world)))
        metrics.update(task.step_metrics(scored, step_idx))
        if world > 1 and s.check_every and step % s.check_every == 0:
            distributed.check_same(state.policy.trainable_parameters(), f"weights after step {step}")
        if holdout and ((s.eval_every and step % s.eval_every == 0) or last):
            metrics["eval"] = evaluate(step)
        if main:
            _log(out / "metrics.jsonl", metrics)
            _log(out / "samples.jsonl", task.sample_record(step, scored))
            if step % s.save_every == 0 or last:
                save_checkpoint(state, out)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", acc=f"{metrics.get('accuracy', 0):.2f}",
                        kl=f"{metrics['kl']:.3f}")
        if last:
            break
    if main:
        from mlxhv.rl.plot import plot_run

        plot_run(out)
    return state
