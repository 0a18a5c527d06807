"""Trainer pieces on a tiny in-process llama: KL 0 at step 0, non-finite skip, checkpoint round trip."""

from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from mlxhv.rl.lora import LoRASettings, lora_disabled
from mlxhv.rl.rollout import batched_no_grad, build_batch
from mlxhv.rl.trainer import (PPOSettings, init_state, latest_checkpoint, load_checkpoint, save_checkpoint,
                              select_prompts, select_prompts_by_class, update_minibatch)
from tests.rl_tiny import tiny_model

TOK = SimpleNamespace(eos_token_id=2)


def comp(tokens, finish="stop"):
    return SimpleNamespace(tokens=tokens, finish_reason=finish)


def tiny_state(seed=0):
    s = PPOSettings(lora=LoRASettings(rank=4, alpha=8), value_inner=8, minibatch_size=2, lr=1e-2, seed=seed)
    return init_state(tiny_model(seed), TOK, s)


def tiny_batch():
    prompts = [[1, 5, 6], [1, 7, 8, 9, 10]]
    comps = [comp([11, 12]), comp([13], "length"), comp([14, 15, 16]), comp([])]
    return build_batch(prompts, comps, [0, 0, 1, 1], eos=2)


def test_build_batch_layout():
    b = tiny_batch()
    assert b.tokens.tolist()[0] == [1, 5, 6, 11, 12, 2, 0, 0, 0]  # EOS appended: the answer stopped
    assert b.tokens.tolist()[1][:4] == [1, 5, 6, 13]  # cut by length: no EOS
    assert b.mask.sum(1).tolist() == [3, 1, 4, 1]
    assert b.positions[2, :4].tolist() == [4, 5, 6, 7]  # prompt of length 5: token t predicted at 4 + t
    assert b.targets[2, :4].tolist() == [14, 15, 16, 2]


def test_logprobs_match_full_forward_and_kl_zero_at_step0():
    st = tiny_state()
    b = tiny_batch()
    lp, values = batched_no_grad(st.policy.model, st.policy.value_head, b, temperature=0.7, minibatch=2)
    with lora_disabled(st.policy.model):
        ref, _ = batched_no_grad(st.policy.model, None, b, temperature=0.7, minibatch=2)
    np.testing.assert_array_equal(lp, ref)  # LoRA B = 0: policy == reference, KL exactly 0
    assert np.all(values == 0)  # value head starts at zero
    # against a slow reference: full logits, one row at a time
    logits = st.policy.model(mx.array(b.tokens[2:3]))[0] / 0.7  # (S, V)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    expect = [logp[p, t].item() for p, t in zip(b.positions[2, :4], b.targets[2, :4])]
    np.testing.assert_allclose(lp[2, :4], expect, atol=1e-5)


def _minibatch(b, adv_value=1.0):
    n, L = b.mask.shape
    return {"tokens": b.tokens[:2], "positions": b.positions[:2], "targets": b.targets[:2], "mask": b.mask[:2],
            "old_logprobs": np.zeros((2, L), np.float32), "old_values": np.zeros((2, L), np.float32),
            "advantages": np.full((2, L), adv_value, np.float32), "returns": np.ones((2, L), np.float32)}


def test_non_finite_step_is_skipped():
    st = tiny_state()
    b = tiny_batch()
    before = {k: np.array(v) for k, v in tree_flatten(st.policy.trainable_parameters())}
    ok, _ = update_minibatch(st, _minibatch(b, float("nan")))
    assert not ok and st.skipped_updates == 1
    after = {k: np.array(v) for k, v in tree_flatten(st.policy.trainable_parameters())}
    assert all(np.array_equal(before[k], after[k]) for k in before)
    ok, m = update_minibatch(st, _minibatch(b, 1.0))
    assert ok and np.isfinite(m["loss"]) and st.skipped_updates == 1
    changed = {k: np.array(v) for k, v in tree_flatten(st.policy.trainable_parameters())}
    assert any(not np.array_equal(before[k], changed[k]) for k in before if "lora_b" in k)  # gradients reach B


def test_checkpoint_round_trip(tmp_path):
    st = tiny_state()
    b = tiny_batch()
    update_minibatch(st, _minibatch(b))
    st.step, st.kl_ctl.kl_coef = 3, 0.123
    save_checkpoint(st, tmp_path)
    assert latest_checkpoint(tmp_path).name == "step-000003"
    assert (tmp_path / "adapters.safetensors").exists() and (tmp_path / "adapter_config.json").exists()
    _, m1 = update_minibatch(st, _minibatch(b, 0.5))  # the next step from the saved state

    st2 = tiny_state()
    load_checkpoint(st2, latest_checkpoint(tmp_path))
    assert st2.step == 3 and st2.kl_ctl.kl_coef == pytest.approx(0.123)
    _, m2 = update_minibatch(st2, _minibatch(b, 0.5))
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-6)
    p1 = dict(tree_flatten(st.policy.trainable_parameters()))
    p2 = dict(tree_flatten(st2.policy.trainable_parameters()))
    for k in p1:
        np.testing.assert_allclose(np.array(p1[k]), np.array(p2[k]), rtol=1e-6, atol=1e-7)


def test_select_prompts_by_class_balances_each_step():
    labels = ["V"] * 6 + ["R"] * 3 + ["F"] * 4
    steps = [select_prompts_by_class(labels, 4, seed=2, step=t) for t in range(1, 7)]
    for idx in steps:  # classes sorted F, R, V: F takes the remainder slot
        assert sorted(labels[i] for i in idx) == ["F", "F", "R", "V"]
    r_seen = [i for idx in steps[:3] for i in idx if labels[i] == "R"]
    assert sorted(r_seen) == [6, 7, 8]  # every R example once in its first epoch (3 steps x 1)
    assert steps == [select_prompts_by_class(labels, 4, 2, t) for t in range(1, 7)]  # deterministic (resume)


def test_select_prompts_covers_each_epoch():
    seen = [i for step in range(1, 6) for i in select_prompts(10, 4, seed=1, step=step)]
    assert sorted(seen[:10]) == list(range(10))  # first epoch: every example once
    assert select_prompts(10, 4, 1, 3) == select_prompts(10, 4, 1, 3)


def test_judge_score_reads_the_answer_prefix():
    from mlxhv.data import synth_examples
    from mlxhv.prompts import JSON_ANSWER_PREFIX
    from mlxhv.rl.reward import RewardSettings
    from mlxhv.rl.trainer import judge_score_fn

    s = PPOSettings(answer_prefix="json")
    assert s.answer_prefix == JSON_ANSWER_PREFIX
    ex = synth_examples(1, seed=0)[0]
    gold = ex.expected_decision.value
    score = judge_score_fn([ex], RewardSettings(), s.answer_prefix)
    r, info = score(0, SimpleNamespace(text=f'{gold}", "confidence": 0.8}}', finish_reason="stop"))
    assert r == pytest.approx(1.0 + 0.5 * (1 - 0.2 ** 2)) and info["accuracy"]  # JSON, right, q = 0.8
    r, info = judge_score_fn([ex], RewardSettings())(0, SimpleNamespace(text=f'{gold}", "confidence": 0.8}}',
                                                                        finish_reason="stop"))
    assert r == pytest.approx(1.0 + 0.5 * (1 - 0.2 ** 2) - 0.5)  # without the prefix: a fallback parse, penalised


def test_accuracy_per_gold_class():
    """acc_<gold> is averaged over the answers to prompts of that gold class only."""
    from mlxhv.data import synth_examples
    from mlxhv.prompts import JSON_ANSWER_PREFIX
    from mlxhv.rl.reward import RewardSettings
    from mlxhv.rl.trainer import judge_score_fn, mean_infos

    exs = synth_examples(12, seed=0, decision_weights={"VALIDATED": 1, "REJECTED": 1, "REFINED": 0})
    v = next(i for i, e in enumerate(exs) if e.expected_decision.value == "VALIDATED")
    r = next(i for i, e in enumerate(exs) if e.expected_decision.value == "REJECTED")
    score = judge_score_fn(exs, RewardSettings(), JSON_ANSWER_PREFIX)
    answer = lambda d: SimpleNamespace(text=f'{d}", "confidence": 0.8}}', finish_reason="stop")  # noqa: E731
    infos = [score(v, answer("VALIDATED"))[1], score(v, answer("REJECTED"))[1], score(v, answer("VALIDATED"))[1],
             score(r, answer("VALIDATED"))[1]]
    assert "acc_REJECTED" not in infos[0] and "acc_VALIDATED" not in infos[3]
    m = mean_infos(infos)
    assert m["acc_VALIDATED"] == pytest.approx(2 / 3) and m["acc_REJECTED"] == 0.0 and "acc_REFINED" not in m
    assert m["accuracy"] == pytest.approx(2 / 4) and m["frac_VALIDATED"] == pytest.approx(3 / 4)
    assert "_text" not in m


def test_rolling_mean():
    from mlxhv.rl.plot import rolling_mean

    out = rolling_mean([1.0, None, 3.0, 5.0, None], 2)
    assert out[:4] == [1.0, 1.0, 3.0, 4.0] and out[4] == 5.0
    assert str(rolling_mean([None], 3)[0]) == "nan"


@pytest.mark.parametrize("num_layers, cache_trunk", [(1, True), (1, False), (-1, True)])
def test_shared_prompt_passes_equal_whole_rows(num_layers, cache_trunk):
    """Each prompt run once for its k answers (rl/prefix.py), with or without the frozen-trunk cache, gives the
    whole-row passes' log-probs, values, reference and gradient step."""
    from mlxhv.rl.prefix import group_trunk, grouped_no_grad, make_groups, shared_start

    def state():
        s = PPOSettings(lora=LoRASettings(rank=4, alpha=8, num_layers=num_layers), value_inner=8,
                        minibatch_size=2, lr=1e-2)
        st = init_state(tiny_model(0, layers=3), TOK, s)
        mx.random.seed(1)  # B != 0 and a non-zero value head: policy differs from reference, values from 0
        new = {k: mx.random.normal(v.shape) * 0.1 for k, v in tree_flatten(st.policy.trainable_parameters())
               if "lora_b" in k or "value_head.out" in k}
        st.policy.update(tree_unflatten(list(new.items())))
        return st

    st, b = state(), tiny_batch()
    model, vh = st.policy.model, st.policy.value_head
    start = shared_start(model)
    assert start == (2 if num_layers == 1 else 0)
    start = start if cache_trunk else 0
    groups = make_groups(b)
    assert [g.rows.tolist() for g in groups] == [[0, 1], [2, 3]] and groups[1].prompt.tolist() == [1, 7, 8, 9, 10]
    trunk = group_trunk(model, b, groups, start) if start else None
    lp, v = batched_no_grad(model, vh, b, temperature=0.7, minibatch=2)
    lp_s, v_s = grouped_no_grad(model, vh, b, groups, 0.7, trunk, start, rows_per_pass=2)
    np.testing.assert_allclose(lp_s, lp, atol=1e-5)
    np.testing.assert_allclose(v_s, v, atol=1e-5)
    assert np.abs(v).sum() > 0
    with lora_disabled(model):
        ref, _ = batched_no_grad(model, None, b, temperature=0.7, minibatch=2)
        ref_s, _ = grouped_no_grad(model, None, b, groups, 0.7, trunk, start)
    np.testing.assert_allclose(ref_s, ref, atol=1e-5)
    assert not np.allclose(ref, lp)

    mb = _minibatch(b, 0.5)  # rows 0, 1 = the first prompt's group
    _, m_rows = update_minibatch(st, mb)
    st2 = state()
    shared = (groups[:1], None if trunk is None else trunk[:1], start)
    _, m_shared = update_minibatch(st2, mb, shared)
    for key in ("loss", "pg_loss", "v_loss", "entropy", "grad_norm"):
        assert m_shared[key] == pytest.approx(m_rows[key], rel=1e-4, abs=1e-6)
    p1 = dict(tree_flatten(st.policy.trainable_parameters()))
    p2 = dict(tree_flatten(st2.policy.trainable_parameters()))
    for k in p1:
        np.testing.assert_allclose(np.array(p2[k]), np.array(p1[k]), atol=1e-5)


def test_group_minibatches_cover_each_group_once():
    from mlxhv.rl.prefix import Group, group_minibatches

    groups = [Group(np.arange(i * 4, i * 4 + 4), np.array([1])) for i in range(5)]
    mbs = group_minibatches(groups, 8, np.random.default_rng(0))
    assert sorted(j for mb in mbs for j in mb) == list(range(5))
    assert all(sum(len(groups[j].rows) for j in mb) <= 8 for mb in mbs)
