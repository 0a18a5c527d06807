"""What differs between PPO and GRPO, behind one seam: a rollout's advantages and a minibatch's loss.

`make_algorithm(settings)` picks one at start (`settings.algo`); `trainer.rl_iteration` calls `advantages` once
per rollout and `loss` once per minibatch, and never asks which it holds. Everything else — rollouts, the passes
(`passes.py`), the reference (LoRA off), minibatches, clipping, checkpoints — is shared.

- `PPO`: the KL penalty is a per-token reward, the score is added at the last token, GAE with the value head,
  clipped surrogate + clipped value loss (`ppo.py`).
- `GRPO`: no critic; advantages are group-normalised scores on every token, the KL penalty (k3) is a loss term
  against the same LoRA-off reference (`grpo.py`).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from mlxhv import distributed
from mlxhv.rl.grpo import group_advantages, grpo_loss
from mlxhv.rl.ppo import gae, kl_penalised_rewards, leave_one_out_scores, masked_whiten, ppo_loss


def whiten(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`ppo.masked_whiten` over the masked entries of every rank together (unbiased variance)."""
    if distributed.size() == 1:
        return np.array(masked_whiten(mx.array(x), mx.array(mask)))
    n, total = distributed.all_sum(np.array([mask.sum(), (x * mask).sum()], np.float64))
    mean = total / n
    var = distributed.all_sum(float((((x - mean) ** 2) * mask).sum())) / max(n - 1, 1)
    return ((x - mean) / np.sqrt(var + 1e-8) * mask).astype(np.float32)


class PPO:
    uses_critic = True
    loss_keys = ("loss", "pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "vf_clipfrac", "grad_norm")

    def __init__(self, settings):
        self.s = settings

    def advantages(self, scores: np.ndarray, prompt_index: np.ndarray, old_logprobs: np.ndarray,
                   ref_logprobs: np.ndarray, old_values: np.ndarray, mask: np.ndarray, kl_coef: float):
        """Per-token rewards -beta * KL with the score at the last token, then GAE. scores (N,), the rest (N, L).
        Returns (advantages, returns, kl), each (N, L)."""
        s = self.s
        if s.score_baseline == "loo":
            scores = leave_one_out_scores(scores, prompt_index)
        if s.whiten_rewards:  # over every rank's scores
            mean, std = distributed.mean_std(scores)
            scores = ((scores - mean) / (std + 1e-8)).astype(np.float32)
        rewards, kl = kl_penalised_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef)
        advantages, returns = gae(rewards, old_values, mask, s.gamma, s.lam)
        if s.whiten_advantages:
            advantages = whiten(advantages, mask)
        return advantages.astype(np.float32), returns.astype(np.float32), kl

    @staticmethod
    def loss_units(mask: np.ndarray) -> float:
        """What the loss is a mean over (tokens): ranks weight their loss by their share of it."""
        return float(mask.sum())

    def loss(self, logprobs, values, entropy, mb: dict, kl_coef: float):
        return ppo_loss(logprobs, values, entropy, mb["old_logprobs"], mb["old_values"], mb["advantages"],
                        mb["returns"], mb["mask"], self.s.loss)


class GRPO:
    uses_critic = False
    loss_keys = ("loss", "pg_loss", "kl_loss", "entropy", "approx_kl", "clipfrac", "grad_norm")

    def __init__(self, settings):
        self.s = settings

    def advantages(self, scores: np.ndarray, prompt_index: np.ndarray, old_logprobs: np.ndarray,
                   ref_logprobs: np.ndarray, old_values: np.ndarray, mask: np.ndarray, kl_coef: float):
        """Group-normalised score of each answer on each of its tokens; returns = 0 (no critic); kl (N, L) of the
        rollout, for the log and the KL controller."""
        g = self.s.grpo
        adv = group_advantages(scores, prompt_index, g.scale_rewards, g.eps)  # (N,)
        advantages = (adv[:, None] * mask).astype(np.float32)  # (N, L)
        kl = (old_logprobs - ref_logprobs) * mask
        return advantages, np.zeros_like(advantages), kl

    def loss_units(self, mask: np.ndarray) -> float:
        """dapo: a token mean; grpo (mean of sequence means) and dr_grpo (sum / rows x budget): rows."""
        return float(mask.sum()) if self.s.grpo.loss_type == "dapo" else float(len(mask))

    def loss(self, logprobs, values, entropy, mb: dict, kl_coef: float):
        return grpo_loss(logprobs, entropy, mb["old_logprobs"], mb["ref_logprobs"], mb["advantages"], mb["mask"],
                         self.s.grpo, kl_coef, self.s.max_new_tokens)


ALGORITHMS = {"ppo": PPO, "grpo": GRPO}


def make_algorithm(settings) -> PPO | GRPO:
    return ALGORITHMS[settings.algo](settings)
