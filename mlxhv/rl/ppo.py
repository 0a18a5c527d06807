"""PPO math as plain functions, named as in the paper and cleanrl (Schulman et al. 2017; Ziegler et al. 2019).

All per-token arrays are (B, T) over response positions, with `mask` (B, T) = 1 on real response tokens.
Padding is decided by length, never by token id (SmolLM2 uses id 2 for EOS and padding alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np


def masked_mean(x: mx.array, mask: mx.array, axis=None) -> mx.array:
    return (x * mask).sum(axis=axis) / mx.maximum(mask.sum(axis=axis), 1)


def masked_whiten(x: mx.array, mask: mx.array, shift_mean: bool = True, eps: float = 1e-8) -> mx.array:
    """(x - mean) / std over the masked entries (unbiased variance, as TRL); padding comes back as 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    var = var * n / mx.maximum(n - 1, 1)
    out = (x - mean) * mx.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def token_logprobs(logits: mx.array, targets: mx.array, temperature: float = 1.0) -> mx.array:
    """log softmax(logits / T)[target]: (B, T, V), (B, T) -> (B, T). T is the sampling temperature."""
    logits = logits / temperature
    return mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1) - mx.logsumexp(logits, axis=-1)


def entropy_from_logits(logits: mx.array, temperature: float = 1.0) -> mx.array:
    """H = logsumexp(z) - sum softmax(z) z, z = logits / T: (B, T, V) -> (B, T)."""
    z = logits / temperature
    return mx.logsumexp(z, axis=-1) - (mx.softmax(z, axis=-1) * z).sum(-1)


def leave_one_out_scores(scores: np.ndarray, prompt_index: np.ndarray) -> np.ndarray:
    """score_i - mean of the other answers' scores to the same prompt (RLOO; Ahmadian et al. 2024).

    scores (B,), prompt_index (B,) -> (B,). A prompt answered once keeps its score. When every answer to a
    prompt scores the same (all wrong, say) each gets 0: nothing pushes the policy towards a class it already
    favours on prompts where it cannot yet tell the classes apart.
    """
    out = scores.astype(np.float64).copy()
    for p in np.unique(prompt_index):
        rows = np.flatnonzero(prompt_index == p)
        k = len(rows)
        if k > 1:
            out[rows] = scores[rows] - (scores[rows].sum() - scores[rows]) / (k - 1)
    return out.astype(scores.dtype)


def kl_penalised_rewards(scores: np.ndarray, logprobs: np.ndarray, ref_logprobs: np.ndarray, mask: np.ndarray,
                         kl_coef: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-token rewards r_t = -beta * (log pi - log pi_ref) and the score added at each sequence's last token.

    scores (B,), the rest (B, T). Returns (rewards (B, T), kl (B, T)).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(1).astype(int) - 1  # index of the final response token, by length
    rows = np.arange(len(scores))
    rewards[rows[last >= 0], last[last >= 0]] += scores[last >= 0]
    return rewards, kl


def gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens (Schulman et al. 2016).

    delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t ;  A_t = delta_t + gamma * lam * m_{t+1} * A_{t+1}
    Positions past a sequence's end have m = 0 and contribute nothing. Returns (advantages, returns = A + V).
    """
    B, T = rewards.shape
    adv = np.zeros((B, T), dtype=np.float32)
    last = np.zeros(B, dtype=np.float32)
    for t in reversed(range(T)):
        next_m = mask[:, t + 1] if t + 1 < T else np.zeros(B, dtype=np.float32)
        next_v = values[:, t + 1] if t + 1 < T else np.zeros(B, dtype=np.float32)
        delta = rewards[:, t] + gamma * next_v * next_m - values[:, t]
        last = delta + gamma * lam * next_m * last
        adv[:, t] = last * mask[:, t]
    return adv, (adv + values) * mask


@dataclass
class PPOLossSettings:
    clip_range: float = 0.2  # epsilon of the clipped surrogate
    clip_range_value: float = 0.2  # value clipping around the old values (PPO2 / N implementation details)
    vf_coef: float = 0.5
    ent_coef: float = 0.0


def ppo_loss(new_logprobs, new_values, entropy, mb_old_logprobs, mb_old_values, mb_advantages, mb_returns, mask,
             s: PPOLossSettings):
    """The clipped PPO objective. All inputs (B, T). Returns (loss, metrics dict of scalars)."""
    logratio = new_logprobs - mb_old_logprobs
    ratio = mx.exp(logratio)
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * mx.clip(ratio, 1 - s.clip_range, 1 + s.clip_range)
    pg_loss = masked_mean(mx.maximum(pg_loss1, pg_loss2), mask)

    v_loss_unclipped = (new_values - mb_returns) ** 2
    v_clipped = mb_old_values + mx.clip(new_values - mb_old_values, -s.clip_range_value, s.clip_range_value)
    v_loss_clipped = (v_clipped - mb_returns) ** 2
    v_loss = 0.5 * masked_mean(mx.maximum(v_loss_unclipped, v_loss_clipped), mask)

    entropy_loss = masked_mean(entropy, mask)
    loss = pg_loss + s.vf_coef * v_loss - s.ent_coef * entropy_loss
    metrics = {
        "pg_loss": pg_loss,
        "v_loss": v_loss,
        "entropy": entropy_loss,
        "approx_kl": masked_mean((ratio - 1) - logratio, mask),  # k3 estimator (Schulman's blog)
        "clipfrac": masked_mean((mx.abs(ratio - 1) > s.clip_range).astype(mx.float32), mask),
        "vf_clipfrac": masked_mean((mx.abs(new_values - mb_old_values) > s.clip_range_value).astype(mx.float32),
                                   mask),
    }
    return loss, metrics


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)."""

    kl_coef: float = 0.05
    target: float | None = 6.0  # None: a fixed coefficient
    horizon: int = 10000

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            proportional_error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
            self.kl_coef *= 1 + proportional_error * n_steps / self.horizon
        return self.kl_coef


def explained_variance(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """1 - Var[y - y_pred] / Var[y] (cleanrl); nan when Var[y] = 0."""
    var_y = np.var(y_true)
    return float("nan") if var_y == 0 else float(1 - np.var(y_true - y_pred) / var_y)


__all__ = [
    "masked_mean", "masked_whiten", "token_logprobs", "entropy_from_logits", "kl_penalised_rewards", "gae",
    "PPOLossSettings", "ppo_loss", "AdaptiveKLController", "explained_variance",
]
