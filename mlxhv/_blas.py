"""Put a fast BLAS under MLX's CPU backend on Linux, and measure which BLAS actually runs.

The Linux `mlx[cpu]` wheel links the netlib reference BLAS (~3 GFLOP/s for a float32 1024² matmul here);
OpenBLAS from PyPI `cmeel-openblas` does 60-150. MLX resolves `cblas_sgemm` when `mlx.core` is first
imported, so the OpenBLAS library must already sit in the process's global symbol scope by then:
`enable()` loads it with `ctypes.CDLL(..., RTLD_GLOBAL)`. No `LD_PRELOAD` is set, so nothing leaks into
child processes.

OpenBLAS needs `libgfortran.so.5`. When the system has none, we use the copy that ships inside
`mlx_cpu.libs/` — after giving it back its real SONAME (auditwheel renamed it to a hashed name, which
the dynamic loader would not match against OpenBLAS's `NEEDED libgfortran.so.5`). The patched copy lives
in the mlxhv cache (`$MLXHV_CACHE/lib`, see mlxhv/paths.py) with a stamp file naming its source
(`libgfortran.src`: path and size). Both are written atomically, the library first; a library whose stamp
is missing, stale or whose size differs from the source is patched again (the stamp is the only record of
which mlx_cpu.libs copy it came from, and re-patching costs one read and write of a few MB).

When OpenBLAS cannot be put under MLX (mlx.core imported first, cmeel-openblas missing, no usable
libgfortran, a load error), `enable()` writes one warning line to stderr and MLX keeps its reference BLAS.

Environment: `MLXHV_BLAS=reference` (or `0`, `off`, `no`) keeps MLX's bundled BLAS without a warning;
`MLXHV_BLAS_THREADS=N` sets OpenBLAS threads (default 1: docs/design.md saw 2 threads slow small decode matmuls
down badly), `auto` leaves OpenBLAS's own choice (`OPENBLAS_NUM_THREADS`, else the core count, at most the
library's MAX_THREADS); anything else warns and uses 1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import sysconfig
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mlxhv.paths import cache_dir

_REFERENCE = "reference (bundled with mlx)"
_DEFAULT_THREADS = 1


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


class _Unavailable(Exception):
    """OpenBLAS cannot be put under MLX; the message says why."""


_status: BlasStatus | None = None
_openblas: ctypes.CDLL | None = None
_warned: set[str] = set()


def _warn(message: str) -> None:
    """One line on stderr, once per message per process (not `warnings.warn`: `-W error` would make
    `import mlxhv` raise)."""
    if message not in _warned:
        _warned.add(message)
        print(f"mlxhv: warning: {message}", file=sys.stderr, flush=True)


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


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="ignore")
    except OSError:
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _patched_gfortran() -> Path | None:
    """A `libgfortran.so.5` made from mlx_cpu.libs' hashed copy with its SONAME restored (or None when there
    is no copy to patch). Reused while its stamp matches the source; patched again otherwise."""
    for d in _site_dirs():
        hits = sorted(glob.glob(str(d / "mlx_cpu.libs" / "libgfortran-*.so.5*")))
        if not hits:
            continue
        src = Path(hits[0])
        size = src.stat().st_size
        out = cache_dir() / "lib" / "libgfortran.so.5"
        stamp_file = out.parent / "libgfortran.src"
        stamp = f"{src}:{size}"
        if _read_text(stamp_file) == stamp and out.is_file() and out.stat().st_size == size:
            return out
        data = src.read_bytes()
        old = src.name.encode() + b"\0"
        new = b"libgfortran.so.5\0"
        if data.count(old) != 1 or len(new) > len(old):
            return None
        data = data.replace(old, new + b"\0" * (len(old) - len(new)))  # same length: offsets stay valid
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(out, data)
            _write_atomic(stamp_file, stamp.encode())
        except OSError as e:
            raise _Unavailable(f"cannot write the patched libgfortran into {out.parent}: {e} "
                               "(set MLXHV_CACHE to a writable directory, or apt-get install libgfortran5)") from None
        return out
    return None


def _quadmath() -> Path | None:
    for d in _site_dirs():
        hits = sorted(glob.glob(str(d / "mlx_cpu.libs" / "libquadmath-*.so*")))
        if hits:
            return Path(hits[0])
    return None


def _env_threads() -> int | None:
    """`MLXHV_BLAS_THREADS`: N ≥ 1, or None for `auto` (OpenBLAS's own choice). Unset: 1; invalid: warn, 1."""
    raw = os.environ.get("MLXHV_BLAS_THREADS", "").strip()
    if not raw:
        return _DEFAULT_THREADS
    if raw.lower() == "auto":
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        _warn(f"MLXHV_BLAS_THREADS={raw!r} is not a positive integer or 'auto': using {_DEFAULT_THREADS}")
        return _DEFAULT_THREADS
    return n


def _check_threads(n: int | None) -> None:
    if n is not None and int(n) < 1:
        raise ValueError(f"BLAS threads must be >= 1 (None keeps the current count), got {n}")


def _load(st: BlasStatus) -> ctypes.CDLL:
    """Load OpenBLAS (and the libgfortran it needs) with RTLD_GLOBAL; raises _Unavailable or OSError."""
    if "mlx.core" in sys.modules:
        raise _Unavailable("mlx.core was imported before mlxhv: too late to put OpenBLAS under MLX "
                           "(import mlxhv before mlx)")
    lib = _find_openblas()
    if lib is None:
        raise _Unavailable("cmeel-openblas is not installed (pip install cmeel-openblas==0.3.29)")
    if ctypes.util.find_library("gfortran") is None:
        qm = _quadmath()
        if qm is not None:
            ctypes.CDLL(str(qm), mode=ctypes.RTLD_GLOBAL)
            st.loaded.append(str(qm))
        gf = _patched_gfortran()
        if gf is None:
            raise _Unavailable("no libgfortran.so.5 on the system and none to patch in mlx_cpu.libs "
                               "(apt-get install libgfortran5)")
        ctypes.CDLL(str(gf), mode=ctypes.RTLD_GLOBAL)
        st.loaded.append(str(gf))
    openblas = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    st.loaded.append(str(lib))
    openblas.openblas_get_config.restype = ctypes.c_char_p
    st.config = openblas.openblas_get_config().decode()
    st.library = str(lib)
    return openblas


def enable(threads: int | None = None) -> BlasStatus:
    """Load OpenBLAS into the global symbol scope so MLX's CPU matmuls use it. Idempotent.

    Must run before the first `import mlx.core`; afterwards it only reports why it could not act. Nothing
    about the machine or the environment makes it raise (it runs inside `import mlxhv`): when OpenBLAS
    cannot be enabled it warns once on stderr and returns the reason. `threads` < 1 is a ValueError.
    """
    global _status, _openblas
    _check_threads(threads)
    if _status is not None:
        if threads is not None:
            set_threads(threads)
        return _status
    st = BlasStatus()
    _status = st
    if os.environ.get("MLXHV_BLAS", "").strip().lower() in ("0", "reference", "off", "no"):
        st.reason = "disabled by MLXHV_BLAS"
        return st
    if not sys.platform.startswith("linux"):
        st.library, st.reason = "platform default (Accelerate/Metal or CUDA)", "not Linux"
        return st
    try:
        _openblas = _load(st)
    except _Unavailable as e:
        st.reason = str(e)
    except OSError as e:
        st.reason = f"loading OpenBLAS failed: {e}"
    except Exception as e:  # an import-time speed-up must not break `import mlxhv`
        st.reason = f"enabling OpenBLAS failed: {type(e).__name__}: {e}"
    else:
        st.active, st.reason = True, "loaded with RTLD_GLOBAL before mlx.core"
    if not st.active:
        _warn(f"fast BLAS not enabled, MLX's CPU matmuls use the reference BLAS (~3 GFLOP/s): {st.reason}. "
              "Set MLXHV_BLAS=reference to silence this.")
        return st
    n = threads if threads is not None else _env_threads()
    if n is not None:
        set_threads(n)
    st.threads = get_threads()
    return st


def status() -> BlasStatus:
    return _status if _status is not None else BlasStatus()


def set_threads(n: int) -> None:
    """Set OpenBLAS's thread count (no-op without OpenBLAS). Prefer `with threads(n):`."""
    _check_threads(n)
    if _openblas is not None:
        _openblas.openblas_set_num_threads(int(n))
        _status.threads = int(_openblas.openblas_get_num_threads())


def get_threads() -> int | None:
    return int(_openblas.openblas_get_num_threads()) if _openblas is not None else None


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """OpenBLAS runs `n` threads inside the block and the count it had before after it, on error too.
    `None` (an optional setting left unset), or no OpenBLAS loaded, changes nothing."""
    _check_threads(n)
    before = get_threads()
    if n is None or before is None:
        yield
        return
    set_threads(n)
    try:
        yield
    finally:
        set_threads(before)


def measure_gflops(n: int = 1024, repeats: int = 3) -> float:
    """float32 n×n matmul speed of MLX on the CPU, in GFLOP/s (2·n³ / best time): the proof of which BLAS
    runs."""
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
