"""LoRA written here, saved in mlx-lm's adapter format.

    y = W x + scale * (dropout(x) A) B        A: (in, r), B: (r, out), B = 0 at init, scale = alpha / r

Parameter names (`lora_a`, `lora_b`) and the files written (`adapters.safetensors` + `adapter_config.json` with
`fine_tune_type`, `num_layers`, `lora_parameters: {rank, scale, dropout, keys}`) match mlx-lm's tuner, so
`mlx_lm.load(model, adapter_path=DIR)`, `mlx_lm.fuse` and `mlx_lm.generate --adapter-path` work on our output.
The base may be float32/bfloat16 `nn.Linear` or 4-bit `nn.QuantizedLinear` (QLoRA); it stays frozen.
`lora_disabled(model)` switches every adapter off, which gives the reference policy from the same weights.
`load_adapters(model, dir)` wraps a model as an adapter directory says and loads its weights: ours, or one written
by `mlx_lm.lora` (same leaf names and scale; its `keys: null` means every linear layer of a block), so training
can continue from an SFT or mlx-lm adapter.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten


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


@contextlib.contextmanager
def lora_weights(model: nn.Module, weights: dict[str, mx.array]):
    """Run the model with these adapter weights (from `adapter_weights`) inside the block, its own after."""
    own = adapter_weights(model)
    model.update(tree_unflatten(list(weights.items())))
    try:
        yield model
    finally:
        model.update(tree_unflatten(list(own.items())))


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


def adapter_settings(cfg: dict, model: nn.Module, where: str = "adapter_config.json") -> LoRASettings:
    """The LoRASettings an adapter config describes: ours (`mlxhv_lora`) or one written by `mlx_lm.lora`.

    mlx-lm's meaning of its fields: `num_layers` N adapts `layers[-max(N, 0):]` (so N <= 0 is every block);
    `lora_parameters.scale` multiplies (x A) B exactly as ours (alpha = scale * rank); `keys` absent or null
    adapts every Linear / QuantizedLinear inside each adapted block."""
    from mlxhv.errors import ModelLoadError

    kind = cfg.get("fine_tune_type", "lora")
    if kind != "lora":
        raise ModelLoadError(f"{where}: fine_tune_type {kind!r} is not supported (LoRA adapters only)")
    if "mlxhv_lora" in cfg:
        return LoRASettings(**cfg["mlxhv_lora"])
    try:
        lp = cfg["lora_parameters"]
        rank, scale, n = int(lp["rank"]), float(lp["scale"]), int(cfg["num_layers"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{where}: not a LoRA adapter config (missing or bad {e})") from None
    blocks = _blocks(model)
    num_layers = -1 if n <= 0 or n >= len(blocks) else n
    keys = lp.get("keys")
    if not keys:  # mlx-lm: every linear layer of the adapted blocks
        first = blocks[len(blocks) - (len(blocks) if num_layers < 0 else num_layers)]
        keys = [k for k, m in first.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    return LoRASettings(rank=rank, alpha=scale * rank, dropout=float(lp.get("dropout", 0.0)), keys=sorted(keys),
                        num_layers=num_layers)


def load_adapters(model: nn.Module, adapter_dir: str | Path) -> LoRASettings:
    """Wrap `model` with our LoRALinear as `adapter_dir/adapter_config.json` says (ours or `mlx_lm.lora`'s)
    and load `adapters.safetensors` into it. Every saved tensor must be an adapter leaf of the wrapped model with
    its shape, and every adapter leaf must be saved. Returns the settings, so training can go on from them."""
    from mlxhv.errors import ModelLoadError

    adapter_dir = Path(adapter_dir)
    cfg_path, w_path = adapter_dir / "adapter_config.json", adapter_dir / "adapters.safetensors"
    for path in (cfg_path, w_path):
        if not path.is_file():
            raise ModelLoadError(f"{path}: not found (an adapter directory holds adapter_config.json and "
                                 "adapters.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_path}: not JSON ({e})") from None
    s = adapter_settings(cfg, model, str(cfg_path))
    try:
        apply_lora(model, s)
    except (AttributeError, ValueError) as e:
        raise ModelLoadError(f"{cfg_path}: keys {s.keys} do not fit this model ({e})") from None
    weights = mx.load(str(w_path))
    wanted = {k: v.shape for k, v in adapter_weights(model).items()}
    errors = [f"{k}: not an adapter parameter of the model" for k in weights if k not in wanted]
    errors += [f"{k}: shape {tuple(w.shape)}, the model's is {tuple(wanted[k])}"
               for k, w in weights.items() if k in wanted and tuple(w.shape) != tuple(wanted[k])]
    errors += [f"{k}: missing from the file" for k in wanted if k not in weights]
    if errors:
        raise ModelLoadError(f"{w_path}: does not match {cfg_path.name}:\n  " + "\n  ".join(errors[:10]))
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
    return s
