"""`mlxhv.kernels`: the CPU softmax/SiLU pass equals mlx-lm's blocks (exp against float64 numpy, attention
against `mx.fast.scaled_dot_product_attention` for every mask kind, whole passes against `model.model` with
prompt and batch caches)."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

from mlxhv import kernels
from tests.rl_tiny import tiny_model


def test_exp_matches_float64():
    x = np.linspace(-87.0, 10.0, 200_001).astype(np.float32)
    ref = np.exp(x.astype(np.float64))
    got = np.array(mx.compile(kernels.exp)(mx.array(x)))
    err = np.abs(got - ref) / ref
    mlx_err = np.abs(np.array(mx.exp(mx.array(x))) - ref) / ref
    # at large |x| both inherit the rounding of x itself (relative error ~ |x| * 6e-8); near 0, a few ulps
    assert err.max() <= 1.1 * mlx_err.max()
    assert err[np.abs(x) < 20].max() < 1.5e-6
    assert np.array(kernels.exp(mx.array([-1e30, -200.0]))).max() < 1e-37  # masked scores vanish


def test_swiglu_matches_silu():
    g = mx.array(np.linspace(-120, 40, 10_001).astype(np.float32))
    x = mx.array(np.random.default_rng(0).normal(size=10_001).astype(np.float32))
    ref = np.array(g * mx.sigmoid(g) * x)
    np.testing.assert_allclose(np.array(kernels.swiglu(g, x)), ref, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive"])
@pytest.mark.parametrize("Lq,Lk", [(1, 9), (7, 7), (5, 12)])
def test_attention_matches_mlx(mask_kind, Lq, Lk):
    rng = np.random.default_rng(Lq * 100 + Lk)
    B, H, Hk, D = 3, 6, 2, 8
    q, k, v = (mx.array(rng.normal(size=s).astype(np.float32)) for s in ((B, H, Lq, D), (B, Hk, Lk, D), (B, Hk, Lk, D)))
    keep = rng.random((B, 1, Lq, Lk)) < 0.7
    keep[..., -1] = True  # every query keeps at least one key
    mask = {"none": None, "causal": "causal", "bool": mx.array(keep),
            "additive": mx.array(np.where(keep, 0.0, -1e9).astype(np.float32))}[mask_kind]
    if mask_kind == "causal" and Lq == 1:
        mask = None
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=D ** -0.5, mask=mask)
    np.testing.assert_allclose(np.array(kernels.attention(q, k, v, D ** -0.5, mask)), np.array(ref), atol=2e-6)


def test_hidden_states_equal_the_model_with_caches():
    model = tiny_model(seed=3, layers=3)
    assert kernels.supported(model)
    tokens = mx.array([[1, 5, 9, 3, 17, 22, 4, 8, 30, 2, 11]])
    ref_cache, our_cache = make_prompt_cache(model), make_prompt_cache(model)
    ref = model.model(tokens[:, :8], cache=ref_cache)
    ours = kernels.hidden_states(model, tokens[:, :8], our_cache)
    np.testing.assert_allclose(np.array(ours), np.array(ref), atol=1e-5)
    for t in range(8, 11):  # decode steps from the filled caches
        ref = model.model(tokens[:, t:t + 1], cache=ref_cache)
        ours = kernels.hidden_states(model, tokens[:, t:t + 1], our_cache)
        np.testing.assert_allclose(np.array(ours), np.array(ref), atol=1e-5)
    # no cache at all, and fast=False is exactly mlx-lm's pass
    np.testing.assert_allclose(np.array(kernels.hidden_states(model, tokens)), np.array(model.model(tokens)),
                               atol=1e-5)
    assert mx.array_equal(kernels.hidden_states(model, tokens, fast=False), model.model(tokens))


def test_hidden_states_equal_the_model_on_a_left_padded_batch_cache():
    model = tiny_model(seed=4, layers=2)
    rows = [[1, 5, 9, 3, 17], [4, 8, 30], [2, 11, 7, 7, 6, 5, 3]]

    def batch_cache():
        per_row = []
        for r in rows:
            c = [KVCache() for _ in model.layers]
            model.model(mx.array(r)[None], cache=c)
            per_row.append(c)
        return [BatchKVCache.merge([p[layer] for p in per_row]) for layer in range(len(model.layers))]

    ref_cache, our_cache = batch_cache(), batch_cache()
    y = mx.array([[3], [9], [1]])
    for _ in range(3):
        ref = model.model(y, cache=ref_cache)
        ours = kernels.hidden_states(model, y, our_cache)
        np.testing.assert_allclose(np.array(ours), np.array(ref), atol=1e-5)
        y = mx.argmax(model.model.embed_tokens.as_linear(ref), axis=-1)


def test_not_supported_elsewhere():
    model = tiny_model(seed=0)
    model.model_type = "qwen3"  # another architecture's blocks are left to mlx-lm
    assert not kernels.supported(model)
    tokens = mx.array([[1, 2, 3]])
    assert mx.array_equal(kernels.hidden_states(model, tokens), model.model(tokens))


@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive"])
@pytest.mark.parametrize("Lq,Lk", [(1, 9), (5, 12)])
def test_attention_with_a_shared_prefix_equals_the_prefix_copied_into_every_row(mask_kind, Lq, Lk):
    rng = np.random.default_rng(Lq * 10 + Lk)
    B, H, Hk, D, P = 3, 6, 2, 8, 11
    q, k, v = (mx.array(rng.normal(size=s).astype(np.float32)) for s in ((B, H, Lq, D), (B, Hk, Lk, D), (B, Hk, Lk, D)))
    kp, vp = (mx.array(rng.normal(size=(1, Hk, P, D)).astype(np.float32)) for _ in range(2))
    keep = rng.random((B, 1, Lq, Lk)) < 0.7
    keep[..., -1] = True
    own = {"none": None, "causal": "causal", "bool": mx.array(keep),
           "additive": mx.array(np.where(keep, 0.0, -1e9).astype(np.float32))}[mask_kind]
    if mask_kind == "causal" and Lq == 1:
        own = None
    # reference: every row holds the prefix; the prefix is visible to every query
    kf = mx.concatenate([mx.broadcast_to(kp, (B, Hk, P, D)), k], axis=2)
    vf = mx.concatenate([mx.broadcast_to(vp, (B, Hk, P, D)), v], axis=2)
    if own is None:
        full = None
    elif isinstance(own, str):
        full = mx.array(np.asarray(kernels.causal_keep(Lq, P + Lk)))
    else:
        pad = np.ones((B, 1, Lq, P), bool) if own.dtype == mx.bool_ else np.zeros((B, 1, Lq, P), np.float32)
        full = mx.concatenate([mx.array(pad), own], axis=-1)
    ref = mx.fast.scaled_dot_product_attention(q, kf, vf, scale=D ** -0.5, mask=full)
    got = kernels.attention(q, k, v, D ** -0.5, own, prefix=(kp, vp))
    np.testing.assert_allclose(np.array(got), np.array(ref), atol=2e-6)


def test_decode_steps_on_a_shared_prefix_cache_equal_the_model_with_full_rows():
    """Rows = prefix + their own tokens: mlx-lm's model on a left-padded cache of whole rows vs mlxhv's blocks
    on the prefix held once, while rows join (extend) and leave (filter)."""
    model = tiny_model(seed=5, layers=2)
    prefix, own = [7, 3, 9, 1, 4], [[1, 5, 9, 3], [4, 8], [2, 11, 7, 6, 5]]

    def row_cache(tokens):
        c = [KVCache() for _ in model.layers]
        model.model(mx.array(tokens)[None], cache=c)
        return c

    def full(rows):
        per_row = [row_cache(prefix + r) for r in rows]
        return [BatchKVCache.merge([p[layer] for p in per_row]) for layer in range(len(model.layers))]

    def shared(rows):
        pre = row_cache(prefix)
        per_row = [row_cache(prefix + r) for r in rows]
        P = len(prefix)
        out = []
        for layer in range(len(model.layers)):
            tails = []
            for p in per_row:
                t = KVCache()
                t.keys, t.values, t.offset = p[layer].keys[..., P:p[layer].offset, :], \
                    p[layer].values[..., P:p[layer].offset, :], p[layer].offset - P
                tails.append(t)
            out.append(kernels.SharedPrefixCache(pre[layer].keys[..., :P, :], pre[layer].values[..., :P, :],
                                                 BatchKVCache.merge(tails)))
        return out

    ref_cache, our_cache = full(own[:2]), shared(own[:2])
    y = mx.array([[3], [9]])
    for step in range(5):
        if step == 2:  # a third row joins
            for c, o in zip(ref_cache, full(own[2:])):
                c.extend(o)
            for c, o in zip(our_cache, shared(own[2:])):
                c.extend(o)
            y = mx.concatenate([y, mx.array([[6]])])
        if step == 4:  # the first row leaves
            for c in ref_cache + our_cache:
                c.filter(mx.array([1, 2]))
            y = y[1:]
        ref = model.model(y, cache=ref_cache)
        ours = kernels.hidden_states(model, y, our_cache)
        np.testing.assert_allclose(np.array(ours), np.array(ref), atol=1e-5)
        y = mx.argmax(model.model.embed_tokens.as_linear(ref), axis=-1)
    with pytest.raises(ValueError, match="SharedPrefixCache"):
        kernels.hidden_states(model, y, our_cache, fast=False)


def test_logsumexp_matches_float64():
    x = np.random.default_rng(0).normal(scale=8.0, size=(5, 49152)).astype(np.float32)
    x[1] -= 300.0  # far from 0: the row max is taken out first
    ref = np.log(np.exp(x.astype(np.float64) - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) + x.max(-1, keepdims=True)
    got = np.array(kernels.logsumexp(mx.array(x)))
    mlx_err = np.abs(np.array(mx.logsumexp(mx.array(x), axis=-1, keepdims=True)) - ref)
    assert (np.abs(got - ref) <= 2 * mlx_err + 2e-6).all()
