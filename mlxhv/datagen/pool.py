"""One worker pool for every generation job (topics per domain, examples per planned item).

`run_pool(items, worker, concurrency, stop)` calls `worker(item)` for each item in its own thread, at most
`concurrency` at once, starting them in the order given. The failure policy, the same for every job:

- a worker that raises sets `stop`; no item starts after that, the items already running finish (their workers
  check `stop` between API calls and return early), and then the first exception is raised to the caller. The
  jobs write each finished piece of work as it comes (an accepted example, a verdict), so it stays on disk; they
  catch `APIFailure`, record it as the reason the run stopped, save their report, and the CLI exits 1;
- `stop` set by the caller (another thread, a test) has the same effect without an error: the pool returns once
  the running items have finished;
- Ctrl-C (KeyboardInterrupt in the calling thread) sets `stop`, waits at most `grace_s` for the running items —
  an API call can take minutes, so the ones still waiting on the server are abandoned (daemon threads) — and
  re-raises KeyboardInterrupt. Anything raised in the calling thread (by `on_done`) is handled the same way.
  In the main thread SIGINT only sets a flag while the pool runs, and the pool raises KeyboardInterrupt between
  waits: raised inside `queue.Queue.get`, it can leave the queue's lock held and the drain waiting on it forever.

`run_job` is how both jobs call it: an `APIFailure` or Ctrl-C becomes `(why it stopped, interrupted)`; the job
saves what it has (its report, the topics kept) and, after Ctrl-C, raises KeyboardInterrupt again.

`on_done(item, result)` runs in the calling thread after each item that returned (progress bars, saving a ledger).
The return value is the list of `(item, result)` of the items that returned, in the order they finished.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from typing import Callable, Iterable, Optional, TypeVar

from mlxhv.datagen.client import APIFailure

I = TypeVar("I")
R = TypeVar("R")

DEFAULT_GRACE_S = 2.0  # on Ctrl-C: how long running items may take to finish before they are abandoned
INTERRUPTED = "interrupted (Ctrl-C)"


@contextlib.contextmanager
def _sigint_flag():
    """An Event set by SIGINT instead of KeyboardInterrupt, in the main thread (elsewhere one never set)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def run_pool(items: Iterable[I], worker: Callable[[I], R], concurrency: int, stop: threading.Event, *,
             on_done: Optional[Callable[[I, R], None]] = None,
             grace_s: float = DEFAULT_GRACE_S) -> list[tuple[I, R]]:
    """Run `worker(item)` for each item, `concurrency` at a time; return the finished (item, result) pairs.

    Failure policy (module doc): a worker that raises sets `stop`, nothing new starts, the running items finish,
    then its exception is raised; `stop` set from outside ends the pool the same way, without an error; Ctrl-C
    sets `stop`, waits at most `grace_s` for the running items, abandons the rest and re-raises.
    """
    todo = list(items)
    todo.reverse()  # pop() from the end takes them in the order given
    finished: queue.Queue = queue.Queue()  # (item, result, exception or None)
    results: list[tuple[I, R]] = []
    first_error: Optional[BaseException] = None
    running = 0

    def call(item: I) -> None:
        try:
            finished.put((item, worker(item), None))
        except BaseException as e:  # reported to the calling thread, which decides
            finished.put((item, None, e))

    def take(timeout: Optional[float] = None) -> None:
        nonlocal running, first_error
        item, result, exc = finished.get(timeout=timeout)
        running -= 1
        if exc is not None:
            stop.set()
            first_error = first_error or exc
            return
        results.append((item, result))
        if on_done is not None:
            on_done(item, result)

    with _sigint_flag() as interrupted:
        try:
            while True:
                while todo and running < max(1, concurrency) and not stop.is_set():
                    threading.Thread(target=call, args=(todo.pop(),), daemon=True, name="mlxhv-pool").start()
                    running += 1
                if running == 0:
                    break
                while True:  # wait for the next finished item, looking at the Ctrl-C flag between waits
                    if interrupted.is_set():
                        raise KeyboardInterrupt
                    try:
                        take(timeout=0.1)
                        break
                    except queue.Empty:
                        pass
        except BaseException:
            stop.set()
            deadline = time.monotonic() + grace_s
            while running and time.monotonic() < deadline:
                try:
                    take(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                except Exception:  # an on_done failure while draining: the first problem is the one raised
                    pass
            raise
    if first_error is not None:
        raise first_error
    return results


def run_job(items: Iterable[I], worker: Callable[[I], R], concurrency: int, stop: threading.Event, *,
            on_done: Optional[Callable[[I, R], None]] = None) -> tuple[Optional[str], bool]:
    """`run_pool`, with an APIFailure or Ctrl-C as a result: (why the job stopped early or None, interrupted)."""
    try:
        run_pool(items, worker, concurrency, stop, on_done=on_done)
    except APIFailure as e:
        return str(e), False
    except KeyboardInterrupt:
        return INTERRUPTED, True
    return None, False
