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
