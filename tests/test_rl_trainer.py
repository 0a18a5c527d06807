"""Trainer pieces on a tiny in-process llama: KL 0 at step 0, non-finite skip, checkpoint round trip."""

from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from mlxhv.rl.task import JudgeTask, select_prompts, select_prompts_by_class
from mlxhv.rl.lora import LoRASettings, lora_disabled
from mlxhv.rl.passes import GroupPasses, Minibatch, RowPasses
from mlxhv.rl.rollout import build_batch
from mlxhv.rl.trainer import (RLSettings, init_state, latest_checkpoint, load_checkpoint, save_checkpoint,
                              update_minibatch)
from tests.rl_tiny import tiny_model

TOK = SimpleNamespace(eos_token_id=2)


def comp(tokens, finish="stop"):
    return SimpleNamespace(tokens=tokens, finish_reason=finish)


def tiny_state(seed=0):
    s = RLSettings(lora=LoRASettings(rank=4, alpha=8), value_inner=8, minibatch_size=2, lr=1e-2, seed=seed)
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
    lp, values = RowPasses(b, rows_per_pass=2).no_grad(st.policy.model, st.policy.value_head, temperature=0.7)
    with lora_disabled(st.policy.model):
        ref, _ = RowPasses(b, rows_per_pass=2).no_grad(st.policy.model, None, temperature=0.7)
    np.testing.assert_array_equal(lp, ref)  # LoRA B = 0: policy == reference, KL exactly 0
    assert np.all(values == 0)  # value head starts at zero
    # against a slow reference: full logits, one row at a time
    logits = st.policy.model(mx.array(b.tokens[2:3]))[0] / 0.7  # (S, V)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    expect = [logp[p, t].item() for p, t in zip(b.positions[2, :4], b.targets[2, :4])]
    np.testing.assert_allclose(lp[2, :4], expect, atol=1e-5)


def _minibatch(b, adv_value=1.0):
    """Rows 0, 1 (the first prompt's group) at full width, and the per-token arrays of the whole batch."""
    n, L = b.mask.shape
    data = {"mask": b.mask, "old_logprobs": np.zeros((n, L), np.float32), "old_values": np.zeros((n, L), np.float32),
            "advantages": np.full((n, L), adv_value, np.float32), "returns": np.ones((n, L), np.float32)}
    return Minibatch(np.array([0, 1]), L), data


def test_non_finite_step_is_skipped():
    st = tiny_state()
    b = tiny_batch()
    before = {k: np.array(v) for k, v in tree_flatten(st.policy.trainable_parameters())}
    ok, _ = update_minibatch(st, RowPasses(b, 2), *_minibatch(b, float("nan")))
    assert not ok and st.skipped_updates == 1
    after = {k: np.array(v) for k, v in tree_flatten(st.policy.trainable_parameters())}
    assert all(np.array_equal(before[k], after[k]) for k in before)
    ok, m = update_minibatch(st, RowPasses(b, 2), *_minibatch(b, 1.0))
    assert ok and np.isfinite(m["loss"]) and st.skipped_updates == 1
    changed = {k: np.array(v) for k, v in tree_flatten(st.policy.trainable_parameters())}
    assert any(not np.array_equal(before[k], changed[k]) for k in before if "lora_b" in k)  # gradients reach B


def test_checkpoint_round_trip(tmp_path):
    st = tiny_state()
    b = tiny_batch()
    update_minibatch(st, RowPasses(b, 2), *_minibatch(b))
    st.step, st.kl_ctl.kl_coef = 3, 0.123
    save_checkpoint(st, tmp_path)
    assert latest_checkpoint(tmp_path).name == "step-000003"
    assert (tmp_path / "adapters.safetensors").exists() and (tmp_path / "adapter_config.json").exists()
    _, m1 = update_minibatch(st, RowPasses(b, 2), *_minibatch(b, 0.5))  # the next step from the saved state

    st2 = tiny_state()
    load_checkpoint(st2, latest_checkpoint(tmp_path))
    assert st2.step == 3 and st2.kl_ctl.kl_coef == pytest.approx(0.123)
    _, m2 = update_minibatch(st2, RowPasses(b, 2), *_minibatch(b, 0.5))
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

    s = RLSettings(answer_prefix="json")
    assert s.answer_prefix == JSON_ANSWER_PREFIX
    ex = synth_examples(1, seed=0)[0]
    gold = ex.expected_decision.value
    task = JudgeTask([ex], [[1]], RewardSettings(), s.answer_prefix)
    sc = task.score(0, SimpleNamespace(text=f'{gold}", "confidence": 0.8}}', finish_reason="stop"))
    assert sc.reward == pytest.approx(1.0 + 0.5 * (1 - 0.2 ** 2)) and sc.correct  # JSON, right, q = 0.8
    assert sc.confidence == pytest.approx(0.8) and sc.gold == gold and sc.valid
    sc = JudgeTask([ex], [[1]], RewardSettings()).score(0, SimpleNamespace(text=f'{gold}", "confidence": 0.8}}',
                                                                           finish_reason="stop"))
    assert sc.reward == pytest.approx(1.0 + 0.5 * (1 - 0.2 ** 2) - 0.5)  # without the prefix: a fallback parse, penalised


def test_accuracy_per_gold_class():
    """acc_<gold> is averaged over the answers to prompts of that gold class only."""
    from mlxhv.data import synth_examples
    from mlxhv.prompts import JSON_ANSWER_PREFIX
    from mlxhv.rl.reward import RewardSettings

    exs = synth_examples(12, seed=0, decision_weights={"VALIDATED": 1, "REJECTED": 1, "REFINED": 0})
    v = next(i for i, e in enumerate(exs) if e.expected_decision.value == "VALIDATED")
    r = next(i for i, e in enumerate(exs) if e.expected_decision.value == "REJECTED")
    task = JudgeTask(exs, [[1]] * len(exs), RewardSettings(), JSON_ANSWER_PREFIX)
    answer = lambda d: SimpleNamespace(text=f'{d}", "confidence": 0.8}}', finish_reason="stop")  # noqa: E731
    scored = [task.score(v, answer("VALIDATED")), task.score(v, answer("REJECTED")),
              task.score(v, answer("VALIDATED")), task.score(r, answer("VALIDATED"))]
    m = task.step_metrics(scored)
    assert m["acc_VALIDATED"] == pytest.approx(2 / 3) and m["acc_REJECTED"] == 0.0 and "acc_REFINED" not in m
    assert m["accuracy"] == pytest.approx(2 / 4) and m["frac_VALIDATED"] == pytest.approx(3 / 4)
    # ECE of the stated confidence (0.8 for all, 2 of 4 right): one bin, |0.8 - 0.5|
    assert m["ece"] == pytest.approx(0.3)


def test_rolling_mean():
    from mlxhv.rl.plot import rolling_mean

    out = rolling_mean([1.0, None, 3.0, 5.0, None], 2)
    assert out[:4] == [1.0, 1.0, 3.0, 4.0] and out[4] == 5.0
    assert str(rolling_mean([None], 3)[0]) == "nan"


@pytest.mark.parametrize("num_layers, cache_trunk", [(1, True), (1, False), (-1, True)])
def test_shared_prompt_passes_equal_whole_rows(num_layers, cache_trunk):
    """Each prompt run once for its k answers (rl/prefix.py), with or without the frozen-trunk cache, gives the
    whole-row passes' log-probs, values, reference and gradient step."""
    from mlxhv.rl.prefix import shared_start

    def state():
        s = RLSettings(lora=LoRASettings(rank=4, alpha=8, num_layers=num_layers), value_inner=8,
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
    rows, shared = RowPasses(b, rows_per_pass=2), GroupPasses(model, b, start, rows_per_pass=2)
    assert [g.rows.tolist() for g in shared.groups] == [[0, 1], [2, 3]]
    assert shared.groups[1].prompt.tolist() == [1, 7, 8, 9, 10]
    assert (shared.trunk is not None) == bool(start)
    lp, v = rows.no_grad(model, vh, temperature=0.7)
    lp_s, v_s = shared.no_grad(model, vh, 0.7)
    np.testing.assert_allclose(lp_s, lp, atol=1e-5)
    np.testing.assert_allclose(v_s, v, atol=1e-5)
    assert np.abs(v).sum() > 0
    with lora_disabled(model):
        ref, _ = rows.no_grad(model, None, temperature=0.7)
        ref_s, _ = shared.no_grad(model, None, 0.7)
    np.testing.assert_allclose(ref_s, ref, atol=1e-5)
    assert not np.allclose(ref, lp)

    mb, data = _minibatch(b, 0.5)  # rows 0, 1 = the first prompt's group
    _, m_rows = update_minibatch(st, rows, mb, data)
    st2 = state()
    shared2 = GroupPasses(st2.policy.model, b, start, rows_per_pass=2)
    _, m_shared = update_minibatch(st2, shared2, Minibatch(mb.rows, mb.width, [0]), data)
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


@pytest.mark.parametrize("num_layers", [1, -1])
def test_shared_prefix_runs_once_and_equals_whole_rows(num_layers):
    """Prompts that open alike (as every judge prompt does): the shared-prompt passes split the common prefix off
    (C positions) and still give the whole rows' log-probs, values and gradient step over several groups."""
    def state():
        s = RLSettings(lora=LoRASettings(rank=4, alpha=8, num_layers=num_layers), value_inner=8, lr=1e-2)
        st = init_state(tiny_model(0, layers=3), TOK, s)
        mx.random.seed(2)
        new = {k: mx.random.normal(v.shape) * 0.1 for k, v in tree_flatten(st.policy.trainable_parameters())
               if "lora_b" in k or "value_head.out" in k}
        st.policy.update(tree_unflatten(list(new.items())))
        return st

    prompts = [[1, 4, 9, 5, 6], [1, 4, 9, 7, 8, 10], [1, 4, 9, 3]]
    comps = [comp([11, 12]), comp([13], "length"), comp([14, 15, 16]), comp([17]), comp([18, 19]), comp([])]
    b = build_batch(prompts, comps, [0, 0, 1, 1, 2, 2], eos=2)
    st = state()
    model, vh = st.policy.model, st.policy.value_head
    from mlxhv.rl.prefix import shared_start

    start = shared_start(model)
    rows, shared = RowPasses(b, rows_per_pass=6), GroupPasses(model, b, start, rows_per_pass=6)
    assert shared.C == 3  # [1, 4, 9]
    assert (shared.trunk is not None) == bool(start) and (not start or shared.trunk.prefix.shape[1] == 3)
    lp, v = rows.no_grad(model, vh, temperature=0.7)
    lp_s, v_s = shared.no_grad(model, vh, 0.7)
    np.testing.assert_allclose(lp_s, lp, atol=1e-5)
    np.testing.assert_allclose(v_s, v, atol=1e-5)

    n, L = b.mask.shape
    data = {"mask": b.mask, "old_logprobs": lp, "old_values": v,
            "advantages": np.linspace(-1, 1, n * L, dtype=np.float32).reshape(n, L), "returns": np.ones((n, L), np.float32)}
    _, m_rows = update_minibatch(st, rows, Minibatch(np.arange(6), L), data)
    st2 = state()
    shared2 = GroupPasses(st2.policy.model, b, start, rows_per_pass=6)
    _, m_shared = update_minibatch(st2, shared2, Minibatch(np.arange(6), L, [0, 1, 2]), data)
    for key in ("loss", "pg_loss", "v_loss", "grad_norm"):
        assert m_shared[key] == pytest.approx(m_rows[key], rel=1e-4, abs=1e-6)
    p1 = dict(tree_flatten(st.policy.trainable_parameters()))
    p2 = dict(tree_flatten(st2.policy.trainable_parameters()))
    assert any(not np.allclose(np.array(p1[k]), np.array(dict(tree_flatten(state().policy.trainable_parameters()))[k]))
               for k in p1 if "lora_a" in k)  # the step moved the adapters
    for k in p1:
        np.testing.assert_allclose(np.array(p2[k]), np.array(p1[k]), atol=1e-5)


def test_sft_curves_read_the_sft_log(tmp_path):
    import json

    from mlxhv.rl.plot import plot_run, read_sft_metrics

    recs = [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.0, "val": {"loss": 0.9, "decision_accuracy": 0.5}},
            {"step": 3, "loss": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    steps, vals = read_sft_metrics(tmp_path)
    assert [r["step"] for r in steps] == [1, 2, 3] and vals == [{"step": 2, "loss": 0.9, "decision_accuracy": 0.5}]
    pytest.importorskip("matplotlib")
    png = plot_run(tmp_path)
    assert png == tmp_path / "curves.png" and png.read_bytes()[:4] == b"\x89PNG"
