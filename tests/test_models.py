"""Model loading against references: mx.load's GGUF reader, mlx_lm.load / mlx_lm.generate on the converted
directory, the quantised model for the float32 fast path; plus every user-facing error path."""

import json
import os
import struct
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from mlxhv import _blas
from mlxhv.engine import GenerationSettings, generate
from mlxhv.models import ModelLoadError, apply_chat_template, load, read_header, resolve
from mlxhv.models import memory
from mlxhv.models.gguf import convert_gguf
from mlxhv.models.loader import ensure_converted
from mlxhv.models.precision import model_precision, resolve_precision

RAW_PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time, there was", "Water boils at",
               "The opposite of hot is"]


# --- a hand-written GGUF header (no tensor data: the checks fail before reading any) ---------------------
def _gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _gguf_value(v):
    if isinstance(v, str):
        return struct.pack("<I", 8) + _gguf_str(v)
    if isinstance(v, list):
        return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(_gguf_str(s) for s in v)
    return struct.pack("<II", 4, v)


def write_gguf_header(path, metadata, tensors):
    """tensors: [(name, shape, ggml_type)]"""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for k, v in metadata.items():
        out += _gguf_str(k) + _gguf_value(v)
    for name, shape, ttype in tensors:
        out += _gguf_str(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape[::-1])
        out += struct.pack("<IQ", ttype, 0)
    path.write_bytes(out)
    return path


LLAMA_MD = {"general.architecture": "llama", "llama.block_count": 1, "llama.embedding_length": 64,
            "llama.feed_forward_length": 128, "llama.attention.head_count": 4, "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": ["a", "b"]}


# --- GGUF reading and conversion -------------------------------------------------------------------------
def test_header_reader_agrees_with_mx_load(smollm_dir):
    gguf = resolve("smollm2-135m").gguf
    header = read_header(gguf)
    weights, md = mx.load(str(gguf), return_metadata=True)
    for key in ["general.architecture", "tokenizer.chat_template", "tokenizer.ggml.pre"]:
        assert header.metadata[key] == md[key]
    for key in ["llama.block_count", "llama.embedding_length", "llama.attention.head_count_kv"]:
        assert header.metadata[key] == md[key].item()
    assert header.metadata["tokenizer.ggml.tokens"] == md["tokenizer.ggml.tokens"]
    assert header.metadata["tokenizer.ggml.merges"] == md["tokenizer.ggml.merges"]
    assert {t.name for t in header.tensors} == {k for k in weights if not k.endswith((".scales", ".biases"))}
    for t in header.tensors:
        if t.type == "F32":
            assert t.shape == tuple(weights[t.name].shape)
    assert {t.type for t in header.tensors} == {"Q4_1", "Q8_0", "F32"}


def test_converted_directory_is_an_mlx_lm_model(smollm_dir):
    cfg = json.loads((smollm_dir / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]) == (30, 576, 9, 3, 1536, 49152)
    assert cfg["rope_traditional"] is True and cfg["tie_word_embeddings"] is True
    assert cfg["rope_theta"] == 100000.0
    assert not any(p.name.startswith(".") for p in smollm_dir.parent.iterdir())  # no temp dirs left


def test_tokenizer_from_gguf(smollm):
    _, tok = smollm
    assert tok.encode("<file_sep>") == [tok.convert_tokens_to_ids("<file_sep>")]  # control tokens stay whole
    ids = tok.encode("Year 2024")
    assert [tok.decode([i]) for i in ids[-4:]] == ["2", "0", "2", "4"]  # digits split one by one
    text = "Hypothesis: α-blockers lower risk by 12.5 %\n\tsee <|im_end|> tab"
    assert tok.decode(tok.encode(text)) == text
    assert tok.eos_token_id == 2 and tok.bos_token_id == 1
    ids = apply_chat_template(tok, [{"role": "user", "content": "Hi"}])
    assert tok.decode(ids).startswith("<|im_start|>system\n") and tok.decode(ids).endswith("<|im_start|>assistant\n")
    # regression pin (ids checked against llama.cpp when the converter was written, docs/design.md)
    assert tok.encode("Hello world!") == [19556, 905, 17]


def test_greedy_answer_matches_mlx_lm_generate_on_the_converted_directory(smollm_dir, smollm_quantized):
    import mlx_lm

    model, tok = smollm_quantized
    ref_model, ref_tok = mlx_lm.load(str(smollm_dir))
    prompt = apply_chat_template(tok, [{"role": "user", "content": "What is the capital of France?"}])
    ref = mlx_lm.generate(ref_model, ref_tok, prompt, max_tokens=10)
    (ours,), _ = generate(model, tok, [prompt], GenerationSettings(max_tokens=10))
    assert ours.text == ref
    assert "Paris" in ours.text and ours.finish_reason == "stop"


def test_float32_fast_path_gives_the_quantised_greedy_tokens(smollm, smollm_quantized):
    """The fast path dequantises exactly (w = q·scale + bias in float32); the 4-bit kernel rounds the
    dequantised weights through float16, so logits differ by ~1e-3 and an argmax near-tie could flip.
    On this fixed prompt set the 8 greedy tokens agree for every prompt."""
    settings = GenerationSettings(max_tokens=8, batch_size=8)
    fast, _ = generate(*smollm, RAW_PROMPTS, settings)
    quant, _ = generate(*smollm_quantized, RAW_PROMPTS, settings)
    assert [f.tokens for f in fast] == [q.tokens for q in quant]
    assert model_precision(smollm[0]) == "float32" and model_precision(smollm_quantized[0]) == "quantized"
    # logits themselves: close, not equal
    ids = mx.array([smollm[1].encode(RAW_PROMPTS[0])])
    a, b = smollm[0](ids)[0, -1], smollm_quantized[0](ids)[0, -1].astype(mx.float32)
    assert mx.max(mx.abs(a - b)).item() < 0.5


def test_import_gguf_cli_and_cache_reuse(tmp_path, smollm_dir, smollm_quantized):
    import mlx_lm

    from mlxhv.cli import main

    gguf = resolve("smollm2-135m").gguf
    out = tmp_path / "smol"
    r = CliRunner().invoke(main, ["models", "import-gguf", str(gguf), "-o", str(out)])
    assert r.exit_code == 0, r.output
    m, _ = mlx_lm.load(str(out))
    ids = mx.array([[1, 9690, 198, 2683]])
    assert mx.array_equal(m(ids), smollm_quantized[0](ids))  # same weights as the cached conversion
    r = CliRunner().invoke(main, ["models", "import-gguf", str(gguf), "-o", str(out)])
    assert r.exit_code != 0 and "already exists" in r.output
    stamp = (smollm_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_converted(gguf) == smollm_dir  # converted once, then reused
    assert (smollm_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    gguf = resolve("smollm2-135m").gguf

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mx, "save_safetensors", boom)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


# --- error paths -------------------------------------------------------------------------------------
def test_offline_hub_model_names_the_offline_preset(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    for name in ["qwen2.5-1.5b", "some-org/some-model"]:
        with pytest.raises(ModelLoadError) as e:
            load(name)
        assert "not in the local Hugging Face cache" in str(e.value) and "smollm2-135m" in str(e.value)


def test_memory_check_refuses_before_loading(monkeypatch, smollm_dir):
    monkeypatch.setattr(memory, "available_bytes", lambda: 200_000_000)
    with pytest.raises(ModelLoadError) as e:
        load("smollm2-135m", precision="float32")
    msg = str(e.value)
    assert "GB" in msg and "0.2 GB" in msg and "--no-memory-check" in msg
    model, _ = load("smollm2-135m", precision="quantized", memory_check=False)  # the override
    assert model_precision(model) == "quantized"


def test_unsupported_gguf_architecture_and_quantisation(tmp_path):
    arch = write_gguf_header(tmp_path / "q.gguf", {**LLAMA_MD, "general.architecture": "qwen2"},
                             [("token_embd.weight", (2, 64), 0)])
    with pytest.raises(ModelLoadError, match="architecture 'qwen2' is not supported"):
        load(str(arch))
    kq = write_gguf_header(tmp_path / "k.gguf", LLAMA_MD,
                           [("token_embd.weight", (2, 64), 0), ("blk.0.attn_q.weight", (64, 64), 12)])
    with pytest.raises(ModelLoadError, match="quantisation type Q4_K"):
        convert_gguf(kq, tmp_path / "out")
    spm = write_gguf_header(tmp_path / "s.gguf", {**LLAMA_MD, "tokenizer.ggml.model": "llama"},
                            [("token_embd.weight", (2, 64), 0)])
    with pytest.raises(ModelLoadError, match="tokenizer model 'llama'"):
        convert_gguf(spm, tmp_path / "out")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 20)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load(str(bad))
    assert not (tmp_path / "out").exists()


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="no such preset"):
        load("not-a-model")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load(str(tmp_path))


def test_auto_precision():
    assert resolve_precision("auto", 0.6e9, 20e9) == "float32"  # small model on a CPU
    assert resolve_precision("auto", 130e9, 20e9) == "quantized"  # QwQ-32B in float32 would be 130 GB
    assert resolve_precision("bfloat16", 1, 1) == "bfloat16"
    with pytest.raises(ValueError):
        resolve_precision("int3", 1, 1)


# --- BLAS and CLI ----------------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenBLAS swap is Linux-only")
def test_fast_blas_is_active_and_does_not_leak():
    st = _blas.status()
    assert st.active, st.reason
    assert _blas.measure_gflops(512) > 8  # the bundled reference BLAS does ~3 GFLOP/s
    assert "LD_PRELOAD" not in os.environ
    assert subprocess.run(["grep", "-q", "x"], input=b"x").returncode == 0  # children run normally


def test_cli_models_list_doctor_generate(smollm):
    from mlxhv.cli import main

    r = CliRunner().invoke(main, ["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    rows = {x["name"]: x for x in json.loads(r.output)}
    assert set(rows) == {"qwq-32b", "qwen2.5-1.5b", "smollm2-135m"} and rows["smollm2-135m"]["default"]
    r = CliRunner().invoke(main, ["doctor", "--quick", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["blas"]["gflops"] > 0 and "cache_dir" in rep["models"]
    r = CliRunner().invoke(main, ["generate", "--max-tokens", "10", "What is the capital of France?"])
    assert r.exit_code == 0, r.output
    assert "Paris" in r.output and "tok/s" in r.output
    r = CliRunner().invoke(main, ["generate", "-m", "no-such-model", "hi"])
    assert r.exit_code == 2 and "no such preset" in r.output


# --- slow: an independent implementation ---------------------------------------------------------------
def _reference_logits(gguf_path, ids):
    """Logits of a llama GGUF from gguf-py (llama.cpp's own reader and dequantiser) + a float64 numpy forward
    pass written from the Hugging Face llama definition: q/k rows un-permuted to HF order (as transformers'
    GGUF loader does) and rotate-half RoPE. Shares no code with MLX or mlx-lm."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    md = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("tokenizer.")}
    w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64).reshape(tuple(int(d) for d in t.shape[::-1]))
         for t in reader.tensors}
    n_layers, d, n_heads = md["llama.block_count"], md["llama.embedding_length"], md["llama.attention.head_count"]
    n_kv, eps = md["llama.attention.head_count_kv"], md["llama.attention.layer_norm_rms_epsilon"]
    theta, hd = md["llama.rope.freq_base"], d // n_heads

    def unpermute(x, heads):  # transformers' LlamaTensorProcessor._reverse_permute_weights
        return x.reshape(heads, hd // 2, 2, -1).swapaxes(2, 1).reshape(x.shape)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x):  # (H, T, hd), rotate-half
        inv = theta ** (-np.arange(0, hd, 2) / hd)
        ang = np.arange(x.shape[1])[:, None] * inv[None]  # (T, hd/2)
        cos, sin = np.concatenate([np.cos(ang)] * 2, -1), np.concatenate([np.sin(ang)] * 2, -1)
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos + rot * sin

    T = len(ids)
    h = w["token_embd.weight"][ids]  # (T, D)
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(n_layers):
        p = f"blk.{i}."
        x = rms(h, w[p + "attn_norm.weight"])
        q = (x @ unpermute(w[p + "attn_q.weight"], n_heads).T).reshape(T, n_heads, hd).transpose(1, 0, 2)
        k = (x @ unpermute(w[p + "attn_k.weight"], n_kv).T).reshape(T, n_kv, hd).transpose(1, 0, 2)
        v = (x @ w[p + "attn_v.weight"].T).reshape(T, n_kv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, n_heads // n_kv, 0), np.repeat(v, n_heads // n_kv, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + causal  # (H, T, T)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        h = h + (a @ v).transpose(1, 0, 2).reshape(T, d) @ w[p + "attn_output.weight"].T
        x = rms(h, w[p + "ffn_norm.weight"])
        g = x @ w[p + "ffn_gate.weight"].T
        h = h + ((g / (1 + np.exp(-g))) * (x @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    out = w.get("output.weight", w["token_embd.weight"])
    return rms(h, w["output_norm.weight"]) @ out.T  # (T, V)


@pytest.mark.slow
def test_gguf_loading_matches_an_independent_implementation(smollm, smollm_quantized):
    """Tolerances (logits span about ±30): the float32 fast path holds the exact dequantised weights, so its
    logits agree with the float64 reference to float32 rounding (measured max |Δ| 6e-5 over 49152 logits ×
    12 positions; bound 5e-4); the 4-bit kernel rounds dequantised weights through float16 (measured 0.018;
    bound 0.1, same argmax at every position)."""
    pytest.importorskip("gguf")
    _, tok = smollm
    ids = tok.encode("The capital of France is Paris, and the capital of Italy is")
    ref = _reference_logits(resolve("smollm2-135m").gguf, ids)
    fast = np.array(smollm[0](mx.array([ids]))[0].astype(mx.float32), dtype=np.float64)
    quant = np.array(smollm_quantized[0](mx.array([ids]))[0].astype(mx.float32), dtype=np.float64)
    assert np.abs(fast - ref).max() < 5e-4
    assert (fast.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(quant - ref).max() < 0.1
    assert (quant.argmax(-1) == ref.argmax(-1)).all()
    assert tok.decode([int(ref[-1].argmax())]).strip() == "Rome"
