"""GGUF → mlx-lm directory: read the header in pure Python, check what we support, write
config.json + model.safetensors + tokenizer.json + tokenizer_config.json.

The result opens with `mlx_lm.load(dir)`, so every mlx-lm tool (generate, lora, fuse, server) works on it.
Weights stay as GGUF stored them: MLX's `mx.load` maps Q4_0 / Q4_1 / Q8_0 blocks onto its own affine
quantisation (group 32, scales + biases) without dequantising, and F32 / F16 / BF16 as is.

GGUF facts this relies on (checked on SmolLM2-135M against llama.cpp, docs/design.md):
- llama.cpp permutes q/k rows for the interleaved ("traditional") RoPE layout → `rope_traditional: true`.
- the output layer is tied to `token_embd` when there is no `output.weight`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mlxhv.errors import ModelLoadError

# ggml tensor types (ggml.h); the ones MLX loads without losing precision or format are SUPPORTED_TYPES.
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
    18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16",
    26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
SUPPORTED_TYPES = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"}
SUPPORTED_ARCHITECTURES = {"llama"}

# GGUF value types → struct format (8 = string, 9 = array are handled apart).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

# GGUF tensor name → mlx-lm llama parameter name.
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}

# Pre-tokenizers by `tokenizer.ggml.pre` (llama.cpp's names) for byte-level BPE ("gpt2") vocabularies.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[str, dict] = {
    "default": _BYTE_LEVEL,
    "gpt2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {**_BYTE_LEVEL, "use_regex": False}]},
}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first), i.e. GGUF's ne reversed
    type: str               # "Q4_1", "F32", … or "type<N>" when unknown


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    buf = f.read(size)
    if len(buf) != size:
        raise EOFError("truncated GGUF header")
    return struct.unpack(fmt, buf)[0]


def _read_str(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    return f.read(n).decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, vtype: int):
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    if vtype == 8:
        return _read_str(f)
    if vtype == 9:
        etype, n = _read(f, "<I"), _read(f, "<Q")
        if etype in _SCALARS:  # bulk read: token_type arrays have ~50k entries
            fmt = _SCALARS[etype]
            size = struct.calcsize(fmt)
            return list(struct.unpack(f"<{n}{fmt[1]}", f.read(n * size)))
        return [_read_value(f, etype) for _ in range(n)]
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_header(path: str | Path) -> GGUFHeader:
    """Metadata and tensor list of a GGUF file, without reading tensor data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(f"{path}: not a GGUF file (bad magic)")
            version = _read(f, "<I")
            if version not in (2, 3):
                raise ModelLoadError(f"{path}: GGUF version {version} is not supported (2 or 3)")
            n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
            metadata = {}
            for _ in range(n_kv):
                key = _read_str(f)
                metadata[key] = _read_value(f, _read(f, "<I"))
            tensors = []
            for _ in range(n_tensors):
                name = _read_str(f)
                ne = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
                ttype = _read(f, "<I")
                _read(f, "<Q")  # data offset
                tensors.append(TensorInfo(name, tuple(reversed(ne)), GGML_TYPES.get(ttype, f"type{ttype}")))
    except (EOFError, struct.error, ValueError) as e:
        raise ModelLoadError(f"{path}: corrupt or truncated GGUF header ({e})") from e
    return GGUFHeader(version, metadata, tensors)


def check_supported(header: GGUFHeader, path: str | Path = "") -> None:
    """Raise ModelLoadError naming the first thing we cannot convert: architecture, tensor type, tokenizer."""
    arch = header.metadata.get("general.architecture", "?")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: GGUF architecture '{arch}' is not supported; only {sorted(SUPPORTED_ARCHITECTURES)} "
            "(for other models use an mlx-lm directory or hub id)")
    for t in header.tensors:
        if t.type not in SUPPORTED_TYPES:
            raise ModelLoadError(
                f"{path}: tensor '{t.name}' uses GGUF quantisation type {t.type}, which is not supported; "
                f"supported: {', '.join(sorted(SUPPORTED_TYPES))} (re-quantise to Q4_0/Q8_0 or use an F16 GGUF)")
        if _mlx_name(t.name) is None:
            raise ModelLoadError(f"{path}: unexpected tensor '{t.name}' for a llama model")
    tok_model = header.metadata.get("tokenizer.ggml.model")
    if tok_model != "gpt2":
        raise ModelLoadError(
            f"{path}: tokenizer model '{tok_model}' is not supported; only byte-level BPE ('gpt2')")
    pre = header.metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ModelLoadError(
            f"{path}: pre-tokenizer '{pre}' is not supported; known: {', '.join(sorted(PRE_TOKENIZERS))}")


def _mlx_name(gguf_name: str) -> str | None:
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias|scales|biases)", gguf_name)
    if m:
        sub = _BLOCK_NAMES.get(m.group(2))
        return None if sub is None else f"model.layers.{m.group(1)}.{sub}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(weight|bias|scales|biases)", gguf_name)
    if m and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def model_config(header: GGUFHeader) -> dict:
    """mlx-lm / HF-style config.json for a llama GGUF."""
    md = header.metadata
    a = md["general.architecture"]
    names = {t.name for t in header.tensors}
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": md[f"{a}.embedding_length"],
        "num_hidden_layers": md[f"{a}.block_count"],
        "intermediate_size": md[f"{a}.feed_forward_length"],
        "num_attention_heads": md[f"{a}.attention.head_count"],
        "num_key_value_heads": md.get(f"{a}.attention.head_count_kv", md[f"{a}.attention.head_count"]),
        "rms_norm_eps": float(md.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": md.get(f"{a}.vocab_size", len(md["tokenizer.ggml.tokens"])),
        "rope_theta": float(md.get(f"{a}.rope.freq_base", 10000.0)),
        "rope_traditional": True,  # GGUF stores q/k permuted for the interleaved RoPE layout
        "max_position_embeddings": md.get(f"{a}.context_length", 2048),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
    }
    if f"{a}.attention.key_length" in md:
        cfg["head_dim"] = md[f"{a}.attention.key_length"]
    if md.get(f"{a}.rope.scaling.type") == "linear":
        cfg["rope_scaling"] = {"type": "linear", "factor": float(md[f"{a}.rope.scaling.factor"])}
    quant = [t for t in header.tensors if t.type.startswith("Q")]
    if quant:
        # Per-layer bits / group size are recovered from the shapes by mlx-lm (infer_quant_config);
        # this is the default for the 4-bit layers.
        bits = 8 if all(t.type == "Q8_0" for t in quant) else 4
        cfg["quantization"] = {"group_size": 32, "bits": bits}
        cfg["quantization_config"] = cfg["quantization"]
    return cfg


def tokenizer_files(header: GGUFHeader) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) for a byte-level BPE GGUF vocabulary."""
    md = header.metadata
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    types: list[int] = md.get("tokenizer.ggml.token_type", [1] * len(tokens))
    # Control (3) and user-defined (4) tokens must be added tokens, or "<file_sep>" splits into pieces.
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": types[i] == 3}
        for i, tok in enumerate(tokens) if types[i] in (3, 4)
    ]
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[md.get("tokenizer.ggml.pre", "default")],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": md.get("tokenizer.ggml.merges", []),
        },
    }

    def tok(key):
        i = md.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok("bos"),
        "eos_token": tok("eos"),
        "unk_token": tok("unknown"),
        "pad_token": tok("padding") or tok("eos"),
        "add_bos_token": bool(md.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(md.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": md.get(f"{md['general.architecture']}.context_length", 2048),
        "additional_special_tokens": [t["content"] for t in added if t["special"]],
    }
    if "tokenizer.chat_template" in md:
        tok_config["chat_template"] = md["tokenizer.chat_template"]
    return tok_json, tok_config


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, force: bool = False, exist_ok: bool = False) -> Path:
    """Write an mlx-lm directory for a llama GGUF. Atomic: a temp dir next to `out_dir`, renamed at the end,
    so an interrupted conversion never leaves a half-written model.

    `force` replaces an existing `out_dir`; `exist_ok` keeps it (a concurrent conversion of the same file
    won the race) and returns it."""
    import mlx.core as mx

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ModelLoadError(f"{gguf_path}: no such GGUF file")
    if out_dir.exists() and exist_ok:
        return out_dir
    if out_dir.exists() and not force:
        raise ModelLoadError(f"{out_dir}: already exists (use --force to overwrite)")
    header = read_header(gguf_path)
    check_supported(header, gguf_path)
    config = model_config(header)
    tok_json, tok_config = tokenizer_files(header)

    weights = mx.load(str(gguf_path))
    weights = {_mlx_name(k): v for k, v in weights.items()}  # check_supported vetted every name
    if config["tie_word_embeddings"]:
        weights.pop("lm_head.weight", None)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False))
        (tmp / "mlxhv_source.json").write_text(json.dumps(
            {"gguf": str(gguf_path.resolve()), "size": gguf_path.stat().st_size}, indent=2))
        if out_dir.exists() and force:
            shutil.rmtree(out_dir)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not (exist_ok and (out_dir / "config.json").exists()):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
