"""GRPO math as plain functions (Shao et al. 2024), with the loss variants of Dr. GRPO (Liu et al. 2025) and DAPO
(Yu et al. 2025), named as in TRL's GRPOTrainer. No critic: the baseline is the mean score of the prompt's group.

For the G answers i = 1..G to one prompt, with scores r_i, and per-token arrays (B, T) over response tokens:

    A_i       = (r_i - mean_g r) / (std_g r + eps)      scale_rewards "group" (GRPO; std with ddof 1, as TRL)
              = (r_i - mean_g r) / (std_batch r + eps)  "batch"
              =  r_i - mean_g r                          "none" (Dr. GRPO: no std, no difficulty bias)
    ratio_it  = exp(log pi(y_it) - log pi_old(y_it))
    pg_it     = -min(ratio_it A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) A_i)   (eps_high > eps_low: DAPO)
    kl_it     = exp(d_it) - d_it - 1,  d_it = log pi_ref(y_it) - log pi(y_it)       (k3, Schulman; >= 0)
    l_it      = pg_it + beta kl_it
    loss      = mean_i (sum_t m_it l_it / sum_t m_it)        loss_type "grpo" (sequence-level mean)
              = sum_it m_it l_it / sum_it m_it               "dapo" (token-level: long answers weigh more)
              = sum_it m_it l_it / (B * max_new_tokens)      "dr_grpo" (a constant normaliser)

The reference pi_ref is the policy the run started from (LoRA off, or the init adapter), as for PPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxhv.rl.ppo import masked_mean

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


@dataclass
class GRPOSettings:
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO)
    loss_type: str = "grpo"  # grpo (sequence mean) | dapo (token mean) | dr_grpo (constant normaliser)
    clip_low: float = 0.2  # eps_low of the clipped ratio
    clip_high: float = 0.2  # eps_high; DAPO's clip-higher uses 0.28
    eps: float = 1e-4  # added to the std, as TRL

    def __post_init__(self):
        from mlxhv.errors import SettingsError

        if self.scale_rewards not in SCALE_REWARDS:
            raise SettingsError(f"grpo.scale_rewards must be one of {', '.join(SCALE_REWARDS)}, "
                                f"not {self.scale_rewards!r}")
        if self.loss_type not in LOSS_TYPES:
            raise SettingsError(f"grpo.loss_type must be one of {', '.join(LOSS_TYPES)}, not {self.loss_type!r}")


def group_advantages(scores: np.ndarray, prompt_index: np.ndarray, scale_rewards: str = "group",
                     eps: float = 1e-4) -> np.ndarray:
    """A_i of the module docstring: scores (B,), prompt_index (B,) -> (B,) float32. A group of one answer gets 0."""
    scores = scores.astype(np.float64)
    adv = np.zeros_like(scores)
    std = np.zeros_like(scores)
    for p in np.unique(prompt_index):
        rows = np.flatnonzero(prompt_index == p)
        adv[rows] = scores[rows] - scores[rows].mean()
        std[rows] = scores[rows].std(ddof=1) if len(rows) > 1 else 0.0
    if scale_rewards == "group":
        adv = adv / (std + eps)
    elif scale_rewards == "batch":  # the std of every rank's scores together
        from mlxhv import distributed

        adv = adv / (distributed.mean_std(scores, ddof=1)[1] + eps)
    return adv.astype(np.float32)


def grpo_loss(new_logprobs, entropy, mb_old_logprobs, mb_ref_logprobs, mb_advantages, mask, s: GRPOSettings,
              beta: float, max_new_tokens: int):
    """The GRPO objective of the module docstring. Per-token inputs (B, T); mb_advantages (B, T) (A_i on every
    token of answer i). Returns (loss, metrics dict of scalars)."""
    logratio = new_logprobs - mb_old_logprobs
    ratio = mx.exp(logratio)
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * mx.clip(ratio, 1 - s.clip_low, 1 + s.clip_high)
    pg = mx.maximum(pg_loss1, pg_loss2)  # (B, T)
    d = mb_ref_logprobs - new_logprobs
    kl = mx.exp(d) - d - 1  # (B, T)
    per_token = (pg + beta * kl) * mask
    if s.loss_type == "grpo":
        loss = (per_token.sum(1) / mx.maximum(mask.sum(1), 1)).mean()
    elif s.loss_type == "dapo":
        loss = per_token.sum() / mx.maximum(mask.sum(), 1)
    else:
        loss = per_token.sum() / (mask.shape[0] * max_new_tokens)
    metrics = {
        "pg_loss": masked_mean(pg, mask),
        "kl_loss": masked_mean(kl, mask),
        "entropy": masked_mean(entropy, mask),
        "approx_kl": masked_mean((ratio - 1) - logratio, mask),
        "clipfrac": masked_mean(((ratio < 1 - s.clip_low) | (ratio > 1 + s.clip_high)).astype(mx.float32), mask),
    }
    return loss, metrics
