"""Shared-prompt passes: the k answers to one prompt run the prompt once, not k times.

A rollout holds k answers per prompt, and a prompt is most of a row (~340 of ~355 tokens for the judge). Every
pass after the rollout — old log-probs, reference log-probs, each PPO epoch — would otherwise run each prompt k
times. Here a group (one prompt, its k answers) goes through each block as

    prompt (1, P, H) -> block, filling a KV cache -> cache repeated k times -> answers (k, R, H) -> block

so the answers attend to the prompt's keys and values exactly as in a full pass over prompt + answer (RoPE
offsets from the cache, causal mask aligned bottom-right). `PrefixCache` concatenates instead of writing into a
buffer, so gradients flow through the prompt's keys and values into the LoRA weights of the prompt positions,
as in a full pass, summed over the k answers by `mx.repeat`'s vjp.

Shared prefix: the prompts of a rollout also share their opening (system prompt and chat template, 205 of ~500
tokens for the judge), as the engine's prompts do. Its positions are split off the same way
(`engine.common_prefix_length`): each pass runs them once through each block (`prefix_states`), and every group's
own prompt and answers start from their keys and values (`run_blocks(..., prefix)`), so the prefix is computed
once per pass instead of once per group. `sft.py`'s prompt trunk uses the same two functions.

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


@dataclass
class Trunk:
    """Hidden states after the frozen blocks, computed once per rollout."""
    prefix: mx.array | None  # (1, C, H) the shared prefix (None when C = 0)
    groups: list[tuple[mx.array, mx.array]]  # per group: its own prompt (1, P - C, H), answer inputs (k, L - 1, H)


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


def shared_prefix_length(groups: list[Group]) -> int:
    """C: positions every group's prompt starts with; each group keeps at least its last prompt token (0 for a
    single group: there is nothing to share)."""
    from mlxhv.engine import common_prefix_length

    return common_prefix_length([g.prompt.tolist() for g in groups]) if len(groups) > 1 else 0


def _mask(n: int):
    return "causal" if n > 1 else None


def prefix_states(blocks, h: mx.array) -> tuple[mx.array, list[tuple]]:
    """h (1, C, H) through `blocks` -> (the states after them, per block the (keys, values, offset) that later
    positions attend to)."""
    kv = []
    for block in blocks:
        cache = PrefixCache()
        h = block(h, _mask(h.shape[1]), cache=cache)
        kv.append((cache.keys, cache.values, cache.offset))
    return h, kv


def run_blocks(blocks, hp: mx.array, hr: mx.array, prefix: list[tuple] | None = None) -> tuple[mx.array, mx.array]:
    """hp (1, P, H) prompt states, hr (k, R, H) answer states -> the same after `blocks`; the prompt runs once.
    `prefix` (from `prefix_states` over the same blocks): positions before the prompt's, attended to as cached."""
    k, R = hr.shape[0], hr.shape[1]
    for i, block in enumerate(blocks):
        cache = PrefixCache() if prefix is None else PrefixCache(*prefix[i])
        hp = block(hp, _mask(hp.shape[1]), cache=cache)
        if R:
            hr = block(hr, _mask(R), cache=cache.repeat(k))
    return hp, hr


def _embed(model, g: Group, answers, C: int) -> tuple[mx.array, mx.array]:
    """Embeddings of the prompt past the shared prefix (1, P - C, H) and of the answer tokens fed as inputs
    (k, R, H). `answers` (k, L) are the response targets; token t's state predicts token t + 1, so the last
    column is not an input."""
    embed = model.model.embed_tokens
    return embed(mx.array(g.prompt[C:])[None]), embed(mx.array(answers[:, :-1]))


def _embed_prefix(model, groups: list[Group], C: int) -> mx.array:
    return model.model.embed_tokens(mx.array(groups[0].prompt[:C])[None])  # (1, C, H)


def group_trunk(model, batch: RolloutBatch, groups: list[Group], start: int, C: int = 0) -> Trunk:
    """Hidden states after the first `start` blocks: the shared prefix's (its first C positions) and each
    group's own."""
    blocks = model.model.layers[:start]
    prefix_h, kv = None, None
    if C:
        prefix_h, kv = prefix_states(blocks, _embed_prefix(model, groups, C))
        mx.eval(prefix_h, kv)
    out = []
    for g in groups:
        hp, hr = run_blocks(blocks, *_embed(model, g, batch.targets[g.rows], C), kv)
        mx.eval(hp, hr)
        out.append((hp, hr))
    return Trunk(prefix_h, out)


def grouped_forward(model, value_head, groups: list[Group], targets: mx.array, temperature: float,
                    trunk: Trunk | None = None, start: int = 0, with_entropy: bool = True, C: int = 0):
    """`response_forward` for the rows of `groups`, in that order (rows of each group, group after group).

    targets (B, L) -> logprobs (B, L), entropy (B, L) or None, values (B, L) or None. `trunk` holds
    `group_trunk(..., start, C)` states for these groups (or None: start from the embeddings). The first C
    prompt positions, shared by every group, run once."""
    inner = model.model
    L = targets.shape[1]
    blocks = inner.layers if trunk is None else inner.layers[start:]
    kv = None
    if C:
        _, kv = prefix_states(blocks, _embed_prefix(model, groups, C) if trunk is None else trunk.prefix)
    states, row = [], 0
    for j, g in enumerate(groups):
        k = len(g.rows)
        if trunk is None:
            hp, hr = _embed(model, g, targets[row:row + k], C)
        else:
            hp, hr = trunk.groups[j]
            hr = hr[:, : L - 1]
        row += k
        hp, hr = run_blocks(blocks, hp, hr, kv)
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
