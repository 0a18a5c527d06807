"""Batched generation against references: mlx_lm.generate one prompt at a time, the engine at batch size 1,
and a separate forward pass over prompt + completion for the log-probs. Float32 fast path, few tokens."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlxhv.engine import GenerationSettings, _top_p_mask, generate
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


@pytest.fixture(scope="module")
def chat_prompts(smollm):
    _, tok = smollm
    prompts = [apply_chat_template(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) >= 6  # different lengths → real left padding
    return prompts


def _forward_logprobs(model, prompt, tokens, temperature=1.0):
    """log p(tokens[j] | prompt + tokens[:j]) under softmax(logits / T), from one plain forward pass."""
    ids = mx.array(prompt + tokens)[None]  # (1, P + N)
    logits = model(ids)[0, len(prompt) - 1: len(prompt) - 1 + len(tokens)].astype(mx.float32) / temperature
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (N, V)
    return np.array(mx.take_along_axis(logp, mx.array(tokens)[:, None], axis=-1)[:, 0]).tolist()


def test_batched_greedy_matches_mlx_lm_one_at_a_time(smollm, chat_prompts):
    import mlx_lm

    model, tok = smollm
    comps, stats = generate(model, tok, chat_prompts, GenerationSettings(max_tokens=8, batch_size=8))
    assert stats.batches == 1
    for prompt, c in zip(chat_prompts, comps):
        ref = mlx_lm.generate(model, tok, prompt, max_tokens=8)
        assert c.text == ref
        assert c.prompt_tokens == len(prompt)
    assert stats.prompt_tokens == sum(map(len, chat_prompts))
    assert stats.generation_tokens == sum(len(c.tokens) for c in comps)


def test_batched_equals_alone_with_rows_finishing_early(smollm, chat_prompts):
    """16 tokens: short answers hit EOS and leave the batch (cache filtering) while others go on."""
    model, tok = smollm
    batched, _ = generate(model, tok, chat_prompts, GenerationSettings(max_tokens=16, batch_size=8))
    alone, _ = generate(model, tok, chat_prompts, GenerationSettings(max_tokens=16, batch_size=1))
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


def test_sampling_is_seeded_and_independent_of_batching(smollm, chat_prompts):
    model, tok = smollm
    prompts = chat_prompts[:5]
    a, _ = generate(model, tok, prompts, GenerationSettings(max_tokens=6, temperature=1.0, seed=7, batch_size=5))
    b, _ = generate(model, tok, prompts, GenerationSettings(max_tokens=6, temperature=1.0, seed=7, batch_size=2))
    c, _ = generate(model, tok, prompts, GenerationSettings(max_tokens=6, temperature=1.0, seed=8, batch_size=5))
    assert [x.tokens for x in a] == [x.tokens for x in b]
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
    comps, stats = generate(model, tok, prompts, GenerationSettings(max_tokens=4, batch_size=3),
                            on_batch=lambda idx, cs: seen.append((idx, [c.text for c in cs])))
    assert sorted(i for idx, _ in seen for i in idx) == [0, 1, 2, 3]
    assert [len(idx) for idx, _ in seen] == [3, 1]
    by_index = {i: t for idx, texts in seen for i, t in zip(idx, texts)}
    assert [c.text for c in comps] == [by_index[i] for i in range(4)]
    assert comps[0].prompt_tokens == len(tok.encode(prompts[0]))
    assert stats.prompt_tps > 0 and stats.generation_tps > 0 and stats.peak_memory_gb > 0
    assert math.isclose(stats.generation_tokens, sum(len(c.tokens) for c in comps))


def test_zero_max_tokens_and_bad_input(smollm):
    model, tok = smollm
    comps, _ = generate(model, tok, ["Hi"], GenerationSettings(max_tokens=0))
    assert comps[0].tokens == [] and comps[0].finish_reason == "length"
    with pytest.raises(ValueError):
        generate(model, tok, [[]], GenerationSettings(max_tokens=2))


def test_repeated_prompts_share_one_prefill(smollm, chat_prompts):
    """k copies of a prompt (PPO rollouts) are prefilled once; samples and log-probs equal generating each copy
    alone (batch size 1), and the prompt-token count shows the saving."""
    model, tok = smollm
    prompts = [p for p in chat_prompts[:3] for _ in range(3)]  # 3 prompts x 3 samples, different lengths
    gen = dict(max_tokens=6, temperature=1.0, seed=11)
    shared, st = generate(model, tok, prompts, GenerationSettings(batch_size=9, **gen))
    alone, _ = generate(model, tok, prompts, GenerationSettings(batch_size=1, **gen))
    assert [c.tokens for c in shared] == [c.tokens for c in alone]
    assert len({tuple(c.tokens) for c in shared}) > 3  # copies of one prompt sample differently
    for s, a in zip(shared, alone):
        np.testing.assert_allclose(s.logprobs, a.logprobs, atol=1e-4)
    assert st.prompt_tokens == sum(len(p) for p in chat_prompts[:3])
