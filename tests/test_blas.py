"""mlxhv/_blas.py: OpenBLAS under MLX. What `import mlxhv` does is checked in fresh interpreters (the swap
happens once per process, before mlx.core), each with its own MLXHV_CACHE and environment; `threads()` and the
callers that use it are checked in this process."""

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlxhv import _blas
from mlxhv.engine import GenerationSettings, generate
from tests.rl_tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the OpenBLAS swap is Linux-only")
STATUS = "import dataclasses, json; from mlxhv import _blas; print(json.dumps(dataclasses.asdict(_blas.status())))"


def _import_mlxhv(cache: Path, code: str = "import mlxhv\n" + STATUS, flags: tuple = (), **env) -> tuple[dict, list]:
    """Run `code` in a fresh interpreter; returns (the BlasStatus it printed last, its mlxhv warning lines)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLXHV_BLAS", "OPENBLAS_"))}
    child_env.update(MLXHV_CACHE=str(cache), **env)
    assert "LD_PRELOAD" not in child_env  # a preload of a missing library kills every child process
    r = subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO, env=child_env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("mlxhv: warning:")]
    return json.loads(r.stdout.strip().splitlines()[-1]), warnings


@linux_only
@pytest.mark.parametrize("value, expected", [("auto", min(2, os.cpu_count())), ("3", 3), (" 1 ", 1)])
def test_threads_env(tmp_path, value, expected):
    """`auto` leaves OpenBLAS's own choice, which follows OPENBLAS_NUM_THREADS (2 here)."""
    st, warnings = _import_mlxhv(tmp_path, MLXHV_BLAS_THREADS=value, OPENBLAS_NUM_THREADS="2")
    assert st["active"], st["reason"]
    assert st["threads"] == expected
    assert warnings == []


@linux_only
@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_bad_threads_env_warns_once_and_uses_one(tmp_path, value):
    st, warnings = _import_mlxhv(tmp_path, MLXHV_BLAS_THREADS=value)
    assert st["active"] and st["threads"] == 1
    assert len(warnings) == 1 and repr(value) in warnings[0]


@linux_only
@pytest.mark.skipif(ctypes.util.find_library("gfortran") is not None,
                    reason="the system has libgfortran: no patched copy is made")
def test_patched_gfortran_is_repaired_when_its_stamp_is_missing_or_stale(tmp_path):
    """The stamp is the only record of which mlx_cpu.libs copy the cached library was patched from, so a library
    without a matching stamp (or of the wrong size: a half-written copy) is patched again, never trusted and never
    given up on. Each run must end with OpenBLAS active and a matmul faster than the reference BLAS (~3 GFLOP/s)."""
    code = ("import dataclasses, json, mlxhv\n"
            "print(json.dumps({**dataclasses.asdict(mlxhv._blas.status()), 'gflops': mlxhv._blas.measure_gflops(512)}))")
    lib, stamp = tmp_path / "lib" / "libgfortran.so.5", tmp_path / "lib" / "libgfortran.src"
    st, warnings = _import_mlxhv(tmp_path, code)
    assert st["active"] and str(lib) in st["loaded"] and warnings == []
    good_lib, good_stamp = lib.read_bytes(), stamp.read_text()
    src = Path(good_stamp.rsplit(":", 1)[0])
    assert len(good_lib) == src.stat().st_size and good_stamp == f"{src}:{src.stat().st_size}"
    assert b"libgfortran.so.5\0" in good_lib and src.name.encode() not in good_lib  # the SONAME, restored

    damage = {"stamp missing": lambda: stamp.unlink(),
              "stamp stale": lambda: stamp.write_text("/elsewhere/libgfortran-0.so.5:1"),
              "library truncated": lambda: lib.write_bytes(good_lib[:4096])}
    for what, do in damage.items():
        do()
        st, warnings = _import_mlxhv(tmp_path, code)
        assert st["active"], (what, st["reason"])
        assert st["gflops"] > 8 and warnings == [], what
        assert lib.read_bytes() == good_lib and stamp.read_text() == good_stamp, what


@linux_only
def test_mlx_imported_first_warns_once(tmp_path):
    code = "import mlx.core\nimport mlxhv\nmlxhv._blas.enable()\nmlxhv._blas.enable(threads=2)\n" + STATUS
    st, warnings = _import_mlxhv(tmp_path, code)
    assert not st["active"] and st["library"].startswith("reference")
    assert len(warnings) == 1 and "mlx.core was imported before mlxhv" in warnings[0]


@linux_only
def test_missing_openblas_warns_once_and_import_still_works(tmp_path):
    """An interpreter without site-packages (-S, purelib pointed away) cannot find cmeel-openblas."""
    hide = ("import sys, sysconfig\nsysconfig.get_paths = lambda *a, **k: {'purelib': '/nonexistent'}\n"
            f"sys.path.insert(0, {str(REPO)!r})\n")
    code = hide + "import mlxhv\nmlxhv._blas.enable()\n" + STATUS
    st, warnings = _import_mlxhv(tmp_path, code, flags=("-S",))
    assert not st["active"] and st["loaded"] == []
    assert len(warnings) == 1 and "cmeel-openblas is not installed" in warnings[0]
    st, warnings = _import_mlxhv(tmp_path, code, flags=("-S",), MLXHV_BLAS="reference")  # the documented opt-out
    assert st["reason"] == "disabled by MLXHV_BLAS" and warnings == []


@pytest.fixture
def openblas():
    if _blas.get_threads() is None:
        pytest.skip(f"OpenBLAS is not active here: {_blas.status().reason}")
    with _blas.threads(1):
        yield


def test_threads_context_restores(openblas):
    with _blas.threads(2):
        assert _blas.get_threads() == 2 and _blas.status().threads == 2
        with _blas.threads(None):  # an unset optional setting changes nothing
            assert _blas.get_threads() == 2
        with _blas.threads(1):
            assert _blas.get_threads() == 1
        assert _blas.get_threads() == 2
    assert _blas.get_threads() == 1
    with pytest.raises(RuntimeError):
        with _blas.threads(2):
            raise RuntimeError("boom")
    assert _blas.get_threads() == 1  # restored on error too
    with pytest.raises(ValueError, match=">= 1"):
        with _blas.threads(0):
            pass
    assert _blas.get_threads() == 1


def test_threads_none_needs_no_openblas():
    with _blas.threads(None):
        pass


class _Tok:
    eos_token_ids = {31}

    def decode(self, ids):
        return " ".join(map(str, ids))


class _ThreadRecorder:
    """A model that records (positions per call, OpenBLAS threads when the call's graph is built and run)."""

    model_type = "recorder"

    def __init__(self, inner):
        self.inner, self.layers, self.calls = inner, inner.layers, []

    def __call__(self, tokens, cache=None):
        self.calls.append((tokens.shape[1], _blas.get_threads()))
        out = self.inner(tokens, cache=cache)
        mx.eval(out)
        return out


@pytest.mark.parametrize("prefill, decode, seen_prefill, seen_decode",
                         [(2, None, 2, 1), (None, 2, 2, 2), (2, 1, 2, 1), (None, None, 1, 1)])
def test_generate_threads(openblas, prefill, decode, seen_prefill, seen_decode):
    """Prompts run at prefill_threads, decode steps at decode_threads (None: the process setting, 1 here; a None
    prefill_threads follows decode_threads), and the process setting is back afterwards."""
    model = _ThreadRecorder(tiny_model())
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12]]
    s = GenerationSettings(max_tokens=4, batch_size=2, ignore_eos=True, prefill_threads=prefill,
                           decode_threads=decode)
    comps, stats = generate(model, _Tok(), prompts, s)
    assert [len(c.tokens) for c in comps] == [4, 4, 4] and stats.batches == 2
    prefill_calls = [t for n, t in model.calls if n > 1]
    decode_calls = [t for n, t in model.calls if n == 1]
    # one prompt pass per prompt (no shared prefix here); one-token calls: the memory check's probe, each decode step
    assert len(prefill_calls) == 3 and len(decode_calls) == 1 + stats.steps
    assert set(prefill_calls) == {seen_prefill} and set(decode_calls) == {seen_decode}
    assert _blas.get_threads() == 1


def test_doctor_measures_the_other_thread_count_and_restores(openblas):
    from mlxhv.models.doctor import report

    rep = report(matmul_n=512)
    assert rep["blas"]["threads"] == 1 and rep["blas"]["gflops_2_threads"] > 0
    assert _blas.get_threads() == 1
    assert rep["blas"]["gflops"] > 8  # the reference BLAS does ~3 GFLOP/s
