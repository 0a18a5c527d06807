"""The SFT examples as token rows, and the loss on the judge's answer (the module doc of `mlxhv.rl.sft` states
the target and the loss; this module is what builds and scores them).

- `answer_text` / `encode_example` / `JudgeAnswers`: an Example → (tokens, offset), mlx-lm's dataset protocol;
- `make_batch`: rows → the (B, T+1) batch, lengths (B, 2) and the answer columns (B, K);
- `FrozenTrunk`: each row's states below the first LoRA block, computed once; `common_prefix` the shared opening;
- `answer_logits` / `answer_loss`: logits at the answer columns and the (decision-weighted) cross-entropy;
- `decision_tokens`: where the three decisions' answers first differ, and their tokens there.
"""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxhv.errors import SettingsError
from mlxhv.rl.value import lm_head


def answer_text(example, answer_prefix: str = "") -> str:
    """The judge's answer the example teaches, after `answer_prefix`:
    json.dumps({"decision", "confidence" (2 decimals), "refined_hypothesis" (REFINED only, else null)}).
    `example=None` checks only that the prefix opens every such answer (SettingsError otherwise)."""
    if example is None:
        obj = {"decision": "VALIDATED", "confidence": 0.9, "refined_hypothesis": None}
    else:
        decision = example.expected_decision.value
        obj = {"decision": decision, "confidence": round(float(example.confidence), 2),
               "refined_hypothesis": example.refined_hypothesis if decision == "REFINED" else None}
    full = json.dumps(obj, ensure_ascii=False)
    if not full.startswith(answer_prefix):
        raise SettingsError(f"answer_prefix {answer_prefix!r}: the JSON answer {full[:40]!r}… does not start with "
                            "it; SFT needs a prefix of the answer (\"\", or \"json\")")
    return full[len(answer_prefix):]


def encode_example(tokenizer, example, system_prompt: str, answer_prefix: str) -> tuple[list[int], int]:
    """(prompt + answer + EOS token ids, prompt length): one mlx-lm dataset item."""
    from mlxhv.prompts import render_prompt

    prompt = render_prompt(tokenizer, example, system_prompt, answer_prefix)
    answer = list(tokenizer.encode(answer_text(example, answer_prefix), add_special_tokens=False))
    return prompt + answer + [tokenizer.eos_token_id], len(prompt)


class JudgeAnswers:
    """The examples as an mlx-lm dataset (`__getitem__`, `__len__`, `process` -> (tokens, offset)); wrap it in
    `mlx_lm.tuner.datasets.CacheDataset` to tokenize each example once."""

    def __init__(self, examples, tokenizer, system_prompt: str, answer_prefix: str):
        self.examples, self.tokenizer = list(examples), tokenizer
        self.system_prompt, self.answer_prefix = system_prompt, answer_prefix

    def __getitem__(self, idx: int):
        return self.examples[idx]

    def __len__(self) -> int:
        return len(self.examples)

    def process(self, example) -> tuple[list[int], int]:
        return encode_example(self.tokenizer, example, self.system_prompt, self.answer_prefix)


def make_batch(items: list[tuple[list[int], int]], pad_to: int = 32, window_to: int = 8):
    """Right-padded rows and the answer window, as `answer_loss` takes them.

    -> batch (B, T+1) int32 (T+1 = longest row rounded up to `pad_to`, plus one, as mlx-lm pads),
       lengths (B, 2) [offset, length], positions (B, K) int32: column whose output predicts answer token k
       (offset - 1 + k; padded slots hold length - 1, whose target lies past the row, so the mask drops them)."""
    n = max(len(t) for t, _ in items)
    width = 1 + pad_to * ((n + pad_to - 1) // pad_to)
    k = max(len(t) - off for t, off in items)
    k = window_to * ((k + window_to - 1) // window_to)
    batch = np.zeros((len(items), width), np.int32)
    positions = np.zeros((len(items), k), np.int32)
    for b, (tokens, off) in enumerate(items):
        batch[b, : len(tokens)] = tokens
        m = len(tokens) - off
        positions[b, :m] = np.arange(off - 1, off - 1 + m)
        positions[b, m:] = len(tokens) - 1
    lengths = np.array([[off, len(t)] for t, off in items], np.int32)
    return mx.array(batch), mx.array(lengths), mx.array(positions)


class FrozenTrunk:
    """Hidden states entering block `start` (the first LoRA block), kept per example: the blocks below are frozen,
    so these are the same at every step. Every prompt opens with the same `prefix` tokens (system prompt and
    template), so the trunk runs the prefix once, keeps its keys and values per block, and runs each row's rest
    against them:

        prefix (1, P) -> blocks [0, start) -> hp (1, P, H), K/V per block
        row[P : len - 1] -> blocks [0, start) attending to the prefix K/V -> hr (len - 1 - P, H)

    `batch(...)` lays the rows out right-padded (B, R, H); `answer_loss` then runs blocks [start, …) as
    `prefix.run_blocks` does (the prefix once, the rows attending to it), which equals a full pass."""

    def __init__(self, model, start: int, prefix: list[int]):
        from mlxhv.rl.prefix import prefix_states

        self.model, self.start, self.P = model, start, len(prefix)
        self.hp, self.kv = prefix_states(model.model.layers[:start], model.model.embed_tokens(mx.array(prefix)[None]))
        mx.eval(self.hp, self.kv)  # hp (1, P, H); kv per block
        self._rows: dict = {}

    def row(self, key, tokens: list[int]) -> mx.array:
        """(len - 1 - P, H): the trunk states of the row's inputs after the prefix."""
        if key not in self._rows:
            from mlxhv.rl.prefix import run_blocks

            h = self.model.model.embed_tokens(mx.array(tokens[self.P:-1])[None])  # (1, R, H)
            h, _ = run_blocks(self.model.model.layers[: self.start], h, h[:, :0], self.kv)
            mx.eval(h)
            self._rows[key] = h[0]
        return self._rows[key]

    def batch(self, keys, items, width: int) -> mx.array:
        """(B, width - 1 - P, H): the rows' trunk states, right-padded to the batch's input width."""
        rows = [self.row(k, t) for k, (t, _) in zip(keys, items)]
        R = width - 1 - self.P
        return mx.stack([mx.pad(r, [(0, R - r.shape[0]), (0, 0)]) for r in rows])


def common_prefix(rows: list[list[int]], limit: int) -> list[int]:
    """The longest token prefix shared by every row, at most `limit` tokens (`engine.common_prefix_length`, as
    the engine and the RL passes split it)."""
    from mlxhv.engine import common_prefix_length

    return rows[0][: min(common_prefix_length(rows), limit)]


def answer_logits(model, batch, lengths, positions=None, trunk=None, prefix=None, start: int = 0):
    """Logits (B, K, V) at `positions` (every column when None), their targets (B, K) and the answer mask (B, K):
    target t = positions + 1 counts when offset <= t < length. With `trunk` (B, R, H) and `prefix` (1, P, H), the
    states entering block `start` of the rows' columns P… and of the shared prefix, only blocks [start, …) run."""
    from mlxhv.rl.prefix import run_blocks

    inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each; targets[:, j] is token j + 1
    if positions is None:
        positions = mx.broadcast_to(mx.arange(inputs.shape[1])[None], inputs.shape)  # (B, T)
    if trunk is None:
        h, cols = model.model(inputs), positions  # (B, T, H)
    else:
        _, h = run_blocks(model.model.layers[start:], prefix, trunk)  # (B, R, H): columns P …
        h, cols = model.model.norm(h), positions - prefix.shape[1]
    idx = mx.broadcast_to(cols[..., None], cols.shape + (h.shape[-1],))
    h_ans = mx.take_along_axis(h, idx, axis=1)  # (B, K, H)
    tgt = mx.take_along_axis(targets, positions, axis=1)  # (B, K)
    logits = lm_head(model, h_ans).astype(mx.float32)  # (B, K, V)
    t = positions + 1  # index of the predicted token in the row
    mask = mx.logical_and(t >= lengths[:, 0:1], t < lengths[:, 1:])  # (B, K)
    return logits, tgt, mask


def answer_loss(model, batch, lengths, positions=None, trunk=None, prefix=None, start: int = 0,
                decision_weight: float = 1.0):
    """mlx-lm's `default_loss` contract: (model, batch (B, T+1), lengths (B, 2) [offset, length]) -> (mean CE
    over answer tokens, number of answer tokens); targets t with offset <= t < length count (module doc).
    With `positions` (B, K) the head runs only on those columns; with `trunk`/`prefix` (`FrozenTrunk`) only
    the blocks from `start` on run.

    `decision_weight` w weighs the first answer token (t = offset; after the JSON answer prefix, the first token
    of the decision word) w times: loss = sum_t m_t c_t CE_t / sum_t m_t c_t, c_t = w at t = offset, else 1."""
    logits, tgt, mask = answer_logits(model, batch, lengths, positions, trunk, prefix, start)
    # The mask is summed once and the sum reused (as mlx-lm's default_loss does): under mx.compile (mlx-lm's
    # training step) mlx 0.32.4 fails with `IndexError: _Map_base::at` on a graph that sums the same mask twice.
    ntoks = mask.sum()
    if decision_weight != 1.0:
        t = (positions if positions is not None else mx.arange(batch.shape[1] - 1)[None]) + 1  # predicted token
        weights = mask * mx.where(t == lengths[:, 0:1], decision_weight, 1.0)
        total = weights.sum()
    else:
        weights, total = mask, ntoks
    ce = nn.losses.cross_entropy(logits, tgt) * weights
    return ce.sum() / total, ntoks


def decision_tokens(tokenizer, answer_prefix: str) -> tuple[int, dict[str, int]] | None:
    """(k, {decision: token id}): the first answer token k at which the three decisions' answers differ, and
    each decision's token there; None when they do not differ in one token (the val decision is then unread)."""
    from mlxhv.schema import DECISIONS

    enc = {}
    for d in DECISIONS:
        obj = json.dumps({"decision": d, "confidence": 0.9, "refined_hypothesis": None})[len(answer_prefix):]
        enc[d] = list(tokenizer.encode(obj, add_special_tokens=False))
    n = min(len(v) for v in enc.values())
    k = next((i for i in range(n) if len({v[i] for v in enc.values()}) > 1), None)
    if k is None or len({v[k] for v in enc.values()}) != len(DECISIONS):
        return None
    return k, {d: v[k] for d, v in enc.items()}
