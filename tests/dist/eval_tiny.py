"""Run under `mlx.launch -n 2` (or plainly): greedy `evaluate` of a tiny in-process llama (char-level tokenizer)
on 10 synthetic examples into OUT (argv[1]); rank 0 writes the run directory."""

import os
import sys

import mlxhv  # noqa: F401  (fast BLAS before mlx.core)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from mlxhv.data import synth_examples  # noqa: E402
from mlxhv.eval import EvalSettings, evaluate  # noqa: E402
from tests.rl_tiny import tiny_model  # noqa: E402
from tests.test_prompts import FakeTokenizer  # noqa: E402


class Tokenizer(FakeTokenizer):
    eos_token_id = 0
    eos_token_ids = {0}

    def encode(self, text, add_special_tokens=True):
        return [ord(c) % 256 for c in text]

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, **kw):
        ids = super().apply_chat_template(messages, add_generation_prompt, tokenize, **kw)
        return [i % 256 for i in ids] if tokenize else ids


if __name__ == "__main__":
    exs = synth_examples(10, seed=3)
    s = EvalSettings(model="tiny", max_tokens=6, temperature=0.0, batch_size=3, progress=False,
                     system_prompt="Judge.", answer_prefix="json")
    evaluate(tiny_model(seed=2, vocab=256, layers=2), Tokenizer(), exs, s, out_dir=sys.argv[1])
