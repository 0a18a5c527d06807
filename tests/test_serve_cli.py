"""`mlxhv serve` as a process: SIGTERM drains (the request in flight is answered, a new one refused with 503)
and the process exits 0. A tiny random llama saved as an mlx-lm directory with the embedded model's tokenizer."""

import json
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import threading
import time

import mlx.core as mx
import openai
import pytest
from mlx.utils import tree_flatten

from mlxhv.data import synth_examples


@pytest.fixture(scope="module")
def tiny_dir(smollm_dir, tmp_path_factory):
    from mlx_lm.models import llama

    out = tmp_path_factory.mktemp("tiny-llama")
    for f in Path(smollm_dir).iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".txt") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)
    config = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=49152,
                  tie_word_embeddings=False, max_position_embeddings=8192)
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs(**config))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.slow  # a process start (~10 s on 2 busy cores); the in-process drain is tested in test_serve.py
def test_sigterm_drains_then_exits(tiny_dir):

    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlxhv")), "serve", "--model", str(tiny_dir), "--port", "0",
                             "--answer-prefix", "json", "--max-tokens", "4"], stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the server exited before it listened"
        base_url = line.split(" at ")[1].split()[0]
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
        ex = synth_examples(1, seed=0)[0]
        msg = [{"role": "user", "content": json.dumps({"hypothesis": ex.hypothesis,
                                                       "evidence": [e.model_dump() for e in ex.evidence]})}]
        assert client.chat.completions.create(model="j", messages=msg).usage.completion_tokens >= 1
        result = {}
        flying = threading.Thread(target=lambda: result.update(r=client.chat.completions.create(
            model="j", messages=msg, max_tokens=1500)))
        flying.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        if flying.is_alive():  # still decoding: a new request is refused meanwhile
            with pytest.raises(openai.APIStatusError) as e:
                client.chat.completions.create(model="j", messages=msg)
            assert e.value.status_code == 503
        flying.join(120)
        assert result["r"].usage.completion_tokens >= 1
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
