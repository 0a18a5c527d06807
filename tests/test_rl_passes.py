"""The passes seam (rl/passes.py): rl_iteration on whole rows and on shared prompts gives the same update, with
the leave-one-out baseline, reward whitening and class-balanced prompts on; settings that cannot apply are refused."""

from types import SimpleNamespace

import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxhv.errors import SettingsError
from mlxhv.prompts import JSON_ANSWER_PREFIX
from mlxhv.rl.task import JudgeTask
from mlxhv.rl.lora import LoRASettings
from mlxhv.rl.passes import GroupPasses, RowPasses, describe_passes, make_passes
from mlxhv.rl.reward import RewardSettings
from mlxhv.rl.rollout import build_batch
from mlxhv.rl.trainer import RLSettings, init_state, rl_iteration
from tests.rl_tiny import tiny_model

# A tiny vocabulary whose tokens spell judge answers after the JSON prefix, so the real judge task scores them.
PIECES = {3: "VALIDATED", 4: "REJECTED", 5: "REFINED", 6: '", "confidence": 0.8}', 7: '", "confidence": 0.3}'}
EOS = 2
TOKENIZER = SimpleNamespace(eos_token_id=EOS, eos_token_ids={EOS},
                            decode=lambda ids: "".join(PIECES.get(int(i), " x") for i in ids))


def _examples(n=6):
    from mlxhv.data import parse_decision_weights, synth_examples

    return synth_examples(n, seed=0, levels=(1,), decision_weights=parse_decision_weights("balanced"))


def _settings(share: bool, **kw):
    base = dict(prompts_per_step=3, samples_per_prompt=4, max_new_tokens=4, temperature=1.0, ppo_epochs=1,
                minibatch_size=12, lr=1e-2, kl_coef=0.1, kl_target=None, value_inner=8, score_baseline="loo",
                whiten_rewards=True, balance_classes=True, share_prompts=share, seed=3, answer_prefix="json",
                lora=LoRASettings(rank=4, alpha=8, num_layers=1))
    base.update(kw)
    return RLSettings(**base)


def _run(share: bool):
    s = _settings(share)
    state = init_state(tiny_model(seed=1, layers=3), TOKENIZER, s)
    exs = _examples()
    prompts = [[1, 8 + i, 9 + i, 10] for i in range(len(exs))]
    task = JudgeTask(exs, prompts, RewardSettings(), JSON_ANSWER_PREFIX, balance_classes=True)
    idx = task.select(1, s.prompts_per_step, s.seed)
    assert sorted(task.labels[i] for i in idx) == ["REFINED", "REJECTED", "VALIDATED"]  # one per class
    metrics, scored = rl_iteration(state, [prompts[i] for i in idx], lambda j, c: task.score(idx[j], c), 1)
    return state, metrics, scored


def test_rl_iteration_rows_equal_shared_prompts():
    st_rows, m_rows, sc_rows = _run(share=False)
    st_shared, m_shared, sc_shared = _run(share=True)
    assert [s.text for s in sc_rows] == [s.text for s in sc_shared]  # the same rollout
    assert len({s.reward for s in sc_rows}) > 1  # the scores differ, so loo and whitening do something
    for key in ("reward_mean", "kl", "loss", "pg_loss", "v_loss", "entropy", "approx_kl", "grad_norm"):
        assert m_shared[key] == pytest.approx(m_rows[key], rel=1e-4, abs=1e-6), key
    assert np.isfinite(m_rows["loss"]) and m_rows["skipped_updates"] == 0
    p1 = dict(tree_flatten(st_rows.policy.trainable_parameters()))
    p2 = dict(tree_flatten(st_shared.policy.trainable_parameters()))
    moved = [k for k in p1 if "lora_b" in k and np.abs(np.array(p1[k])).sum() > 0]
    assert moved  # the step changed the adapters
    for k in p1:
        np.testing.assert_allclose(np.array(p2[k]), np.array(p1[k]), atol=1e-5)


def test_make_passes_picks_and_describes():
    model = tiny_model(seed=0, layers=3)
    init_state(model, TOKENIZER, _settings(True))  # LoRA on the last block: the trunk is blocks 0-1
    batch = build_batch([[1, 5, 6]], [SimpleNamespace(tokens=[3], finish_reason="stop")] * 2, [0, 0], EOS)
    assert isinstance(make_passes(model, batch, True, None, 4), GroupPasses)
    assert make_passes(model, batch, True, None, 4).start == 2
    assert make_passes(model, batch, True, False, 4).start == 0
    assert isinstance(make_passes(model, batch, False, None, 4), RowPasses)
    assert describe_passes(model, True, None) == "passes: shared-prompt, trunk below block 2"
    assert describe_passes(model, True, False) == "passes: shared-prompt, no trunk cache"
    assert describe_passes(model, False, None) == "passes: whole rows (share_prompts: false)"


@pytest.mark.parametrize("kw, message", [
    (dict(share_prompts=False, cache_trunk=True), "cache_trunk needs share_prompts"),
    (dict(score_baseline="loo", samples_per_prompt=1), "needs samples_per_prompt >= 2"),
    (dict(share_prompts=True, samples_per_prompt=8, minibatch_size=4), "minibatch_size 4 < samples_per_prompt 8"),
    (dict(score_baseline="mean"), "score_baseline must be"),
])
def test_settings_that_cannot_apply_are_refused(kw, message):
    with pytest.raises(SettingsError, match=message):
        RLSettings(**kw)


def test_cli_refuses_them_with_one_error_line(tmp_path):
    from click.testing import CliRunner

    from mlxhv.cli import main

    r = CliRunner().invoke(main, ["train", "ppo", "--samples-per-prompt", "8", "--minibatch-size", "4",
                                  "--print-config"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "minibatch_size 4 < samples_per_prompt 8" in r.output
