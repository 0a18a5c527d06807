"""The value head, and projecting hidden states to logits the way the mlx-lm model does.

V(s_t) = w2 · gelu(W1 h_t + b1) + b2, on the final (normed) hidden state h_t of the language model. The last
layer starts at zero so V = 0 at step 0 (N implementation details). The head reads `stop_gradient(h)`: the
critic's loss does not move the policy's LoRA weights (a departure from TRL's shared trunk; with a few dozen
samples per step a shared trunk lets a noisy critic drag the policy).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int, inner: int = 256):
        super().__init__()
        self.fc = nn.Linear(hidden_size, inner)
        self.out = nn.Linear(inner, 1)
        self.out.weight = mx.zeros_like(self.out.weight)
        self.out.bias = mx.zeros_like(self.out.bias)

    def __call__(self, h):  # (B, T, H) -> (B, T)
        return self.out(nn.gelu(self.fc(h.astype(mx.float32)))).squeeze(-1)


def hidden_size(model: nn.Module) -> int:
    return model.args.hidden_size


def lm_head(model: nn.Module, h: mx.array) -> mx.array:
    """Project hidden states to logits the way the mlx-lm model does (tied or separate head)."""
    if hasattr(model, "lm_head"):
        return model.lm_head(h)
    return model.model.embed_tokens.as_linear(h)
