"""`rl.lora.load_adapters`: our adapters and adapters trained by mlx-lm's own LoRA trainer load into our LoRA
layers with the same outputs, and training continues from them."""

import json
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxhv.errors import ModelLoadError
from mlxhv.rl.lora import LoRALinear, LoRASettings, apply_lora, load_adapters, lora_layers, save_adapters
from tests.rl_tiny import tiny_model

TOKENS = mx.array([[1, 5, 9, 3, 17, 22, 4, 8, 30, 2]])
ALL_LINEAR = ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj",
              "self_attn.q_proj", "self_attn.v_proj"]


def test_our_adapter_round_trip(tmp_path):
    model = tiny_model(seed=0, layers=3)
    s = LoRASettings(rank=4, alpha=12.0, num_layers=2, keys=["self_attn.q_proj", "mlp.up_proj"])
    apply_lora(model, s, seed=1)
    for i, m in enumerate(lora_layers(model)):
        m.lora_b = 0.3 * mx.random.normal(m.lora_b.shape, key=mx.random.key(i))
    ours = model(TOKENS)
    save_adapters(model, s, tmp_path)
    fresh = tiny_model(seed=0, layers=3)
    assert load_adapters(fresh, tmp_path) == s
    np.testing.assert_allclose(np.array(fresh(TOKENS)), np.array(ours), atol=1e-5)
    assert len(lora_layers(fresh)) == 4  # 2 keys x the last 2 blocks


class _Rows:
    """The smallest mlx-lm dataset: items processed into (tokens, prompt offset)."""

    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, i):
        return self.rows[i]

    def __len__(self):
        return len(self.rows)

    def process(self, row):
        return row


def _mlx_lm_train(tmp_path, num_layers, keys=None):
    """Train a LoRA adapter with mlx-lm's own `mlx_lm.lora.train_model` (its CLI's code path) for 5 steps."""
    from mlx_lm.lora import CONFIG_DEFAULTS, train_model

    lora_parameters = {"rank": 4, "dropout": 0.0, "scale": 10.0}
    if keys is not None:
        lora_parameters["keys"] = keys
    args = SimpleNamespace(**{**CONFIG_DEFAULTS, "model": "tiny", "train": True, "num_layers": num_layers,
                              "iters": 5, "batch_size": 2, "learning_rate": 5e-2, "adapter_path": str(tmp_path),
                              "steps_per_report": 5, "steps_per_eval": 1000, "save_every": 1000,
                              "lora_parameters": lora_parameters})
    rows = [([1, 4, 6, 7, 2, 9, 11], 3), ([1, 4, 8, 7, 2, 12, 13], 3), ([1, 5, 6, 7, 2, 9, 14], 2),
            ([1, 5, 8, 7, 3, 12, 15], 2)]
    mx.random.seed(0)  # mlx-lm's CLI seeds before training (LoRA init, batch order); train_model does not
    np.random.seed(0)
    model = tiny_model(seed=0, layers=3)
    train_model(args, model, _Rows(rows), _Rows([]))
    return model


@pytest.mark.parametrize("num_layers,keys", [(2, None), (-1, ["self_attn.q_proj", "self_attn.v_proj"])])
def test_mlx_lm_adapter_loads_into_our_layers_and_trains_on(tmp_path, num_layers, keys):
    theirs = _mlx_lm_train(tmp_path, num_layers, keys)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "mlxhv_lora" not in cfg and cfg["lora_parameters"]["scale"] == 10.0  # written by mlx-lm
    expect = np.array(theirs(TOKENS))
    base = np.array(tiny_model(seed=0, layers=3)(TOKENS))
    assert np.abs(expect - base).max() > 1e-3  # mlx-lm's training moved the adapter off zero

    model = tiny_model(seed=0, layers=3)
    s = load_adapters(model, tmp_path)
    n_blocks = 3 if num_layers < 0 else num_layers
    assert s.num_layers == (-1 if num_layers < 0 else num_layers)
    assert s.rank == 4 and s.scale == pytest.approx(10.0)  # mlx-lm's scale is ours: alpha / rank
    assert s.keys == (ALL_LINEAR if keys is None else sorted(keys))  # no keys: every linear layer of a block
    assert len(lora_layers(model)) == n_blocks * len(s.keys)
    np.testing.assert_allclose(np.array(model(TOKENS)), expect, atol=1e-5)

    # training goes on from the loaded weights: the adapters (and only they) are trainable, a step lowers the loss
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    saved = set(mx.load(str(tmp_path / "adapters.safetensors")))
    assert trainable == saved

    def loss_fn(m):
        logits = m(TOKENS[:, :-1])
        return nn.losses.cross_entropy(logits, TOKENS[:, 1:]).mean()

    opt = optim.SGD(learning_rate=0.05)  # small enough that one gradient step must descend
    before = loss_fn(model).item()
    loss, grads = nn.value_and_grad(model, loss_fn)(model)
    opt.update(model, grads)
    assert loss_fn(model).item() < before


def test_bad_adapters_are_refused(tmp_path):
    model = tiny_model(seed=0)
    s = LoRASettings(rank=4, alpha=8, num_layers=1)
    apply_lora(model, s)
    save_adapters(model, s, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())

    with pytest.raises(ModelLoadError, match="not found"):
        load_adapters(tiny_model(seed=0), tmp_path / "nowhere")

    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "fine_tune_type": "dora"}))
    with pytest.raises(ModelLoadError, match="dora"):
        load_adapters(tiny_model(seed=0), tmp_path)

    wrong = {k: v for k, v in cfg.items() if k != "mlxhv_lora"}  # as mlx-lm writes it, rank 8 instead of 4
    wrong["lora_parameters"] = {**cfg["lora_parameters"], "rank": 8, "scale": 2.0}
    (tmp_path / "adapter_config.json").write_text(json.dumps(wrong))
    with pytest.raises(ModelLoadError, match=r"lora_a: shape \(32, 4\), the model's is \(32, 8\)"):
        load_adapters(tiny_model(seed=0), tmp_path)

    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    w = dict(mx.load(str(tmp_path / "adapters.safetensors")))
    w.pop(sorted(w)[0])
    mx.save_safetensors(str(tmp_path / "adapters.safetensors"), w)
    with pytest.raises(ModelLoadError, match="missing from the file"):
        load_adapters(tiny_model(seed=0), tmp_path)
    assert all(isinstance(m, LoRALinear) for m in lora_layers(model))


@pytest.mark.parametrize("kl_reference", ["init", "base"])
def test_ppo_init_adapter_from_mlx_lm_reproduces_its_logits_and_trains_on(tmp_path, kl_reference):
    """`RLSettings(init_adapter=…)` with an adapter trained by mlx-lm's own trainer: at step 0 the policy's
    logits are mlx-lm's model's; the KL reference is that policy (kl_reference "init": KL 0 at step 0) or the
    base (LoRA off: KL > 0 from the start); an RL iteration moves the adapter."""
    from mlxhv.rl.lora import lora_disabled
    from mlxhv.rl.trainer import RLSettings, init_state, reference_policy, rl_iteration

    theirs = _mlx_lm_train(tmp_path, num_layers=2)
    expect = np.array(theirs(TOKENS))
    s = RLSettings(init_adapter=str(tmp_path), prompts_per_step=2, samples_per_prompt=2, max_new_tokens=3,
                    temperature=1.0, ppo_epochs=1, minibatch_size=4, value_inner=8, lr=1e-2, kl_reference=kl_reference)
    tok = SimpleNamespace(eos_token_id=2, eos_token_ids={2}, decode=lambda ids: " ".join(map(str, ids)))
    state = init_state(tiny_model(seed=0, layers=3), tok, s)
    assert s.lora.num_layers == 2 and s.lora.alpha == pytest.approx(40.0)  # the adapter's layout (scale 10, rank 4)
    np.testing.assert_allclose(np.array(state.policy.model(TOKENS)), expect, atol=1e-5)
    with lora_disabled(state.policy.model):
        np.testing.assert_allclose(np.array(state.policy.model(TOKENS)), np.array(tiny_model(seed=0, layers=3)(TOKENS)),
                                   atol=1e-5)
    before = {k: np.array(v) for k, v in tree_flatten(state.policy.model.trainable_parameters())}
    score = lambda j, c: SimpleNamespace(reward=float(len(c.tokens)))  # noqa: E731
    metrics, _ = rl_iteration(state, [[1, 4, 6], [1, 5, 8]], score, 1)
    assert np.isfinite(metrics["loss"])
    if kl_reference == "init":
        assert metrics["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as its reference
    else:
        assert metrics["kl"] > 1e-3  # the adapter is off the base from the start
    after = dict(tree_flatten(state.policy.model.trainable_parameters()))
    assert any(not np.allclose(before[k], np.array(after[k])) for k in before)
    with reference_policy(state):  # the reference stays where the run started, the policy's weights come back
        ref = np.array(state.policy.model(TOKENS))
    np.testing.assert_allclose(ref, expect if kl_reference == "init" else np.array(tiny_model(seed=0, layers=3)(TOKENS)),
                               atol=1e-5)
    assert all(np.array_equal(np.array(v), np.array(after[k]))
               for k, v in tree_flatten(state.policy.model.trainable_parameters()))


def test_init_adapter_layout_is_recorded_and_a_different_one_refused(tmp_path):
    """settings.lora becomes the adapter's layout; the same settings start again (as a resume does), another
    layout is refused."""
    from mlxhv.errors import SettingsError
    from mlxhv.rl.trainer import RLSettings, init_state

    model = tiny_model(seed=0, layers=3)
    layout = LoRASettings(rank=4, alpha=12.0, num_layers=2, keys=["self_attn.q_proj", "mlp.up_proj"])
    apply_lora(model, layout, seed=1)
    save_adapters(model, layout, tmp_path)
    tok = SimpleNamespace(eos_token_id=2, eos_token_ids={2}, decode=lambda ids: "")
    s = RLSettings(init_adapter=str(tmp_path), value_inner=8)
    init_state(tiny_model(seed=0, layers=3), tok, s)
    assert s.lora == layout
    init_state(tiny_model(seed=0, layers=3), tok, s)  # settings read back from settings.json start the same way
    other = RLSettings(init_adapter=str(tmp_path), value_inner=8, lora=LoRASettings(rank=2))
    with pytest.raises(SettingsError, match="comes from init_adapter"):
        init_state(tiny_model(seed=0, layers=3), tok, other)
