"""The worker pool's failure policy (mlxhv/datagen/pool.py), with plain Python workers and no server."""

import threading
import time

import pytest

from mlxhv.datagen.client import APIFailure
from mlxhv.datagen.pool import INTERRUPTED, run_job, run_pool


class Tracker:
    """Records which items started, and the most workers running at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started, self.active, self.most = [], 0, 0

    def enter(self, item):
        with self.lock:
            self.started.append(item)
            self.active += 1
            self.most = max(self.most, self.active)

    def leave(self):
        with self.lock:
            self.active -= 1


def test_every_item_runs_once_in_order_and_at_most_concurrency_at_once():
    t = Tracker()

    def square(i):
        t.enter(i)
        time.sleep(0.01)
        t.leave()
        return i * i

    done = run_pool(range(20), square, 3, threading.Event())
    assert sorted(done) == [(i, i * i) for i in range(20)]
    assert t.most == 3 and sorted(t.started) == list(range(20))
    t1 = Tracker()
    seen = []
    done = run_pool(range(6), lambda i: (t1.enter(i), t1.leave(), -i)[2], 1, threading.Event(),
                    on_done=lambda i, r: seen.append((i, r)))
    assert t1.started == list(range(6)) and t1.most == 1  # one at a time: in the order given
    assert seen == done == [(i, -i) for i in range(6)]


@pytest.mark.parametrize("exc", [APIFailure("HTTP 401: bad key"), RuntimeError("a bug")])
def test_a_failing_worker_stops_the_pool_and_is_raised_after_the_running_items_finish(exc):
    stop, t, log = threading.Event(), Tracker(), []

    def worker(i):
        t.enter(i)
        if i == 1:
            raise exc
        assert stop.wait(5)  # item 0 is mid-way when item 1 fails: it sees stop and ends its step
        time.sleep(0.2)
        log.append(("worker 0 returned", time.monotonic()))
        return "finished"

    with pytest.raises(type(exc)) as info:
        run_pool(range(10), worker, 2, stop, on_done=lambda i, r: log.append(("on_done", i, r)))
    raised_at = time.monotonic()
    assert info.value is exc and stop.is_set()
    assert t.started == [0, 1]  # nothing started after the failure
    assert log[0][0] == "worker 0 returned" and log[0][1] <= raised_at  # drained before raising
    assert log[1] == ("on_done", 0, "finished")  # the finished item was handed over (a job saves it)


def test_stop_set_by_the_caller_ends_the_pool_without_an_error():
    stop, t = threading.Event(), Tracker()

    def on_done(i, _):
        if i == 2:
            stop.set()

    done = run_pool(range(10), lambda i: (t.enter(i), i)[1], 1, stop, on_done=on_done)
    assert done == [(0, 0), (1, 1), (2, 2)] and t.started == [0, 1, 2]
    assert run_pool(range(5), lambda i: 1 / 0, 2, stop) == []  # already stopped: nothing starts


def test_ctrl_c_waits_only_the_grace_period_then_abandons_stuck_workers():
    stop, release, drained = threading.Event(), threading.Event(), []

    def worker(i):
        if i == 0:
            release.wait(30)  # an API call that takes minutes
            return "late"
        if i == 2:
            assert stop.wait(5)  # between two calls when Ctrl-C comes: returns within the grace period
        return i

    def on_done(i, r):
        drained.append(i)
        if i == 1:
            raise KeyboardInterrupt  # what SIGINT raises in the calling thread

    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pool(range(5), worker, 3, stop, on_done=on_done, grace_s=0.5)
        waited = time.monotonic() - t0
        assert 0.4 <= waited < 2.0, waited  # waited for the grace period, not for the stuck call
        assert stop.is_set() and drained == [1, 2]  # item 2 finished inside the grace period; 3 and 4 never ran
    finally:
        release.set()


def test_run_job_turns_api_failure_and_ctrl_c_into_a_reason():
    def fail(i):
        raise APIFailure("o1: HTTP 401: Incorrect API key provided")

    assert run_job([1], fail, 1, threading.Event()) == ("o1: HTTP 401: Incorrect API key provided", False)

    def interrupt(i, r):
        raise KeyboardInterrupt

    assert run_job([1, 2], lambda i: i, 1, threading.Event(), on_done=interrupt) == (INTERRUPTED, True)
    assert run_job([1, 2], lambda i: i, 2, threading.Event()) == (None, False)
    with pytest.raises(ZeroDivisionError):  # a bug is not a reason to stop quietly
        run_job([1], lambda i: 1 / 0, 1, threading.Event())


def test_sigint_in_the_main_thread_stops_the_pool_at_a_safe_point():
    """SIGINT while the calling thread waits: KeyboardInterrupt comes from the pool (not from inside the queue's
    lock), running items get the grace period, hanging ones are abandoned, and the SIGINT handler is restored."""
    import os
    import signal

    release = threading.Event()

    def worker(i):
        if i == 0:
            return i
        release.wait(30)  # hangs, as an API call thinking for minutes does
        return i

    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    before = signal.getsignal(signal.SIGINT)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_pool(range(4), worker, 2, threading.Event(), grace_s=0.5)
    assert time.monotonic() - t0 < 3.0
    assert signal.getsignal(signal.SIGINT) is before
    release.set()
