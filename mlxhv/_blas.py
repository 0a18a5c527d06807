"""Put a fast BLAS under MLX's CPU backend on Linux, and measure which BLAS actually runs.

The Linux `mlx[cpu]` wheel links the netlib reference BLAS (~3 GFLOP/s for a float32 1024² matmul here);
OpenBLAS from PyPI `cmeel-openblas` does 60-150. MLX resolves `cblas_sgemm` when `mlx.core` is first
imported, so the OpenBLAS library must already sit in the process's global symbol scope by then:
`enable()` loads it with `ctypes.CDLL(..., RTLD_GLOBAL)`. No `LD_PRELOAD` is set, so nothing leaks into
child processes.

OpenBLAS needs `libgfortran.so.5`. When the system has none, we use the copy that ships inside
`mlx_cpu.libs/` — after giving it back its real SONAME (auditwheel renamed it to a hashed name, which
the dynamic loader would not match against OpenBLAS's `NEEDED libgfortran.so.5`). The patched copy lives
in the mlxhv cache (`$MLXHV_CACHE/lib`), written atomically.

Environment: `MLXHV_BLAS=reference` (or `0`) keeps MLX's bundled BLAS; `MLXHV_BLAS_THREADS=N` sets
OpenBLAS threads (default 1: DESIGN.md saw 2 threads slow small decode matmuls down badly).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

_REFERENCE = "reference (bundled with mlx)"


@dataclass
class BlasStatus:
    """What `enable()` did. `library` is the BLAS that MLX's matmul resolves to (as far as we can know
    before measuring: `measure_gflops()` is the proof)."""

    library: str = _REFERENCE
    active: bool = False           # True when OpenBLAS was loaded before mlx.core
    threads: int | None = None
    reason: str = "not attempted"  # why not active (or how it was activated)
    config: str = ""               # openblas_get_config(), e.g. "OpenBLAS 0.3.29 NO_AFFINITY ZEN MAX_THREADS=4"
    loaded: list[str] = field(default_factory=list)


_status: BlasStatus | None = None
_openblas: ctypes.CDLL | None = None


def cache_dir() -> Path:
    """The mlxhv cache root: `$MLXHV_CACHE`, default `~/.cache/mlxhv`."""
    return Path(os.environ.get("MLXHV_CACHE") or Path.home() / ".cache" / "mlxhv").expanduser()


def _site_dirs() -> list[Path]:
    dirs = [Path(p) for p in sys.path if p and Path(p).is_dir()]
    purelib = Path(sysconfig.get_paths()["purelib"])
    return [purelib] + [d for d in dirs if d != purelib]


def _find_openblas() -> Path | None:
    for d in _site_dirs():
        for name in ("libopenblas.so.0", "libopenblas.so"):
            p = d / "cmeel.prefix" / "lib" / name
            if p.exists():
                return p
    return None


def _patched_gfortran() -> Path | None:
    """A `libgfortran.so.5` made from mlx_cpu.libs' hashed copy with its SONAME restored (or None)."""
    for d in _site_dirs():
        hits = sorted(glob.glob(str(d / "mlx_cpu.libs" / "libgfortran-*.so.5*")))
        if not hits:
            continue
        src = Path(hits[0])
        out = cache_dir() / "lib" / "libgfortran.so.5"
        stamp = f"{src}:{src.stat().st_size}"
        if out.exists() and (out.parent / "libgfortran.src").read_text(errors="ignore") == stamp:
            return out
        data = src.read_bytes()
        old = src.name.encode() + b"\0"
        new = b"libgfortran.so.5\0"
        if data.count(old) != 1 or len(new) > len(old):
            return None
        data = data.replace(old, new + b"\0" * (len(old) - len(new)))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, out)
        (out.parent / "libgfortran.src").write_text(stamp)
        return out
    return None


def _quadmath() -> Path | None:
    for d in _site_dirs():
        hits = sorted(glob.glob(str(d / "mlx_cpu.libs" / "libquadmath-*.so*")))
        if hits:
            return Path(hits[0])
    return None


def _default_threads() -> int:
    return int(os.environ.get("MLXHV_BLAS_THREADS", "1"))


def enable(threads: int | None = None) -> BlasStatus:
    """Load OpenBLAS into the global symbol scope so MLX's CPU matmuls use it. Idempotent; never raises.

    Must run before the first `import mlx.core`; afterwards it only reports why it could not act.
    """
    global _status, _openblas
    if _status is not None:
        if threads is not None:
            set_threads(threads)
        return _status
    st = BlasStatus()
    _status = st
    if os.environ.get("MLXHV_BLAS", "").lower() in ("0", "reference", "off", "no"):
        st.reason = "disabled by MLXHV_BLAS"
        return st
    if not sys.platform.startswith("linux"):
        st.library, st.reason = "platform default (Accelerate/Metal or CUDA)", "not Linux"
        return st
    if "mlx.core" in sys.modules:
        st.reason = "mlx.core was imported before mlxhv: too late to swap BLAS (import mlxhv first)"
        return st
    lib = _find_openblas()
    if lib is None:
        st.reason = "cmeel-openblas not installed (pip install cmeel-openblas==0.3.29)"
        return st
    try:
        if ctypes.util.find_library("gfortran") is None:
            qm = _quadmath()
            if qm is not None:
                ctypes.CDLL(str(qm), mode=ctypes.RTLD_GLOBAL)
                st.loaded.append(str(qm))
            gf = _patched_gfortran()
            if gf is None:
                st.reason = "libgfortran.so.5 not found (apt-get install libgfortran5)"
                return st
            ctypes.CDLL(str(gf), mode=ctypes.RTLD_GLOBAL)
            st.loaded.append(str(gf))
        _openblas = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        st.loaded.append(str(lib))
    except OSError as e:
        st.reason = f"loading OpenBLAS failed: {e}"
        return st
    _openblas.openblas_get_config.restype = ctypes.c_char_p
    st.config = _openblas.openblas_get_config().decode()
    st.library, st.active, st.reason = str(lib), True, "loaded with RTLD_GLOBAL before mlx.core"
    set_threads(threads if threads is not None else _default_threads())
    return st


def status() -> BlasStatus:
    return _status if _status is not None else BlasStatus()


def set_threads(n: int) -> None:
    """Set OpenBLAS's thread count (no-op without OpenBLAS)."""
    if _openblas is not None:
        _openblas.openblas_set_num_threads(int(n))
        _status.threads = int(_openblas.openblas_get_num_threads())


def get_threads() -> int | None:
    return int(_openblas.openblas_get_num_threads()) if _openblas is not None else None


def measure_gflops(n: int = 1024, repeats: int = 3) -> float:
    """float32 n×n matmul speed of MLX on the CPU, in GFLOP/s: the proof of which BLAS runs."""
    import mlx.core as mx

    with mx.stream(mx.cpu):
        a = mx.random.normal((n, n))
        b = mx.random.normal((n, n))
        mx.eval(a, b, a @ b)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            mx.eval(a @ b)
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
