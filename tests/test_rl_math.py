import math

import mlx.core as mx
import numpy as np
import pytest

from mlxhv.rl.lora import LoRASettings, apply_lora, lora_disabled, lora_layers
from mlxhv.rl.ppo import (AdaptiveKLController, PPOLossSettings, entropy_from_logits, gae, kl_penalised_rewards,
                          masked_whiten, ppo_loss, token_logprobs)
from mlxhv.rl.reward import RewardSettings, reward
from mlxhv.rl.rollout import response_forward
from mlxhv.rl.value import ValueHead
from tests.rl_tiny import tiny_model


def slow_gae(rewards, values, lengths, gamma, lam):
    """Reference: one sequence at a time, a plain reverse loop over its own tokens."""
    adv = np.zeros_like(rewards)
    for b, L in enumerate(lengths):
        running = 0.0
        for t in reversed(range(L)):
            v_next = values[b, t + 1] if t + 1 < L else 0.0
            delta = rewards[b, t] + gamma * v_next - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv


def test_gae_matches_reverse_loop():
    rng = np.random.default_rng(0)
    B, T = 5, 9
    lengths = [9, 1, 4, 7, 0]
    mask = (np.arange(T)[None] < np.array(lengths)[:, None]).astype(np.float32)
    rewards = rng.normal(size=(B, T)).astype(np.float32) * mask
    values = rng.normal(size=(B, T)).astype(np.float32)  # garbage past the end must not leak in
    adv, ret = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    ref = slow_gae(rewards, values, lengths, 0.97, 0.9)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, (ref + values) * mask, rtol=1e-5, atol=1e-6)


def test_kl_rewards_score_at_last_token():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
    lp = np.array([[-1.0, -2.0, -1.0, 9.0], [-0.5, 9.0, 9.0, 9.0]], np.float32)
    ref = np.array([[-1.5, -2.0, -0.5, 0.0], [-1.0, 0.0, 0.0, 0.0]], np.float32)
    r, kl = kl_penalised_rewards(np.array([1.0, -1.0]), lp, ref, mask, kl_coef=0.1)
    np.testing.assert_allclose(kl, [[0.5, 0, -0.5, 0], [0.5, 0, 0, 0]])
    np.testing.assert_allclose(r, [[-0.05, 0, 0.05 + 1.0, 0], [-0.05 - 1.0, 0, 0, 0]], atol=1e-7)


def test_ppo_loss_hand_computed():
    # one token per row; eps = 0.2, value clip 0.2, vf_coef 0.5, ent_coef 0.01
    new_lp = mx.array([[math.log(1.5)], [math.log(0.5)], [0.0]])
    old_lp = mx.zeros((3, 1))
    adv = mx.array([[1.0], [-2.0], [0.5]])
    new_v = mx.array([[1.0], [0.0], [0.3]])
    old_v = mx.array([[0.5], [0.0], [0.3]])
    ret = mx.array([[2.0], [1.0], [0.3]])
    ent = mx.array([[1.0], [2.0], [3.0]])
    mask = mx.ones((3, 1))
    s = PPOLossSettings(clip_range=0.2, clip_range_value=0.2, vf_coef=0.5, ent_coef=0.01)
    loss, m = ppo_loss(new_lp, new_v, ent, old_lp, old_v, adv, ret, mask, s)
    # row 0: ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 ; row 1: ratio .5, A=-2: max(1.0, 1.6) = 1.6 ; row 2: -0.5
    pg = (-1.2 + 1.6 - 0.5) / 3
    # values: row 0 unclipped (1-2)^2=1, clipped v=0.7 -> 1.69, max 1.69; row 1: 1 vs 1; row 2: 0 vs 0
    vl = 0.5 * (1.69 + 1.0 + 0.0) / 3
    assert m["pg_loss"].item() == pytest.approx(pg, abs=1e-6)
    assert m["v_loss"].item() == pytest.approx(vl, abs=1e-6)
    assert m["entropy"].item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(pg + 0.5 * vl - 0.01 * 2.0, abs=1e-6)
    assert m["clipfrac"].item() == pytest.approx(2 / 3)
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 3
    assert m["approx_kl"].item() == pytest.approx(kl, abs=1e-6)


def test_masking_ignores_padding():
    s = PPOLossSettings()
    args = [mx.array(np.random.default_rng(i).normal(size=(2, 3)).astype(np.float32)) for i in range(7)]
    mask = mx.array([[1, 1, 0], [1, 0, 0]], dtype=mx.float32)
    loss1, _ = ppo_loss(*args, mask, s)
    args2 = [mx.where(mask > 0, a, 123.0) for a in args]
    loss2, _ = ppo_loss(*args2, mask, s)
    assert loss1.item() == pytest.approx(loss2.item(), rel=1e-6)


def test_whiten_and_entropy_and_logprobs():
    x = mx.array([[1.0, 2.0, 3.0, 100.0]])
    mask = mx.array([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    np.testing.assert_allclose(np.array(w), [[-1, 0, 1, 0]], atol=1e-5)  # unbiased std of 1,2,3 is 1
    logits = mx.array([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    assert entropy_from_logits(logits).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert token_logprobs(logits, mx.array([[1]])).item() == pytest.approx(math.log(0.75))
    # temperature 2: p = softmax(0, log(3)/2) = (1, sqrt 3)/(1 + sqrt 3)
    assert token_logprobs(logits, mx.array([[0]]), 2.0).item() == pytest.approx(-math.log(1 + math.sqrt(3)))


def test_adaptive_kl_controller():
    c = AdaptiveKLController(kl_coef=0.1, target=1.0, horizon=100)
    assert c.update(10.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert c.update(1.0, 10) == pytest.approx(0.1 * 1.02)
    fixed = AdaptiveKLController(kl_coef=0.1, target=None)
    assert fixed.update(50.0, 10) == 0.1


@pytest.mark.parametrize("decision, conf, gold, truncated, json_format, expected", [
    ("VALIDATED", 1.0, "VALIDATED", False, True, 1.0 + 0.5 * 1.0),
    ("VALIDATED", 0.8, "VALIDATED", False, True, 1.0 + 0.5 * (1 - 0.04)),
    ("REJECTED", 0.8, "VALIDATED", False, True, 0.5 * (1 - 0.64)),
    ("REJECTED", 1.0, "VALIDATED", False, True, 0.0),          # a confident wrong answer costs most
    ("REJECTED", 0.0, "VALIDATED", False, True, 0.5),
    ("REFINED", None, "REFINED", False, True, 1.0),            # no confidence: no calibration credit
    ("REFINED", None, "REFINED", False, False, 0.5),           # prose, read by the fallback: format penalty
    ("REJECTED", None, "REFINED", False, False, -0.5),
    ("INVALID", None, "REFINED", False, True, -1.0),
    ("INVALID", None, "REFINED", True, True, -1.5),
    ("REFINED", 0.9, "REFINED", True, True, 1.0 + 0.5 * 0.99 - 0.5),
])
def test_reward_table(decision, conf, gold, truncated, json_format, expected):
    assert reward(decision, conf, gold, truncated, RewardSettings(), json_format) == pytest.approx(expected)


def test_lora_step0_equals_base_and_reference_switch():
    model = tiny_model()
    tokens = mx.array([[1, 5, 7, 3, 2, 9]])
    base = model(tokens)
    wrapped = apply_lora(model, LoRASettings(rank=4, alpha=8, keys=["self_attn.q_proj", "self_attn.v_proj"]))
    assert len(wrapped) == 4 and len(lora_layers(model)) == 4
    np.testing.assert_array_equal(np.array(model(tokens)), np.array(base))  # B = 0 -> exactly the base
    for m in lora_layers(model):
        m.lora_b = mx.ones_like(m.lora_b) * 0.1
    changed = model(tokens)
    assert not np.allclose(np.array(changed), np.array(base))
    with lora_disabled(model):
        np.testing.assert_array_equal(np.array(model(tokens)), np.array(base))
    np.testing.assert_array_equal(np.array(model(tokens)), np.array(changed))
    trainable = {k for k, _ in __import__("mlx.utils").utils.tree_flatten(model.trainable_parameters())}
    assert trainable and all(k.endswith(("lora_a", "lora_b")) for k in trainable)


def test_value_head_zero_at_init_and_forward_matches_model():
    model = tiny_model()
    vh = ValueHead(32, inner=16)
    tokens = mx.array([[1, 2, 3, 4]])
    positions, targets = mx.array([[0, 1, 2]]), mx.array([[2, 3, 4]])  # column t predicts token t + 1
    logprobs, _, values = response_forward(model, vh, tokens, positions, targets, temperature=1.0)
    logits = model(tokens)[0]  # (T, V): the model's own head
    expect = [(logits[t] - mx.logsumexp(logits[t]))[int(targets[0, t])].item() for t in range(3)]
    np.testing.assert_allclose(np.array(logprobs[0]), expect, atol=1e-5)
    assert values.shape == (1, 3) and np.all(np.array(values) == 0)


def test_leave_one_out_scores_hand_computed():
    from mlxhv.rl.ppo import leave_one_out_scores

    scores = np.array([1.0, 0.0, 0.0, 0.5, -1.0, -1.0, 2.0], np.float32)
    prompt = np.array([0, 0, 0, 1, 2, 2, 3])
    out = leave_one_out_scores(scores, prompt)
    # prompt 0: 1 - (0 + 0)/2, 0 - (1 + 0)/2 twice; prompt 1 and 3 answered once: unchanged; prompt 2: all equal
    np.testing.assert_allclose(out, [1.0, -0.5, -0.5, 0.5, 0.0, 0.0, 2.0])
    assert out.dtype == np.float32
