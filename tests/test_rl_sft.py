"""`mlxhv train sft` (rl/sft.py): the target, the masked loss against a hand-built batch, the frozen-trunk path
against a full pass, and tiny-model runs (the loss falls, resume replays the run, the adapter carries its prompt)."""

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxhv.errors import SettingsError
from mlxhv.answer import parse_answer
from mlxhv.prompts import JSON_ANSWER_PREFIX
from mlxhv.rl.lora import LoRASettings, apply_lora, lora_layers
from mlxhv.rl.sft import (FrozenTrunk, SFTSettings, answer_loss, answer_text, common_prefix, make_batch,
                          train_sft)
from tests.rl_tiny import tiny_model

ALL_KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj"]


def _example(decision="REFINED", confidence=0.64, refined="Holds only for firms under 50 staff."):
    from mlxhv.schema import Example

    return Example.model_validate({
        "id": "t-1", "hypothesis": "Remote work raises output.",
        "evidence": [{"source": "A survey", "content": "Output rose 3% in small firms.", "relevance": 0.8}],
        "expected_decision": decision, "confidence": confidence,
        "refined_hypothesis": refined if decision == "REFINED" else None,
        "metadata": {"domain": "operations", "difficulty_level": 3, "topic": "remote work"}})


def test_answer_text_is_the_rest_of_the_json_answer():
    e = _example()
    text = answer_text(e, JSON_ANSWER_PREFIX)
    assert text == 'REFINED", "confidence": 0.64, "refined_hypothesis": "Holds only for firms under 50 staff."}'
    p = parse_answer(JSON_ANSWER_PREFIX + text)
    assert (p.decision, p.confidence, p.refined_hypothesis, p.method) == (
        "REFINED", 0.64, "Holds only for firms under 50 staff.", "json")
    v = answer_text(_example("VALIDATED", 0.9312), "")
    assert v == '{"decision": "VALIDATED", "confidence": 0.93, "refined_hypothesis": null}'
    with pytest.raises(SettingsError, match="answer_prefix"):
        answer_text(e, "Answer: ")
    with pytest.raises(SettingsError, match="answer_prefix"):
        SFTSettings(answer_prefix="Decision:")
    with pytest.raises(SettingsError, match="val_generate"):
        SFTSettings(select_by="accuracy", val_generate=False)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_masks_the_prompt_on_a_hand_built_batch():
    from mlx_lm.tuner.trainer import default_loss

    model = tiny_model(seed=1)
    # (tokens, prompt length): row 0 = prompt [1 5 6] + answer [7 8] + EOS 2; row 1 = prompt [1 9] + [10] + EOS
    items = [([1, 5, 6, 7, 8, 2], 3), ([1, 9, 10, 2], 2)]
    batch, lengths, positions = make_batch(items, pad_to=4, window_to=1)
    assert batch.tolist() == [[1, 5, 6, 7, 8, 2, 0, 0, 0], [1, 9, 10, 2, 0, 0, 0, 0, 0]]
    assert lengths.tolist() == [[3, 6], [2, 4]]
    assert positions.tolist() == [[2, 3, 4], [1, 2, 3]]  # row 1's third slot is padding (column len - 1)

    logp = _log_softmax(np.array(model(batch[:, :-1]), dtype=np.float64))  # (B, T, V)
    # answer tokens only: row 0 columns 2, 3, 4 predict 7, 8, 2; row 1 columns 1, 2 predict 10, 2
    answer = [(0, 2, 7), (0, 3, 8), (0, 4, 2), (1, 1, 10), (1, 2, 2)]
    expect = -np.mean([logp[b, c, t] for b, c, t in answer])
    for pos in (positions, None):  # the answer window, or the head on every column
        loss, ntoks = answer_loss(model, batch, lengths, pos)
        assert ntoks.item() == 5
        np.testing.assert_allclose(loss.item(), expect, rtol=1e-5)
    # decision_weight 3: each row's first answer token (row 0 column 2 -> 7, row 1 column 1 -> 10) counts 3 times
    w = [3.0, 1.0, 1.0, 3.0, 1.0]
    weighted = -sum(wi * logp[b, c, t] for wi, (b, c, t) in zip(w, answer)) / sum(w)
    for pos in (positions, None):
        loss, ntoks = answer_loss(model, batch, lengths, pos, decision_weight=3.0)
        assert ntoks.item() == 5
        np.testing.assert_allclose(loss.item(), weighted, rtol=1e-5)
    # mlx-lm's default_loss counts one more target per row: the pad (0) after EOS (module docstring, 1.)
    loss, ntoks = default_loss(model, batch, lengths)
    assert ntoks.item() == 7
    with_pad = answer + [(0, 5, 0), (1, 3, 0)]
    np.testing.assert_allclose(loss.item(), -np.mean([logp[b, c, t] for b, c, t in with_pad]), rtol=1e-5)


@pytest.mark.parametrize("decision_weight", [1.0, 3.0])
def test_the_compiled_training_step_equals_the_eager_one(decision_weight):
    """mlx-lm's tuner compiles its step (state in and out, value_and_grad, the optimizer's update): on
    answer_loss it must give the loss and the updated LoRA weights of the same step run eagerly."""
    from functools import partial

    import mlx.optimizers as optim

    batch = make_batch([([1, 5, 6, 7, 8, 2], 3), ([1, 9, 10, 2], 2)], pad_to=4)
    loss_fn = partial(answer_loss, decision_weight=decision_weight)
    results = []
    for compiled in (False, True):
        model = tiny_model(seed=4)
        apply_lora(model, LoRASettings(rank=4, alpha=8, num_layers=-1, keys=ALL_KEYS), seed=0)
        opt = optim.AdamW(learning_rate=1e-2)
        grad_fn = nn.value_and_grad(model, loss_fn)
        state = [model.state, opt.state, mx.random.state]

        def step(*b):
            (loss, ntoks), grad = grad_fn(model, *b)
            opt.update(model, grad)
            return loss, ntoks

        step = partial(mx.compile, inputs=state, outputs=state)(step) if compiled else step
        losses = [step(*batch) for _ in range(2)]
        mx.eval(state)
        results.append(([(x.item(), n.item()) for x, n in losses], dict(tree_flatten(model.trainable_parameters()))))
    (eager, w_eager), (comp, w_comp) = results
    assert [n for _, n in comp] == [5, 5]
    np.testing.assert_allclose([x for x, _ in comp], [x for x, _ in eager], rtol=1e-5)
    assert eager[1][0] < eager[0][0]  # the step trains
    for k in w_eager:
        np.testing.assert_allclose(np.array(w_comp[k]), np.array(w_eager[k]), atol=1e-5, err_msg=k)


def test_a_row_without_answer_tokens_adds_no_gradient():
    """Prompt tokens are never targets: a row that is all prompt leaves loss and gradients as they were."""
    model = tiny_model(seed=2)
    apply_lora(model, LoRASettings(rank=4, alpha=8, num_layers=-1, keys=ALL_KEYS), seed=0)
    for i, m in enumerate(lora_layers(model)):
        m.lora_b = 0.1 * mx.random.normal(m.lora_b.shape, key=mx.random.key(i))
    a = [([1, 5, 6, 7, 8, 2], 3)]
    b = a + [([3, 4, 11, 12, 13, 14], 6)]  # a second row that is all prompt: no targets
    ga = nn.value_and_grad(model, answer_loss)(model, *make_batch(a, pad_to=8))[1]
    gb = nn.value_and_grad(model, answer_loss)(model, *make_batch(b, pad_to=8))[1]
    for (k, x), (_, y) in zip(tree_flatten(ga), tree_flatten(gb)):
        np.testing.assert_allclose(np.array(x), np.array(y), atol=1e-6, err_msg=k)
    assert max(np.abs(np.array(x)).max() for _, x in tree_flatten(ga)) > 1e-4  # and the answer does train


def test_frozen_trunk_path_equals_a_full_pass():
    model = tiny_model(seed=3, layers=3)
    apply_lora(model, LoRASettings(rank=4, alpha=8, num_layers=1, keys=ALL_KEYS), seed=0)  # trunk: blocks 0-1
    for i, m in enumerate(lora_layers(model)):
        m.lora_b = 0.2 * mx.random.normal(m.lora_b.shape, key=mx.random.key(i))
    shared = [1, 4, 5, 6, 7]
    items = [(shared + [9, 10, 11, 2], 7), (shared + [12, 13, 14, 15, 16, 2], 8), (shared + [17, 2], 6)]
    prefix = common_prefix([t for t, _ in items], limit=5)
    assert prefix == shared
    trunk = FrozenTrunk(model, 2, prefix)
    full = make_batch(items)
    cached = full + (trunk.batch([0, 1, 2], items, full[0].shape[1]), trunk.hp)
    (l_full, n_full), g_full = nn.value_and_grad(model, answer_loss)(model, *full)
    (l_tr, n_tr), g_tr = nn.value_and_grad(model, lambda *a: answer_loss(*a, start=2))(model, *cached)
    assert n_full.item() == n_tr.item() == 2 + 3 + 1
    np.testing.assert_allclose(l_tr.item(), l_full.item(), rtol=1e-5)
    for (k, x), (_, y) in zip(tree_flatten(g_full), tree_flatten(g_tr)):
        np.testing.assert_allclose(np.array(y), np.array(x), atol=1e-5, err_msg=k)


# ---------------------------------------------------------------- tiny-model runs


@pytest.fixture(scope="module")
def tiny_dir(smollm_dir, tmp_path_factory):
    """A 2-block llama (hidden 64) saved as an mlx-lm directory with SmolLM2's tokenizer and chat template."""
    from mlx_lm.models import llama

    out = tmp_path_factory.mktemp("tiny-judge")
    cfg = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
               num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=49152,
               tie_word_embeddings=True, rope_theta=10000.0)
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs(**cfg))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(smollm_dir / f, out / f)
    return out


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from mlxhv.data.synth import synth_examples

    d = tmp_path_factory.mktemp("sft-data")
    (d / "train.jsonl").write_text("".join(e.model_dump_json() + "\n" for e in synth_examples(24, seed=4)))
    (d / "system.txt").write_text("Judge the hypothesis. Answer with one JSON object.")
    return d


def _settings(tiny_dir, tiny_data, out, **kw):
    base = dict(model=str(tiny_dir), precision="float32", train=[str(tiny_data / "train.jsonl")], out=str(out),
                system_prompt_file=str(tiny_data / "system.txt"), answer_prefix="json", steps=20, batch_size=4,
                lr=3e-2, valid_fraction=0.25, save_every=10, eval_every=10, max_new_tokens=32, train_threads=None,
                lora=LoRASettings(rank=8, alpha=16, num_layers=-1, keys=ALL_KEYS))
    base.update(kw)
    return SFTSettings(**base)


def _answer_loss_of(tiny_dir, tiny_data, adapter=None):
    """Mean answer loss over the whole training file, base model or with the adapter."""
    from mlxhv.data.io import load_examples
    from mlxhv.models import load
    from mlxhv.prompts import load_system_prompt
    from mlxhv.rl.lora import load_adapters
    from mlxhv.rl.sft import JudgeAnswers

    model, tok = load(str(tiny_dir), precision="float32")
    if adapter is not None:
        load_adapters(model, adapter)
    ds = JudgeAnswers(load_examples(tiny_data / "train.jsonl"), tok,
                      load_system_prompt(str(tiny_data / "system.txt")), JSON_ANSWER_PREFIX)
    loss, n = answer_loss(model, *make_batch([ds.process(e) for e in ds.examples]))
    return loss.item()


@pytest.mark.slow
def test_tiny_sft_run_lowers_answer_loss_and_writes_a_judge_adapter(tiny_dir, tiny_data, tmp_path):
    from mlxhv.prompts import read_prompt_config

    out = tmp_path / "run"
    result = train_sft(_settings(tiny_dir, tiny_data, out))
    before = _answer_loss_of(tiny_dir, tiny_data)
    after = _answer_loss_of(tiny_dir, tiny_data, out)
    assert before > 10.0  # a random 49152-way head: about ln(49152) = 10.8 nats per answer token
    assert after < before - 1.0, (before, after)  # the stated margin: 1 nat per answer token (measured: 1.5)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(0, 21))
    vals = [r for r in recs if "val" in r]
    assert [r["step"] for r in vals] == [0, 10, 20]  # step 0: the base model
    assert vals[-1]["val"]["loss"] < vals[0]["val"]["loss"]
    best = result.best
    assert best["step"] in (10, 20) and (out / "checkpoints" / f"step-{best['step']:06d}").is_dir()
    for name in ("adapters.safetensors", "adapter_config.json", "judge_prompt.json"):  # the best is at the top
        assert (out / name).read_bytes() == (out / "checkpoints" / f"step-{best['step']:06d}" / name).read_bytes()
    pc = read_prompt_config(out)
    assert pc.answer_prefix == JSON_ANSWER_PREFIX and pc.max_tokens == 32
    assert pc.system_prompt_text == "Judge the hypothesis. Answer with one JSON object."
    split = json.loads((out / "split.json").read_text())
    assert len(split["valid"]) == 6 and not set(split["valid"]) & set(split["train"])


@pytest.mark.slow
def test_resume_replays_the_run(tiny_dir, tiny_data, tmp_path):
    kw = dict(steps=6, save_every=2, eval_every=3, curriculum="levels", balance_classes=True)
    straight = tmp_path / "straight"
    train_sft(_settings(tiny_dir, tiny_data, straight, **kw))
    cut = tmp_path / "cut"
    first = train_sft(_settings(tiny_dir, tiny_data, cut, max_minutes=0.0, **kw))  # the budget ends it at step 1
    assert first.step == 1 and (cut / "checkpoints" / "step-000001").is_dir()
    with pytest.raises(Exception, match="--resume"):
        train_sft(_settings(tiny_dir, tiny_data, cut, **kw))
    train_sft(_settings(tiny_dir, tiny_data, cut, **kw), resume=True)
    a = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4, 5, 6]
    assert [r.get("level_mix") for r in a] == [r.get("level_mix") for r in b]  # the same draws, logged per step
    assert a[1]["level_mix"] == {"1": 4}  # curriculum: step 1 is level 1 only
    np.testing.assert_allclose([r["loss"] for r in b[1:]], [r["loss"] for r in a[1:]], rtol=1e-4)
    wa = mx.load(str(straight / "checkpoints" / "step-000006" / "adapters.safetensors"))
    wb = mx.load(str(cut / "checkpoints" / "step-000006" / "adapters.safetensors"))
    for k in wa:
        np.testing.assert_allclose(np.array(wb[k]), np.array(wa[k]), atol=1e-5, err_msg=k)


def test_cli_print_config_and_errors(tmp_path):
    from click.testing import CliRunner

    from mlxhv.cli import main

    cfg = tmp_path / "sft.json"
    cfg.write_text(json.dumps({"steps": 7, "lora": {"rank": 4, "num_layers": 2}}))
    r = CliRunner().invoke(main, [
        "train", "sft", "--config", str(cfg), "--train", "a.jsonl", "--train", "b.jsonl", "--answer-prefix", "json",
        "--curriculum", "levels", "--print-config"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["train"] == ["a.jsonl", "b.jsonl"] and d["steps"] == 7 and d["curriculum"] == "levels"
    assert d["lora"]["rank"] == 4 and d["answer_prefix"] == JSON_ANSWER_PREFIX
    cfg.write_text(json.dumps({"stepz": 7}))
    r = CliRunner().invoke(main, ["train", "sft", "--config", str(cfg)])
    assert r.exit_code != 0 and "stepz" in r.output
