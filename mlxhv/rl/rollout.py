"""Rollouts: sample k answers per prompt through the batched engine, then lay them out for the update.

A rollout batch holds N = prompts x k sequences, prompt + response, right-padded (causal attention makes right
padding harmless to the real positions). Response token t of row b sits at column `start[b] + t`; the logits and
hidden state that predict it are at column `start[b] + t - 1`, which `positions` holds. An answer that ended on
EOS keeps the EOS token as its last response token, so the policy is credited for stopping; padding is told apart
by length only (SmolLM2's EOS and pad are both id 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxhv.rl.ppo import entropy_from_logits, token_logprobs
from mlxhv.rl.value import lm_head


@dataclass
class RolloutBatch:
    tokens: np.ndarray  # (N, S) int32, prompt + response, right-padded
    positions: np.ndarray  # (N, L) int32, column whose output predicts response token t
    targets: np.ndarray  # (N, L) int32, response tokens
    mask: np.ndarray  # (N, L) float32, 1 on real response tokens
    prompt_index: np.ndarray  # (N,) which prompt each row answers


def eos_id(tokenizer) -> int:
    return tokenizer.eos_token_id


def build_batch(prompts: list[list[int]], completions, prompt_index: list[int], eos: int, pad: int = 0) -> RolloutBatch:
    """Lay out prompt + response rows; a response that stopped on EOS gets the EOS token appended."""
    rows, responses = [], []
    for comp, pi in zip(completions, prompt_index):
        resp = list(comp.tokens) + ([eos] if comp.finish_reason == "stop" else [])
        if not resp:  # an empty response that hit the budget at once: keep one EOS so the row has a target
            resp = [eos]
        rows.append(list(prompts[pi]) + resp)
        responses.append(resp)
    N = len(rows)
    S = max(len(r) for r in rows)
    L = max(len(r) for r in responses)
    tokens = np.full((N, S), pad, dtype=np.int32)
    positions = np.zeros((N, L), dtype=np.int32)
    targets = np.full((N, L), pad, dtype=np.int32)
    mask = np.zeros((N, L), dtype=np.float32)
    for b, (row, resp, pi) in enumerate(zip(rows, responses, prompt_index)):
        tokens[b, : len(row)] = row
        start = len(prompts[pi])
        n = len(resp)
        positions[b, :n] = np.arange(start - 1, start - 1 + n)
        positions[b, n:] = start - 1  # any valid column; masked out
        targets[b, :n] = resp
        mask[b, :n] = 1.0
    return RolloutBatch(tokens, positions, targets, mask, np.asarray(prompt_index))


def response_forward(model, value_head, tokens: mx.array, positions: mx.array, targets: mx.array,
                     temperature: float, with_entropy: bool = True):
    """Log-probs, entropy and values at response positions only (never the full (B, S, V) logits).

    tokens (B, S), positions/targets (B, L) -> logprobs (B, L), entropy (B, L) or None, values (B, L) or None.
    """
    h = model.model(tokens)  # (B, S, H)
    B, L = positions.shape
    idx = mx.broadcast_to(positions[..., None], (B, L, h.shape[-1]))
    h_resp = mx.take_along_axis(h, idx, axis=1)  # (B, L, H)
    return response_heads(model, value_head, h_resp, targets, temperature, with_entropy)


def response_heads(model, value_head, h_resp: mx.array, targets: mx.array, temperature: float,
                   with_entropy: bool = True):
    """From the final hidden states that predict each response token, h_resp (B, L, H): log-probs, entropy and
    values (B, L) each (entropy / values None when not asked for / no value head)."""
    logits = lm_head(model, h_resp).astype(mx.float32)  # (B, L, V)
    logprobs = token_logprobs(logits, targets, temperature)
    entropy = entropy_from_logits(logits, temperature) if with_entropy else None
    values = value_head(mx.stop_gradient(h_resp)) if value_head is not None else None
    return logprobs, entropy, values
