"""A tiny llama built in-process for RL tests (no downloads)."""

import mlx.core as mx
from mlx_lm.models import llama


def tiny_model(seed: int = 0, vocab: int = 32, hidden: int = 32, layers: int = 2, tie: bool = True):
    mx.random.seed(seed)
    args = llama.ModelArgs(model_type="llama", hidden_size=hidden, num_hidden_layers=layers, intermediate_size=64,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=vocab,
                           tie_word_embeddings=tie)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model
