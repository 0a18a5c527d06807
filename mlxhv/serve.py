"""OpenAI-compatible serving of a `Judge`: `POST /v1/chat/completions` on a continuously batched engine, with
answers parsed into `Prediction`s. How to use it, its limits and its numbers: docs/serving.md.

A request is an ordinary chat completion whose last user message holds the input as JSON:

    {"model": "judge", "messages": [{"role": "user",
        "content": "{\"hypothesis\": \"…\", \"evidence\": [{\"source\": …, \"content\": …, \"relevance\": 0.9}]}"}]}

The judge's own prompt (the adapter's system prompt, chat template and answer prefix) is rendered around that
input; system and earlier messages are not used. The reply's content is the raw answer, or the `Prediction` as
JSON when `response_format` asks for it (json_schema named Prediction, or json_object); every reply also carries
the parsed `prediction` as a top-level field. Per request: `max_tokens` / `max_completion_tokens`,
`temperature`, `top_p`, `seed`, `stream` (server-sent events), `stream_options.include_usage`; `n` > 1 is
refused. Parsing and the reply objects: `serve_request`; the batch: `serve_batch`; `/metrics`: `serve_metrics`.

Threads: one per connection, at most `max_connections` (beyond that the accepting thread answers 503 itself and
closes); each validates its request and hands it to the one worker thread (`serve_batch.Scheduler`), which
admits it into the running batch between decode steps. At most `max_queue` requests wait to be admitted (then
429 with Retry-After). A request not answered within `request_timeout_s` gets a 504 and its row leaves the
batch; so does the row of a client that disconnects. `drain()` (SIGTERM under `serve`) refuses new requests with
503 and waits for those in flight.

Every refusal is an OpenAI-style `{"error": {"message", "type", "param", "code"}}`: a Content-Length that is not
a non-negative integer (400), missing (411), over `max_body_bytes` (413); a chunked body (411); JSON that is
malformed or nested deeper than `max_json_depth` (400); any field `JudgeInput` refuses, a bad parameter or a
prompt too long for the model's context (400); an unknown route (404) or method (405). The server keeps serving
after every one of them; a failure inside generation is a 500 for the requests it touched only.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import queue
import re
import secrets
import select
import signal
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, Optional

from mlxhv.errors import SettingsError
from mlxhv.judge import Judge
from mlxhv.serve_batch import Job, Scheduler
from mlxhv.serve_metrics import Metrics
from mlxhv.serve_request import (SCHEMA_NAME, BadRequest, JudgeRequest, ServeSettings, chat_chunk,  # noqa: F401
                                 chat_completion, error_body, final_chunks, loads_bounded, parse_chat_request)

log = logging.getLogger("mlxhv.serve")

_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_POLL_S = 0.05  # how often a waiting handler checks its client and its deadline
_LINGER_S, _LINGER_BYTES = 1.0, 8 << 20  # after a refusal, unread input dropped for at most this long / much


def _http_bytes(status: int, obj: dict, headers: dict) -> bytes:
    data = json.dumps(obj).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
            f"Content-Length: {len(data)}", "Connection: close"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


class JudgeServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the judge and its worker; `base_url` is what OpenAI clients take."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, judge: Judge, settings: ServeSettings, step_hook: Optional[Callable] = None):
        self.judge, self.settings = judge, settings
        self.model_name = settings.model_name or judge.name
        self.draining = False
        self.connections = self.in_flight = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        try:
            super().__init__((settings.host, settings.port), _Handler)
        except OSError as e:
            raise SettingsError(f"{settings.host}:{settings.port}: cannot listen there ({e.strerror or e})") from None
        try:
            self.metrics = Metrics({"queue_depth": lambda: self.scheduler.queue_depth(),
                                    "running_rows": lambda: self.scheduler.running,
                                    "connections": lambda: self.connections})
            self.scheduler = Scheduler(judge, settings.max_batch, settings.max_queue, settings.batch_wait_s,
                                       on_step=self.metrics.step, step_hook=step_hook,
                                       fast_kernels=settings.fast_kernels)
        except BaseException:
            super().server_close()
            raise

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def count(self, name: str, by: int) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + by)

    # ------------------------------------------------------------------ connections

    def process_request(self, request, client_address):
        if self.draining or not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        self.count("connections", 1)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.count("connections", -1)
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """503 from the accepting thread: read what the client has sent (up to 50 ms), answer, close."""
        status = 503
        message = ("the judge server is shutting down" if self.draining else
                   f"the judge server is at its limit of {self.settings.max_connections} connections; retry later")
        self.metrics.reply(status)
        try:
            request.settimeout(0.05)
            with contextlib.suppress(OSError):
                if select.select([request], [], [], 0.05)[0]:
                    request.recv(65536)
            request.settimeout(1.0)
            request.sendall(_http_bytes(status, error_body(status, message, code="overloaded"), {"Retry-After": 1}))
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    # ------------------------------------------------------------------ lifecycle

    def drain(self, timeout_s: Optional[float] = None) -> bool:
        """Refuse new requests (503) and wait until those in flight are answered; True when they all were."""
        self.draining = self.scheduler.draining = True
        end = time.monotonic() + (self.settings.drain_timeout_s if timeout_s is None else timeout_s)
        while time.monotonic() < end:
            if self.in_flight == 0 and self.scheduler.idle():
                return True
            time.sleep(_POLL_S)
        return False

    def server_close(self) -> None:
        super().server_close()
        self.scheduler.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI SDK's connection pool expects
    server: JudgeServer

    def setup(self):
        self.timeout = self.server.settings.read_timeout_s or None
        super().setup()

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's signature)
        log.info("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ replies

    def _send(self, status: int, obj: dict, close: bool = False, headers: Optional[dict] = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.server.metrics.reply(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = self._linger = True
        self.end_headers()
        self.wfile.write(data)

    _linger = False

    def finish(self):
        """After a refusal that leaves a body unread, read and drop what the client still sends (bounded by
        _LINGER_BYTES and _LINGER_S) before closing, so the reply is not lost to a reset."""
        super().finish()
        if not self._linger:
            return
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            end, seen = time.monotonic() + _LINGER_S, 0
            while seen < _LINGER_BYTES and time.monotonic() < end:
                self.connection.settimeout(max(0.01, end - time.monotonic()))
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                seen += len(chunk)

    def _error(self, status: int, message: str, param: Optional[str] = None, close: bool = False,
               retry_after: Optional[int] = None, code: Optional[str] = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        self._send(status, error_body(status, message, param, code), close, headers)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (bad request line, headers too long, …) as OpenAI error bodies."""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"  # a reply with status line and headers, as to every client
        try:
            self._error(int(code), message or HTTPStatus(code).phrase, close=True)
        except OSError:
            self.close_connection = True

    # ------------------------------------------------------------------ routes

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def do_GET(self):
        path = self._path()
        if path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                          "created": 0, "owned_by": "mlxhv"}]})
        elif path == "/health":
            self._send(503 if self.server.draining else 200,
                       {"status": "draining" if self.server.draining else "ok"})
        elif path == "/metrics":
            data = self.server.metrics.render().encode()
            self.server.metrics.reply(200)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._error(404, f"no route GET {self.path}")

    def _not_allowed(self):
        self._error(405, f"method {self.command} is not allowed; the judge serves POST /v1/chat/completions",
                    close=True)

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _read_body(self) -> Optional[bytes]:
        """The request body, or None after answering a refusal (the connection then closes)."""
        limit = self.server.settings.max_body_bytes
        if self.headers.get("Transfer-Encoding") is not None:
            self._error(411, "chunked (Transfer-Encoding) bodies are not accepted; send a Content-Length",
                        close=True)
            return None
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            self._error(411, "a Content-Length header is required", close=True)
            return None
        value = values.pop()
        if values or not _CONTENT_LENGTH.fullmatch(value):
            self._error(400, "Content-Length must be one non-negative integer", close=True)
            return None
        length = int(value)
        if length > limit:
            self._error(413, f"request body of {length} bytes is over the limit of {limit}", close=True)
            return None
        raw = self.rfile.read(length)
        if len(raw) < length:  # the client closed before sending it all
            self.close_connection = True
            return None
        return raw

    def do_POST(self):
        if self._path() not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route POST {self.path}; the judge serves POST /v1/chat/completions", close=True)
            return
        raw = self._read_body()
        if raw is None:
            return
        s, server = self.server.settings, self.server
        server.count("in_flight", 1)
        try:
            body = loads_bounded(raw, s.max_json_depth, "the request body")
            request = parse_chat_request(body, s.max_tokens_limit, s.max_json_depth)
            job = Job("chatcmpl-" + secrets.token_hex(12), request)
            server.scheduler.submit(job)
        except BadRequest as e:
            self._error(e.status, e.message, e.param, retry_after=e.retry_after, code=e.code)
            server.count("in_flight", -1)
            return
        try:
            if request.stream:
                self._stream(job)
            else:
                self._answer(job)
        finally:
            server.count("in_flight", -1)

    # ------------------------------------------------------------------ waiting for the worker

    def _client_gone(self) -> bool:
        """The client closed its connection (a readable socket with nothing to read)."""
        try:
            if not select.select([self.connection], [], [], 0)[0]:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait(self, job: Job, until: Callable[[], bool]) -> Optional[str]:
        """Wait until `until()` or the job is done; "gone" / "timeout" (the job then cancelled), else None."""
        deadline = job.created + self.server.settings.request_timeout_s
        while not (job.future.done() or until()):
            left = deadline - time.monotonic()
            if left <= 0 or self._client_gone():
                self.server.scheduler.cancel(job)
                return "timeout" if left <= 0 else "gone"
            cf.wait([job.future], timeout=min(_POLL_S, left))
        return None

    def _failure(self, job: Job) -> tuple[int, str, Optional[str], Optional[str]]:
        e = job.future.exception()
        if isinstance(e, BadRequest):
            return e.status, e.message, e.param, e.code
        return 500, f"generation failed: {type(e).__name__}: {e}", None, None

    def _answer(self, job: Job) -> None:
        why = self._wait(job, lambda: False)
        if why == "gone":
            self.close_connection = True
            return
        if why == "timeout":
            self._error(504, f"no answer within the request timeout of {self.server.settings.request_timeout_s:g} s",
                        code="timeout")
            return
        if job.future.cancelled() or job.future.exception() is not None:
            status, message, param, code = (499, "cancelled", None, None) if job.future.cancelled() \
                else self._failure(job)
            self._error(status, message, param, code=code)
            return
        pred = job.future.result()
        self.server.metrics.latency(time.monotonic() - job.created)
        self._send(200, chat_completion(pred, job.request, job.id, self.server.model_name))

    def _event(self, obj) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
        self.wfile.write(f"data: {data}\n\n".encode("utf-8"))
        self.wfile.flush()

    def _stream(self, job: Job) -> None:
        """Server-sent events: the role, then the answer's text as it decodes (a Prediction reply arrives
        whole once parsed), the finish reason with the prediction, [DONE]."""
        name = self.server.model_name
        self.server.metrics.reply(200)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream ends when the connection does
        self.close_connection = True
        self.end_headers()
        try:
            self._event(chat_chunk(job.id, name, {"role": "assistant", "content": ""}))
            while True:
                with contextlib.suppress(queue.Empty):
                    while True:
                        self._event(chat_chunk(job.id, name, {"content": job.deltas.get_nowait()}))
                if job.future.done():
                    break
                why = self._wait(job, lambda: not job.deltas.empty())
                if why == "gone":
                    return
                if why == "timeout":
                    self._event(error_body(504, "no answer within the request timeout", code="timeout"))
                    return
            with contextlib.suppress(queue.Empty):
                while True:
                    self._event(chat_chunk(job.id, name, {"content": job.deltas.get_nowait()}))
            if job.future.cancelled() or job.future.exception() is not None:
                status, message, param, code = self._failure(job) if not job.future.cancelled() \
                    else (499, "cancelled", None, None)
                self._event(error_body(status, message, param, code))
                return
            pred = job.future.result()
            for chunk in final_chunks(pred, job.request, job.id, name):
                self._event(chunk)
            self._event("[DONE]")
            self.server.metrics.latency(time.monotonic() - job.created)
        except OSError:  # the client went away mid-stream
            self.server.scheduler.cancel(job)


def start_server(judge: Judge, settings: Optional[ServeSettings] = None, **kw) -> JudgeServer:
    """Bind and serve in a background thread; returns the server (`.base_url`); stop it with `shutdown()`
    then `server_close()`, or use `serving`."""
    server = JudgeServer(judge, settings or ServeSettings(), **kw)
    threading.Thread(target=server.serve_forever, name="mlxhv-judge-http", daemon=True).start()
    return server


@contextlib.contextmanager
def serving(judge: Judge, settings: Optional[ServeSettings] = None, **kw) -> Iterator[JudgeServer]:
    """`with serving(judge, ServeSettings(port=0)) as server:` … `server.base_url` … — stopped on exit."""
    server = start_server(judge, settings, **kw)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def serve(judge: Judge, settings: Optional[ServeSettings] = None,
          on_ready: Optional[Callable[[JudgeServer], None]] = None) -> None:
    """Serve until interrupted (what `mlxhv serve` runs); `on_ready(server)` runs once it listens. SIGTERM drains
    (requests in flight are answered, new ones get 503) and then stops; Ctrl-C stops at once."""
    server = JudgeServer(judge, settings or ServeSettings())
    log.info("serving %s at %s", server.model_name, server.base_url)

    def drain_and_stop():
        answered = server.drain()
        log.info("drained (%s); stopping", "all answered" if answered else "timed out")
        server.shutdown()

    def on_term(signum, frame):
        threading.Thread(target=drain_and_stop, name="mlxhv-judge-drain", daemon=True).start()

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() \
        else None
    if on_ready is not None:
        on_ready(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["ServeSettings", "JudgeServer", "BadRequest", "JudgeRequest", "parse_chat_request", "chat_completion",
           "start_server", "serving", "serve", "SCHEMA_NAME"]
