"""Our LoRA adapters load in mlx-lm itself (and in mlxhv.models.load) and change the output as trained."""

import json

import mlx.core as mx
import numpy as np

from mlxhv.rl.lora import LoRASettings, apply_lora, lora_layers, save_adapters


def test_saved_adapter_loads_in_mlx_lm(smollm_dir, tmp_path):
    import mlx_lm

    from mlxhv.models import load

    model, tok = load("smollm2-135m", precision="float32")
    tokens = mx.array([tok.encode("The hypothesis is supported by the evidence because")])
    base = model(tokens)[0, -1]
    settings = LoRASettings(rank=4, alpha=8, keys=["self_attn.q_proj", "self_attn.v_proj"], num_layers=6)
    apply_lora(model, settings, seed=3)
    for i, m in enumerate(lora_layers(model)):  # stand-in for training: non-zero B
        m.lora_b = 0.3 * mx.random.normal(m.lora_b.shape, key=mx.random.key(i))
    ours = model(tokens)[0, -1]
    save_adapters(model, settings, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["num_layers"] == 6 and cfg["lora_parameters"]["rank"] == 4

    ref_model, _ = mlx_lm.load(str(smollm_dir), adapter_path=str(tmp_path))  # mlx-lm's own LoRA, 4-bit base
    theirs = ref_model(tokens)[0, -1]
    plain, _ = mlx_lm.load(str(smollm_dir))
    plain_logits = plain(tokens)[0, -1]
    delta = np.abs(np.array(ours) - np.array(base)).max()
    assert delta > 1.0, delta  # the adapter changes the output
    assert np.abs(np.array(plain_logits) - np.array(base)).max() < 0.05  # 4-bit vs its exact float32 copy
    # mlx-lm's adapted model follows ours; it differs only by float32 vs 4-bit arithmetic (as does the base)
    np.testing.assert_allclose(np.array(theirs), np.array(ours), atol=0.05)
    assert np.abs(np.array(theirs) - np.array(plain_logits)).max() > 0.5 * delta

    again, _ = load("smollm2-135m", precision="float32", adapter_path=tmp_path)
    np.testing.assert_allclose(np.array(again(tokens)[0, -1]), np.array(ours), atol=1e-4)
