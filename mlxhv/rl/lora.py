"""LoRA written here, saved in mlx-lm's adapter format.

    y = W x + scale * (dropout(x) A) B        A: (in, r), B: (r, out), B = 0 at init, scale = alpha / r

Parameter names (`lora_a`, `lora_b`) and the files written (`adapters.safetensors` + `adapter_config.json` with
`fine_tune_type`, `num_layers`, `lora_parameters: {rank, scale, dropout, keys}`) match mlx-lm's tuner, so
`mlx_lm.load(model, adapter_path=DIR)`, `mlx_lm.fuse` and `mlx_lm.generate --adapter-path` work on our output.
The base may be float32/bfloat16 `nn.Linear` or 4-bit `nn.QuantizedLinear` (QLoRA); it stays frozen.
`lora_disabled(model)` switches every adapter off, which gives the reference policy from the same weights.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


@dataclass
class LoRASettings:
    rank: int = 8
    alpha: float = 16.0  # scale = alpha / rank
    dropout: float = 0.0  # 0: rollouts and updates see the same policy (N implementation details)
    keys: list[str] = field(default_factory=lambda: ["self_attn.q_proj", "self_attn.v_proj"])
    num_layers: int = -1  # adapt the last N transformer blocks; -1 = all

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, rank: int, scale: float, dropout: float = 0.0, key=None):
        super().__init__()
        out_dims, in_dims = base.weight.shape
        if isinstance(base, nn.QuantizedLinear):
            in_dims = in_dims * 32 // base.bits
        self.linear = base
        self.scale = scale
        self.dropout = nn.Dropout(p=dropout)
        bound = 1 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(-bound, bound, (in_dims, rank), key=key)  # (in, r)
        self.lora_b = mx.zeros((rank, out_dims))  # (r, out): zero, so the adapted model starts as the base
        self.enabled = True

    def __call__(self, x):
        y = self.linear(x)
        if not self.enabled:
            return y
        z = (self.dropout(x) @ self.lora_a) @ self.lora_b
        return y + (self.scale * z).astype(x.dtype)


def _blocks(model: nn.Module) -> list:
    return model.model.layers if hasattr(model, "model") else model.layers


def _get(module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _set(module, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for part in head:
        module = getattr(module, part)
    setattr(module, last, value)


def apply_lora(model: nn.Module, settings: LoRASettings, seed: int = 0) -> list[str]:
    """Freeze the model and wrap the chosen projections of the last `num_layers` blocks. Returns wrapped paths."""
    model.freeze()
    blocks = _blocks(model)
    n = len(blocks) if settings.num_layers < 0 else min(settings.num_layers, len(blocks))
    key = mx.random.key(seed)
    wrapped = []
    for i in range(len(blocks) - n, len(blocks)):
        for k in settings.keys:
            base = _get(blocks[i], k)
            if isinstance(base, LoRALinear):
                raise ValueError(f"layer {i} {k} already has LoRA")
            key, sub = mx.random.split(key)
            _set(blocks[i], k, LoRALinear(base, settings.rank, settings.scale, settings.dropout, key=sub))
            wrapped.append(f"layers.{i}.{k}")
    return wrapped


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for _, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Run the base (reference) policy: every adapter off inside the block."""
    layers = lora_layers(model)
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    return {k: v for k, v in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")}


def adapter_config(settings: LoRASettings, model: nn.Module, extra: dict | None = None) -> dict:
    n_blocks = len(_blocks(model))
    cfg = {
        "fine_tune_type": "lora",
        "num_layers": n_blocks if settings.num_layers < 0 else settings.num_layers,
        "lora_parameters": {"rank": settings.rank, "scale": settings.scale, "dropout": settings.dropout,
                            "keys": list(settings.keys)},
        "mlxhv_lora": asdict(settings),
    }
    cfg.update(extra or {})
    return cfg


def save_adapters(model: nn.Module, settings: LoRASettings, out_dir: str | Path, extra: dict | None = None) -> None:
    """Write adapters.safetensors + adapter_config.json (mlx-lm format)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "adapters.safetensors"), adapter_weights(model))
    (out_dir / "adapter_config.json").write_text(json.dumps(adapter_config(settings, model, extra), indent=2))


def load_adapters(model: nn.Module, adapter_dir: str | Path) -> LoRASettings:
    """Wrap `model` as the saved config says and load the saved A, B."""
    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    lp = cfg["lora_parameters"]
    s = LoRASettings(**cfg["mlxhv_lora"]) if "mlxhv_lora" in cfg else LoRASettings(
        rank=lp["rank"], alpha=lp["scale"] * lp["rank"], dropout=lp.get("dropout", 0.0),
        keys=lp.get("keys") or ["self_attn.q_proj", "self_attn.v_proj"], num_layers=cfg["num_layers"])
    apply_lora(model, s)
    model.load_weights(str(adapter_dir / "adapters.safetensors"), strict=False)
    return s
