"""The judge server's `/metrics`, in Prometheus' text exposition format (version 0.0.4).

    mlxhv_requests_total{code="200"}       counter, replies by HTTP status (refusals included)
    mlxhv_queue_depth                      gauge, requests waiting to join the batch
    mlxhv_running_rows                     gauge, rows decoding in the batch
    mlxhv_connections                      gauge, open client connections
    mlxhv_generated_tokens_total           counter; mlxhv_prompt_tokens_total, mlxhv_decode_steps_total
    mlxhv_tokens_per_second                gauge, generated tokens over the last `window_s` seconds / window_s
    mlxhv_request_latency_seconds          histogram of completed requests' latency (receive to reply)
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Callable

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, gauges: dict[str, Callable[[], float]], window_s: float = 10.0):
        self.gauges, self.window_s = gauges, window_s
        self._lock = threading.Lock()
        self.codes: Counter = Counter()
        self.generated = self.prompt = self.steps = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent decode steps
        self._buckets = [0] * len(LATENCY_BUCKETS)
        self._lat_sum, self._lat_count = 0.0, 0

    def reply(self, code: int) -> None:
        with self._lock:
            self.codes[code] += 1

    def latency(self, seconds: float) -> None:
        with self._lock:
            self._lat_sum += seconds
            self._lat_count += 1
            for i, b in enumerate(LATENCY_BUCKETS):
                if seconds <= b:
                    self._buckets[i] += 1

    def step(self, tokens: int, prompt_tokens: int, seconds: float) -> None:
        """What the worker did: a decode step's tokens, or an admission's prompt tokens."""
        now = time.monotonic()
        with self._lock:
            self.generated += tokens
            self.prompt += prompt_tokens
            if tokens:
                self.steps += 1
                self._recent.append((now, tokens))
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        with self._lock:
            return sum(n for t, n in self._recent if t >= now - self.window_s) / self.window_s

    def render(self) -> str:
        lines = []

        def metric(name, kind, help_, samples):
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{labels} {value}" for labels, value in samples)

        with self._lock:
            codes = sorted(self.codes.items())
            generated, prompt, steps = self.generated, self.prompt, self.steps
            buckets, lat_sum, lat_count = list(self._buckets), self._lat_sum, self._lat_count
        metric("mlxhv_requests_total", "counter", "Replies by HTTP status.",
               [(f'{{code="{c}"}}', n) for c, n in codes] or [('{code="200"}', 0)])
        for name, fn in self.gauges.items():
            metric(f"mlxhv_{name}", "gauge", name.replace("_", " ").capitalize() + ".", [("", fn())])
        metric("mlxhv_generated_tokens_total", "counter", "Tokens generated.", [("", generated)])
        metric("mlxhv_prompt_tokens_total", "counter", "Prompt tokens prefilled (the shared prefix not counted).",
               [("", prompt)])
        metric("mlxhv_decode_steps_total", "counter", "Decode steps run.", [("", steps)])
        metric("mlxhv_tokens_per_second", "gauge", f"Generated tokens per second over the last {self.window_s:g} s.",
               [("", round(self.tokens_per_s(), 3))])
        hist = [(f'_bucket{{le="{b}"}}', n) for b, n in zip(LATENCY_BUCKETS, buckets)]
        hist += [('_bucket{le="+Inf"}', lat_count), ("_sum", round(lat_sum, 6)), ("_count", lat_count)]
        lines += ["# HELP mlxhv_request_latency_seconds Latency of answered requests.",
                  "# TYPE mlxhv_request_latency_seconds histogram"]
        lines += [f"mlxhv_request_latency_seconds{suffix} {v}" for suffix, v in hist]
        return "\n".join(lines) + "\n"
