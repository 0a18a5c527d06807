"""Shared-prompt passes: the k answers to one prompt run the prompt once, not k times.

A rollout holds k answers per prompt, and a prompt is most of a row (~340 of ~355 tokens for the judge). Every
pass after the rollout — old log-probs, reference log-probs, each PPO epoch — would otherwise run each prompt k
times. Here a group (one prompt, its k answers) goes through each block as

    prompt (1, P, H) -> block, filling a KV cache -> cache repeated k times -> answers (k, R, H) -> block

so the answers attend to the prompt's keys and values exactly as in a full pass over prompt + answer (RoPE
offsets from the cache, causal mask aligned bottom-right). `PrefixCache` concatenates instead of writing into a
buffer, so gradients flow through the prompt's keys and values into the LoRA weights of the prompt positions,
as in a full pass, summed over the k answers by `mx.repeat`'s vjp.

Frozen trunk: blocks below the first LoRA block (`LoRASettings.num_layers`) are the same function in every pass
of an iteration, so `group_trunk` runs them once per rollout and later passes start from its hidden states.

For plain decoders (embed, blocks, norm; no sliding window): `shared_start(model)` is None for others, and the
trainer then runs whole rows (`passes.RowPasses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxhv.rl.rollout import RolloutBatch, response_heads


class PrefixCache:
    """The smallest KV cache the mlx-lm attention layers accept; concatenation keeps it differentiable."""

    def __init__(self, keys=None, values=None, offset: int = 0):
        self.keys, self.values, self.offset = keys, values, offset

    def update_and_fetch(self, keys, values):  # (B, n_kv, L, D) each
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = mx.concatenate([self.keys, keys], axis=2)
            self.values = mx.concatenate([self.values, values], axis=2)
        self.offset += keys.shape[2]
        return self.keys, self.values

    def repeat(self, k: int) -> "PrefixCache":
        return PrefixCache(mx.repeat(self.keys, k, axis=0), mx.repeat(self.values, k, axis=0), self.offset)


def shared_start(model) -> int | None:
    """The first block holding a LoRA layer (0 without LoRA): blocks below it are the frozen trunk. None when
    the model is not a plain decoder these passes can run."""
    from mlxhv.engine import _PLAIN_HEAD
    from mlxhv.rl.lora import LoRALinear

    inner = getattr(model, "model", None)
    if getattr(model, "model_type", None) not in _PLAIN_HEAD or not all(
            hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        return None
    if any(getattr(b, "use_sliding", False) for b in inner.layers):
        return None
    for i, block in enumerate(inner.layers):
        if any(isinstance(m, LoRALinear) for _, m in block.named_modules()):
            return i
    return 0


@dataclass
class Group:
    rows: np.ndarray  # (k,) rows of the rollout batch that answer this prompt
    prompt: np.ndarray  # (P,) prompt token ids


def make_groups(batch: RolloutBatch) -> list[Group]:
    """One group per prompt, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for b, pi in enumerate(batch.prompt_index.tolist()):
        groups.setdefault(pi, []).append(b)
    out = []
    for rows in groups.values():
        P = int(batch.positions[rows[0], 0]) + 1  # response token 0 is predicted at column P - 1
        out.append(Group(np.array(rows), batch.tokens[rows[0], :P]))
    return out


def _mask(n: int):
    return "causal" if n > 1 else None


def run_blocks(blocks, hp: mx.array, hr: mx.array) -> tuple[mx.array, mx.array]:
    """hp (1, P, H) prompt states, hr (k, R, H) answer states -> the same after `blocks`; the prompt runs once."""
    k, R = hr.shape[0], hr.shape[1]
    for block in blocks:
        cache = PrefixCache()
        hp = block(hp, _mask(hp.shape[1]), cache=cache)
        if R:
            hr = block(hr, _mask(R), cache=cache.repeat(k))
    return hp, hr


def _embed(model, g: Group, answers) -> tuple[mx.array, mx.array]:
    """Embeddings of the prompt (1, P, H) and of the answer tokens fed as inputs (k, R, H). `answers` (k, L) are
    the response targets; token t's state predicts token t + 1, so the last column is not an input."""
    embed = model.model.embed_tokens
    return embed(mx.array(g.prompt)[None]), embed(mx.array(answers[:, :-1]))


def group_trunk(model, batch: RolloutBatch, groups: list[Group], start: int) -> list[tuple[mx.array, mx.array]]:
    """Hidden states after the first `start` blocks, per group: [(hp (1, P, H), hr (k, L - 1, H))]."""
    out = []
    for g in groups:
        hp, hr = run_blocks(model.model.layers[:start], *_embed(model, g, batch.targets[g.rows]))
        mx.eval(hp, hr)
        out.append((hp, hr))
    return out


def grouped_forward(model, value_head, groups: list[Group], targets: mx.array, temperature: float,
                    trunk=None, start: int = 0, with_entropy: bool = True):
    """`response_forward` for the rows of `groups`, in that order (rows of each group, group after group).

    targets (B, L) -> logprobs (B, L), entropy (B, L) or None, values (B, L) or None. `trunk` holds
    `group_trunk(..., start)` entries for these groups (or None: start from the embeddings)."""
    inner = model.model
    L = targets.shape[1]
    states, row = [], 0
    for j, g in enumerate(groups):
        k = len(g.rows)
        if trunk is None:
            hp, hr = _embed(model, g, targets[row:row + k])
            blocks = inner.layers
        else:
            hp, hr = trunk[j]
            hr = hr[:, : L - 1]
            blocks = inner.layers[start:]
        row += k
        hp, hr = run_blocks(blocks, hp, hr)
        last = mx.broadcast_to(hp[:, -1:], (k, 1, hp.shape[-1]))  # the prompt's last state predicts token 0
        states.append(inner.norm(mx.concatenate([last, hr], axis=1)))  # (k, L, H)
    return response_heads(model, value_head, mx.concatenate(states), targets, temperature, with_entropy)


def chunks(items, sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive items whose sizes add up to at most `limit` rows (at least one item each)."""
    out, cur, n = [], [], 0
    for it, size in zip(items, sizes):
        if cur and n + size > limit:
            out.append(cur)
            cur, n = [], 0
        cur.append(it)
        n += size
    if cur:
        out.append(cur)
    return out


def group_minibatches(groups: list[Group], rows_per_minibatch: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled minibatches of whole groups (indices into `groups`), about `rows_per_minibatch` rows each."""
    order = rng.permutation(len(groups)).tolist()
    return chunks(order, [len(groups[j].rows) for j in order], rows_per_minibatch)
