"""Batched generation against references: mlx_lm.generate one prompt at a time, mlx_lm.batch_generate, each
prompt alone (batch size 1, no shared prefix), and a separate forward pass over prompt + completion for the
log-probs. Float32 fast path, few tokens."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlxhv.engine import (GenerationSettings, _top_p_mask, common_prefix_length, fit_batch_size, generate,
                          kv_bytes_per_token)
from mlxhv.errors import SettingsError
from mlxhv.models import apply_chat_template

QUESTIONS = [
    "What is the capital of France?",
    "Hi",
    "Write a haiku about the sea and the wind over the harbour at night.",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence, mentioning chlorophyll, sunlight, water and carbon dioxide.",
    "What is 12 times 13?",
    "Name a colour.",
    "Translate 'good morning' into Spanish, French and German, and say which is the most formal.",
]
ALONE = dict(batch_size=1, prefix_cache=False)  # each prompt by itself: the reference for batching and sharing


@pytest.fixture(scope="module")
def chat_prompts(smollm):
    _, tok = smollm
    prompts = [apply_chat_template(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) >= 6  # different lengths → real padding
    return prompts


def _forward_logprobs(model, prompt, tokens, temperature=1.0):
    """log p(tokens[j] | prompt + tokens[:j]) under softmax(logits / T), from one plain forward pass."""
    ids = mx.array(prompt + tokens)[None]  # (1, P + N)
    logits = model(ids)[0, len(prompt) - 1: len(prompt) - 1 + len(tokens)].astype(mx.float32) / temperature
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (N, V)
    return np.array(mx.take_along_axis(logp, mx.array(tokens)[:, None], axis=-1)[:, 0]).tolist()


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # every prompt keeps its last token
    assert common_prefix_length([[7], [7, 8]]) == 0
    assert common_prefix_length([[1, 2], [3, 4]]) == 0


def test_batched_greedy_matches_mlx_lm_one_at_a_time(smollm, chat_prompts, monkeypatch):
    """One batch, shared prefix (the chat template's opening): the same text as mlx_lm.generate per prompt, and the
    prompt-token count shows the prefix ran once. Decode steps read the prefix once for all rows
    (kernels.SharedPrefixCache, one per layer)."""
    import mlx_lm

    from mlxhv import kernels

    model, tok = smollm
    made = []
    init = kernels.SharedPrefixCache.__init__

    def counting(self, *args):
        made.append(1)
        init(self, *args)

    monkeypatch.setattr(kernels.SharedPrefixCache, "__init__", counting)
    comps, stats = generate(model, tok, chat_prompts, GenerationSettings(max_tokens=8, batch_size=8))
    assert stats.batches == 1 and len(made) == len(model.layers)
    for prompt, c in zip(chat_prompts, comps):
        ref = mlx_lm.generate(model, tok, prompt, max_tokens=8)
        assert c.text == ref
        assert c.prompt_tokens == len(prompt)
    P = common_prefix_length(chat_prompts)
    assert P > 10 and stats.prefix_tokens == P
    total = sum(map(len, chat_prompts))
    assert stats.prompt_tokens == total - (len(chat_prompts) - 1) * P
    assert stats.cached_prompt_tokens == (len(chat_prompts) - 1) * P
    assert stats.generation_tokens == sum(len(c.tokens) for c in comps)


def test_greedy_tokens_and_logprobs_equal_mlx_lm_batch_generate(smollm, chat_prompts):
    from mlx_lm import batch_generate

    model, tok = smollm
    comps, _ = generate(model, tok, chat_prompts, GenerationSettings(max_tokens=10, batch_size=4))
    ref = batch_generate(model, tok, chat_prompts, max_tokens=10, return_token_ids=True, return_logprobs=True,
                         completion_batch_size=4, prefill_batch_size=4)
    for c, toks, lps in zip(comps, ref.token_ids, ref.logprobs):
        assert c.tokens == toks
        np.testing.assert_allclose(c.logprobs, lps, atol=1e-4)


def test_batched_equals_alone_with_rows_finishing_early(smollm, chat_prompts):
    """16 tokens: short answers hit EOS and leave the batch (cache filtering) while others go on; batch 3 also
    refills the freed rows with waiting prompts (continuous batching)."""
    model, tok = smollm
    alone, _ = generate(model, tok, chat_prompts, GenerationSettings(max_tokens=16, **ALONE))
    for batch_size in (8, 3):
        batched, st = generate(model, tok, chat_prompts, GenerationSettings(max_tokens=16, batch_size=batch_size))
        reasons = {c.finish_reason for c in batched}
        assert reasons == {"stop", "length"}  # both kinds present, so rows left the batch mid-way
        for b, a in zip(batched, alone):
            assert b.tokens == a.tokens
            assert b.finish_reason == a.finish_reason
            np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-4)
        for c in batched:
            assert tok.eos_token_id not in c.tokens  # EOS excluded
            if c.finish_reason == "length":
                assert len(c.tokens) == 16
            assert len(c.logprobs) == len(c.tokens)
    assert st.batches >= 3  # prompts joined a running batch


def test_continuous_batching_per_prompt_budgets(smollm, chat_prompts):
    """Per-prompt max_tokens, EOS ignored: every prompt gets exactly its budget and the tokens it gets alone;
    continuous batching needs fewer decode steps than static batches of the same size."""
    model, tok = smollm
    budgets = [1, 9, 2, 12, 3, 7, 4, 5]
    common = dict(max_tokens=budgets, ignore_eos=True)
    alone, _ = generate(model, tok, chat_prompts, GenerationSettings(**common, **ALONE))
    cont, st_c = generate(model, tok, chat_prompts, GenerationSettings(batch_size=3, **common))
    static, st_s = generate(model, tok, chat_prompts, GenerationSettings(batch_size=3, continuous=False, **common))
    assert [len(c.tokens) for c in cont] == budgets
    assert all(c.finish_reason == "length" for c in cont)
    assert [c.tokens for c in cont] == [c.tokens for c in alone] == [c.tokens for c in static]
    # static: batches of 3 by length, each runs its longest budget; continuous refills, so fewer steps
    order = sorted(range(8), key=lambda i: (-len(chat_prompts[i]), chat_prompts[i]))
    assert st_s.steps == sum(max(budgets[i] for i in order[k:k + 3]) for k in range(0, 8, 3))
    assert st_c.steps < st_s.steps
    assert st_c.steps >= math.ceil(sum(budgets) / 3)


def test_greedy_logprobs_equal_a_separate_forward_pass(smollm, chat_prompts):
    model, tok = smollm
    comps, _ = generate(model, tok, chat_prompts[:4], GenerationSettings(max_tokens=8, batch_size=4))
    for prompt, c in zip(chat_prompts[:4], comps):
        ref = _forward_logprobs(model, prompt, c.tokens)
        np.testing.assert_allclose(c.logprobs, ref, atol=1e-4)
        assert all(lp <= 0 for lp in c.logprobs)


def test_sampled_logprobs_use_the_temperature(smollm, chat_prompts):
    model, tok = smollm
    s = GenerationSettings(max_tokens=8, temperature=0.7, top_p=0.9, seed=3, batch_size=4)
    comps, _ = generate(model, tok, chat_prompts[:4], s)
    for prompt, c in zip(chat_prompts[:4], comps):
        ref = _forward_logprobs(model, prompt, c.tokens, temperature=0.7)
        np.testing.assert_allclose(c.logprobs, ref, atol=1e-4)


def test_sampling_is_seeded_and_independent_of_batch_and_slot(smollm, chat_prompts):
    """The same seed gives each prompt the same sample whether it runs in one batch, joins a running batch
    (continuous, batch 2), runs in static batches or alone without the shared prefix."""
    model, tok = smollm
    prompts = chat_prompts[:5]
    gen = dict(max_tokens=6, temperature=1.0, seed=7)
    a, _ = generate(model, tok, prompts, GenerationSettings(batch_size=5, **gen))
    b, _ = generate(model, tok, prompts, GenerationSettings(batch_size=2, **gen))
    s, _ = generate(model, tok, prompts, GenerationSettings(batch_size=2, continuous=False, **gen))
    alone, _ = generate(model, tok, prompts, GenerationSettings(**gen, **ALONE))
    c, _ = generate(model, tok, prompts, GenerationSettings(batch_size=5, **{**gen, "seed": 8}))
    assert [x.tokens for x in a] == [x.tokens for x in b] == [x.tokens for x in s] == [x.tokens for x in alone]
    assert [x.tokens for x in a] != [x.tokens for x in c]


def test_tiny_top_p_is_greedy(smollm, chat_prompts):
    model, tok = smollm
    greedy, _ = generate(model, tok, chat_prompts[:3], GenerationSettings(max_tokens=6))
    nucleus, _ = generate(model, tok, chat_prompts[:3],
                          GenerationSettings(max_tokens=6, temperature=1.0, top_p=1e-6, seed=1))
    assert [g.tokens for g in greedy] == [n.tokens for n in nucleus]


def test_top_p_mask_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32) * 3
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    out = np.array(_top_p_mask(mx.array(logp), 0.8))
    for row, got in zip(logp, out):
        order = np.argsort(-row)
        p = np.exp(row[order])
        n_keep = int(np.searchsorted(np.cumsum(p), 0.8) + 1)  # smallest prefix with mass >= 0.8
        kept = set(order[:n_keep].tolist())
        assert {i for i in range(50) if np.isfinite(got[i])} == kept
        assert np.allclose(got[list(kept)], row[list(kept)])


def test_text_prompts_order_and_on_batch(smollm):
    model, tok = smollm
    prompts = ["The capital of France is", "1, 2, 3,", "Once upon a time", "Water boils at"]
    seen = []
    comps, stats = generate(model, tok, prompts, GenerationSettings(max_tokens=[4, 2, 4, 3], batch_size=3),
                            on_batch=lambda idx, cs: seen.append((idx, [c.text for c in cs])))
    assert sorted(i for idx, _ in seen for i in idx) == [0, 1, 2, 3]  # each prompt reported once, when it finished
    by_index = {i: t for idx, texts in seen for i, t in zip(idx, texts)}
    assert [c.text for c in comps] == [by_index[i] for i in range(4)]
    assert comps[0].prompt_tokens == len(tok.encode(prompts[0]))
    assert stats.prompt_tps > 0 and stats.generation_tps > 0 and stats.peak_memory_gb > 0
    assert stats.generation_tokens == sum(len(c.tokens) for c in comps)


def test_zero_max_tokens_and_bad_input(smollm):
    model, tok = smollm
    comps, _ = generate(model, tok, ["Hi"], GenerationSettings(max_tokens=0))
    assert comps[0].tokens == [] and comps[0].finish_reason == "length"
    comps, _ = generate(model, tok, ["Hi", "Yo"], GenerationSettings(max_tokens=[0, 2], ignore_eos=True))
    assert [len(c.tokens) for c in comps] == [0, 2]
    with pytest.raises(SettingsError, match="prompt 1 is empty"):
        generate(model, tok, [[1, 2], []], GenerationSettings(max_tokens=2))
    with pytest.raises(SettingsError, match="batch_size must be >= 1"):
        generate(model, tok, ["Hi"], GenerationSettings(batch_size=0))
    with pytest.raises(SettingsError, match="2 budgets for 1 prompts"):
        generate(model, tok, ["Hi"], GenerationSettings(max_tokens=[1, 2]))
    ctx = model.args.max_position_embeddings
    with pytest.raises(SettingsError, match=f"prompt 0 has {ctx + 1} tokens, which is longer than the model's "
                                            f"context of {ctx}"):
        generate(model, tok, [[1] * (ctx + 1)], GenerationSettings(max_tokens=1))
    with pytest.raises(SettingsError, match=f"plus max_tokens 20 \\({ctx + 10} positions\\) exceeds"):
        generate(model, tok, [[1, 2], [1] * (ctx - 10)], GenerationSettings(max_tokens=20))


def test_memory_check_lowers_the_batch_or_refuses(smollm):
    """KV bytes per position: 30 layers × (keys + values) × 3 KV heads × 64 dims × 4 bytes (float32)."""
    model, _ = smollm
    per_token = 30 * 2 * 3 * 64 * 4
    assert kv_bytes_per_token(model) == per_token
    ids, budgets = [[1] * 100, [1] * 300], [50, 200]
    row = per_token * 512  # 300 + 200 positions, rounded up to the cache's 256-step
    assert fit_batch_size(model, ids, budgets, 16, available=10**12) == 16
    available = int(2 * row * 5 / 0.9) + 1  # room for 5 rows held twice
    with pytest.warns(UserWarning, match="batch_size lowered from 16 to 5"):
        assert fit_batch_size(model, ids, budgets, 16, available=available) == 5
    with pytest.raises(SettingsError, match="does not fit in memory even for one row: 512 positions"):
        fit_batch_size(model, ids, budgets, 16, available=row)
    # a shared prefix of 60 positions is held once: rows of 300 + 200 - 60 -> 512 positions, + 60 once
    available = int((2 * row * 5 + per_token * 60) / 0.9) + 1
    with pytest.warns(UserWarning, match="lowered from 16 to 5.*shared prefix of 60 positions held once"):
        assert fit_batch_size(model, ids, budgets, 16, available=available, shared_prefix=60) == 5
    row = per_token * 256  # 300 + 200 - 250 -> 256 positions
    available = int((2 * row * 7 + per_token * 250) / 0.9) + 1
    with pytest.warns(UserWarning, match="lowered from 16 to 7"):
        assert fit_batch_size(model, ids, budgets, 16, available=available, shared_prefix=250) == 7


def test_repeated_prompts_share_one_prefill(smollm, chat_prompts):
    """k copies of a prompt (PPO rollouts) are prefilled once, also when the copies join the batch at different
    times (batch 2 < k); samples and log-probs equal generating each copy alone, and the prompt-token count
    shows the saving: shared prefix once, each prompt's own part once, each copy's last token."""
    model, tok = smollm
    base = chat_prompts[:3]
    prompts = [p for p in base for _ in range(3)]  # 3 prompts x 3 samples, different lengths
    gen = dict(max_tokens=6, temperature=1.0, seed=11)
    alone, _ = generate(model, tok, prompts, GenerationSettings(**gen, **ALONE))
    P = common_prefix_length(base)
    expected = P + sum(len(p) - P - 1 for p in base) + len(prompts)
    for batch_size in (9, 2):
        shared, st = generate(model, tok, prompts, GenerationSettings(batch_size=batch_size, **gen))
        assert [c.tokens for c in shared] == [c.tokens for c in alone]
        for s, a in zip(shared, alone):
            np.testing.assert_allclose(s.logprobs, a.logprobs, atol=1e-4)
        assert st.prompt_tokens == expected
    assert len({tuple(c.tokens) for c in shared}) > 3  # copies of one prompt sample differently
