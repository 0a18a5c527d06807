"""Data parallelism over MLX's own distributed layer (`mx.distributed`, started by `mlx.launch`).

Launched as `mlx.launch --backend ring -n 2 … mlxhv eval …` (or `--hostfile hosts.json` for several Macs), every
process is one rank of a group; launched plainly, the group has one rank and every function here is the identity.
There is no transport of our own: sums are `mx.distributed.all_sum`, gathers `all_gather`, gradients
`mlx.nn.average_gradients` (as mlx-lm's tuner).

- `shard(n, key)`: which items this rank takes: sorted by `key` (prompt length) and dealt round-robin, so ranks
  get balanced work and a batch on each rank holds prompts of similar length.
- `all_sum` / `all_mean` of numpy arrays or floats; `gather_objects` of JSON-able records (rank order).
- `check_same(tree)`: every rank holds the same weights (a cheap checksum compared across ranks), else an error.
- Collectives run under a watchdog (`MLXHV_DIST_TIMEOUT`, default 600 s): a rank that waits longer for the others
  (one of them died or hangs) prints `error: …` and exits with status 3 instead of hanging; a SIGTERM from
  `mlx.launch` (which stops the other ranks when one exits) prints why before exiting.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Sequence

import mlx.core as mx
import numpy as np

from mlxhv.errors import MlxhvError

_GROUP = None


class DistributedError(MlxhvError):
    """Ranks disagree (weights, world size on resume) or cannot reach each other."""


def group():
    """The process group (size 1 when not launched by mlx.launch). Initialised once; installs the SIGTERM note."""
    global _GROUP
    if _GROUP is None:
        # Under mlx.launch (it sets MLX_RANK) the note goes in before init: the other ranks can finish joining
        # the ring, and one can exit, while this one is still inside init.
        launched = "MLX_RANK" in os.environ
        if launched:
            signal.signal(signal.SIGTERM, _on_sigterm)
        _GROUP = mx.distributed.init()
        if _GROUP.size() > 1 and not launched:
            signal.signal(signal.SIGTERM, _on_sigterm)
    return _GROUP


def rank() -> int:
    return group().rank()


def size() -> int:
    return group().size()


def is_main() -> bool:
    """Rank 0 writes logs, predictions, checkpoints; the other ranks compute."""
    return rank() == 0


def describe() -> dict:
    """For `mlxhv doctor`: {backend, rank, size} (backend "none" when not launched distributed)."""
    g = group()
    backend = os.environ.get("MLX_BACKEND") or ("ring" if os.environ.get("MLX_HOSTFILE") else "unknown")
    return {"backend": backend if g.size() > 1 else "none", "rank": g.rank(), "size": g.size()}


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through mlx.launch in tests
    who = _GROUP.rank() if _GROUP is not None else os.environ.get("MLX_RANK", "?")
    sys.stderr.write(f"error: rank {who}: stopped by the launcher (another rank exited or was killed)\n")
    sys.stderr.flush()
    os._exit(3)


def _timeout_s() -> float:
    return float(os.environ.get("MLXHV_DIST_TIMEOUT", "600"))


@contextmanager
def watchdog(what: str):
    """Exit with a clear error if the block (a collective) does not return within MLXHV_DIST_TIMEOUT seconds."""
    if size() == 1:
        yield
        return
    limit = _timeout_s()

    def expire():
        sys.stderr.write(f"error: rank {rank()}: no answer from the other ranks within {limit:g} s during {what} "
                         "(did a rank die or hang? MLXHV_DIST_TIMEOUT sets the limit)\n")
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(limit, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def shard(n: int, key: Callable[[int], Any] | None = None) -> list[int]:
    """Indices of the items this rank takes of n: sorted by `key` (default: as given), dealt round-robin."""
    order = sorted(range(n), key=key) if key is not None else list(range(n))
    return order[rank()::size()]


def all_sum(x):
    """Sum over ranks of a float or numpy array (float64 in, float64 out; float32 arrays stay float32)."""
    if size() == 1:
        return x
    arr = np.asarray(x)
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    with watchdog("all_sum"):  # in float32: sums of counts, scores and losses are exact enough at our sizes
        out = mx.distributed.all_sum(mx.array(arr.astype(np.float32)))
        mx.eval(out)
    res = np.array(out).astype(dtype)
    return float(res) if np.ndim(x) == 0 else res


def mean_std(x: np.ndarray, ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the elements of `x` on every rank together (numpy's on one rank)."""
    if size() == 1:
        return float(x.mean()), float(x.std(ddof=ddof))
    n, total = all_sum(np.array([x.size, x.sum()], np.float64))
    mean = total / n
    sq = all_sum(float(((x - mean) ** 2).sum()))
    return float(mean), float(np.sqrt(sq / max(n - ddof, 1)))


def mean(x: np.ndarray) -> float:
    """Mean of the elements of `x` on every rank together."""
    if size() == 1:
        return float(np.mean(x))
    n, total = all_sum(np.array([np.size(x), np.sum(x)], np.float64))
    return float(total / n)


def gather_records(records: list) -> list:
    """Every rank's records (dataclasses or namespaces of JSON-able fields), in rank order, rebuilt as the same
    class (records as given on one rank)."""
    if size() == 1 or not records:
        return records
    import dataclasses

    cls = type(records[0])
    fields = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(vars(r)) for r in records]
    return [cls(**d) for d in gather_objects(fields)]


def gather_objects(items: Sequence) -> list:
    """All ranks' JSON-able items, concatenated in rank order (every rank gets the whole list)."""
    if size() == 1:
        return list(items)
    payload = np.frombuffer(json.dumps(list(items)).encode(), dtype=np.uint8)
    with watchdog("gather"):
        lengths = mx.distributed.all_gather(mx.array([len(payload)], dtype=mx.int32))
        mx.eval(lengths)
        lengths = np.array(lengths).tolist()
        buf = np.zeros(max(lengths), dtype=np.uint8)
        buf[: len(payload)] = payload
        gathered = mx.distributed.all_gather(mx.array(buf))
        mx.eval(gathered)
    rows = np.array(gathered).reshape(size(), max(lengths))
    out = []
    for r, n in enumerate(lengths):
        out.extend(json.loads(rows[r, :n].tobytes().decode()))
    return out


def checksum(tree) -> np.ndarray:
    """(sum, sum of squares, sum of |x|) over every array of a parameter tree, in float64."""
    from mlx.utils import tree_flatten

    s = np.zeros(3)
    for _, v in tree_flatten(tree):
        a = np.array(v.astype(mx.float32), dtype=np.float64)
        s += (a.sum(), (a * a).sum(), np.abs(a).sum())
    return s


def check_same(tree, what: str = "weights") -> None:
    """Raise DistributedError unless every rank holds the same `tree` (compared by checksum)."""
    if size() == 1:
        return
    mine = checksum(tree)
    with watchdog("weight check"):
        all_ = mx.distributed.all_gather(mx.array(mine.astype(np.float32))[None])
        mx.eval(all_)
    table = np.array(all_).reshape(size(), 3)
    if not np.allclose(table, table[0], rtol=1e-6, atol=1e-6):
        raise DistributedError(f"rank {rank()}: {what} differ between ranks (checksums {table.tolist()}); "
                               "the ranks are no longer training the same model")
