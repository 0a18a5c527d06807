"""OpenAI-compatible serving of a `Judge`: `POST /v1/chat/completions`, batched, with answers parsed into
`Prediction`s.

A request is an ordinary chat completion whose last user message holds the input as JSON:

    {"model": "judge", "messages": [{"role": "user",
        "content": "{\"hypothesis\": \"…\", \"evidence\": [{\"source\": …, \"content\": …, \"relevance\": 0.9}]}"}]}

The judge's own prompt (the adapter's system prompt, chat template and answer prefix) is rendered around that
input; system and earlier messages the client sends are not used. The reply is a `chat.completion` whose
message content is
- the raw answer (answer prefix + completion) by default, or
- the `Prediction` as JSON when `response_format` asks for it: `{"type": "json_schema", "json_schema": {"name":
  "Prediction", …}}` (what `client.chat.completions.parse(response_format=Prediction)` sends) or
  `{"type": "json_object"}`. The content is then complete whatever the budget, so `finish_reason` is "stop";
  a cut answer shows as `Prediction.truncated`.
Every reply also carries the parsed `prediction` as a top-level field (`completion.model_extra["prediction"]`).
Per request: `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `seed`; `stream` and `n` > 1 are
refused.

Batching: handler threads validate the request and queue it; one worker thread takes what is queued (up to
`max_batch`, waiting `batch_wait_s` after the first arrival for others) and runs it as one engine call
(`Judge.run`, which batches through `mlxhv.engine.generate`); requests that arrive meanwhile form the next
batch. Requests are batched only with others of the same generation settings. Tokenizing happens on the worker
thread as well, so the tokenizer is never used by two threads at once.

Errors: a body that is not JSON, not an object, a missing hypothesis, evidence that is not a list (any field
`JudgeInput` refuses), a bad parameter or a prompt too long for the model's context get a 400 with an
OpenAI-style `{"error": {"message", "type", "param"}}`; a body over `max_body_bytes` a 413. The server keeps
serving after every one of them; a failure inside generation is a 500 for the requests of that batch only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional

from mlxhv import __version__
from mlxhv.errors import DataError, SettingsError
from mlxhv.judge import Judge, JudgeInput, PromptTooLong, as_input
from mlxhv.schema import Prediction

log = logging.getLogger("mlxhv.serve")

SCHEMA_NAME = Prediction.__name__  # the response_format schema name (or title) that asks for a Prediction


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (tests)
    max_batch: int = 8  # requests decoded together in one engine call
    batch_wait_s: float = 0.02  # after a request arrives at an idle worker, wait this long for others to join it
    max_body_bytes: int = 1 << 20
    model_name: Optional[str] = None  # the id /v1/models reports and replies carry; default: the judge's model

    def __post_init__(self):
        if self.max_batch < 1:
            raise SettingsError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.batch_wait_s < 0:
            raise SettingsError(f"batch_wait_s must be >= 0, got {self.batch_wait_s}")


class BadRequest(Exception):
    """A request the server refuses; `status` 400 unless said otherwise, `param` the offending field."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


# ------------------------------------------------------------------------------------------- request parsing


@dataclass(frozen=True)
class JudgeRequest:
    """A validated chat request: what to judge, the engine overrides, and whether the reply is a Prediction."""

    item: JudgeInput
    overrides: tuple  # sorted (name, value) pairs for GenerationSettings
    structured: bool


def _number(body: dict, name: str, kind: type, lo: float, hi: Optional[float] = None, lo_open: bool = False):
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int):
        raise BadRequest(f"{name} must be {'a number' if kind is float else 'an integer'}, got {v!r}", name)
    if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
        bound = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise BadRequest(f"{name} must be {bound}, got {v!r}", name)
    return kind(v)


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": …}, …]
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    raise BadRequest(f"{where}: must be a string (or text parts) holding the JSON input", where)


def _wants_prediction(rf: Any) -> bool:
    if rf is None:
        return False
    if not isinstance(rf, dict):
        raise BadRequest("response_format must be an object", "response_format")
    kind = rf.get("type")
    if kind in (None, "text"):
        return False
    if kind == "json_object":
        return True
    if kind == "json_schema":
        js = rf.get("json_schema") if isinstance(rf.get("json_schema"), dict) else {}
        schema = js.get("schema") if isinstance(js.get("schema"), dict) else {}
        name = js.get("name") or schema.get("title")
        if name == SCHEMA_NAME or schema.get("title") == SCHEMA_NAME:
            return True
        raise BadRequest(f"response_format: this server answers in the {SCHEMA_NAME} schema "
                         f"(mlxhv.schema.{SCHEMA_NAME}) only, not {name!r}", "response_format")
    raise BadRequest(f"response_format.type must be text, json_object or json_schema, not {kind!r}",
                     "response_format")


def parse_chat_request(body: Any) -> JudgeRequest:
    """Validate a chat-completions body into a JudgeRequest; BadRequest says what is wrong and where."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    if body.get("stream"):
        raise BadRequest("stream is not supported by the judge server; send stream: false", "stream")
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest(f"n must be 1 (one judgement per request), got {n!r}", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise BadRequest("messages: no user message; the last one must hold "
                         '{"hypothesis": …, "evidence": [...]} as JSON', "messages")
    where = f"messages[{users[-1]}].content"
    text = _message_text(messages[users[-1]].get("content"), where)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(f"{where}: malformed JSON ({e.msg} at column {e.colno}); it must be "
                         '{"hypothesis": …, "evidence": [...]}', where) from None
    if not isinstance(data, dict):
        raise BadRequest(f"{where}: must be a JSON object with hypothesis and evidence, got "
                         f"{type(data).__name__}", where)
    try:
        item = as_input(data, where)
    except DataError as e:
        first = e.errors[0]
        raise BadRequest("; ".join(str(x) for x in e.errors), f"{where}.{first.field}" if first.field else where)
    max_tokens = _number(body, "max_completion_tokens", int, 1)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 1)
    overrides = {"max_tokens": max_tokens, "temperature": _number(body, "temperature", float, 0.0),
                 "top_p": _number(body, "top_p", float, 0.0, 1.0, lo_open=True), "seed": _number(body, "seed", int, 0)}
    structured = _wants_prediction(body.get("response_format"))
    return JudgeRequest(item, tuple(sorted((k, v) for k, v in overrides.items() if v is not None)), structured)


def chat_completion(pred: Prediction, request: JudgeRequest, completion_id: str, model_name: str) -> dict:
    """The OpenAI `chat.completion` object for one prediction."""
    content = pred.model_dump_json() if request.structured else pred.raw
    finish = "stop" if request.structured or not pred.truncated else "length"
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
        "system_fingerprint": f"mlxhv-{__version__}",
        "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {"prompt_tokens": pred.prompt_tokens, "completion_tokens": pred.completion_tokens,
                  "total_tokens": pred.prompt_tokens + pred.completion_tokens},
        "prediction": pred.model_dump(mode="json"),
    }


# ------------------------------------------------------------------------------------------------- batching


@dataclass(eq=False)
class _Job:
    id: str
    request: JudgeRequest
    future: Future


class Batcher:
    """One worker thread running queued requests through the judge, up to `max_batch` per engine call."""

    def __init__(self, judge: Judge, max_batch: int = 8, wait_s: float = 0.02):
        self.judge, self.max_batch, self.wait_s = judge, max_batch, wait_s
        self._pending: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.batches: list[int] = []  # size of every engine call made (what tests and benchmarks read)
        self._thread = threading.Thread(target=self._loop, name="mlxhv-judge-batcher", daemon=True)
        self._thread.start()

    def submit(self, job_id: str, request: JudgeRequest) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the judge server is shutting down")
            self._pending.append(_Job(job_id, request, fut))
            self._cv.notify()
        return fut

    def close(self) -> None:
        with self._cv:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        for job in left:
            job.future.set_exception(RuntimeError("the judge server shut down"))
        self._thread.join(timeout=600)

    def _take(self) -> list[_Job]:
        """The next batch: queued jobs with the first one's generation overrides, at most max_batch."""
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed:
                return []
            deadline = time.monotonic() + self.wait_s
            while len(self._pending) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            key = self._pending[0].request.overrides
            batch = [j for j in self._pending if j.request.overrides == key][:self.max_batch]
            for j in batch:
                self._pending.remove(j)
            return batch

    def _loop(self) -> None:
        import mlx.core as mx

        try:
            while True:
                batch = self._take()
                if not batch:
                    return
                self._run(batch)
        finally:
            # MLX gives each thread its own streams; a thread that used them must release them before it ends,
            # or the process aborts at exit ("terminate called without an active exception").
            if hasattr(mx, "clear_streams"):
                mx.clear_streams()

    def _run(self, batch: list[_Job]) -> None:
        overrides = dict(batch[0].request.overrides)
        jobs, prompts = [], []
        for job in batch:  # tokenize here: the worker is the tokenizer's only user
            try:
                prompts.append(self.judge.encode(job.request.item, overrides.get("max_tokens")))
                jobs.append(job)
            except PromptTooLong as e:
                job.future.set_exception(BadRequest(str(e), "messages"))
        if not jobs:
            return
        self.batches.append(len(jobs))
        try:
            generation = self.judge.generation_settings(**overrides, batch_size=len(jobs))
            preds = self.judge.run([j.request.item.id or j.id for j in jobs], prompts, generation)
        except Exception as e:  # a bug or a resource failure: 500 for this batch, the server keeps going
            log.exception("generation failed for a batch of %d", len(jobs))
            for j in jobs:
                j.future.set_exception(e)
            return
        for j, p in zip(jobs, preds):
            j.future.set_result(p)


# ------------------------------------------------------------------------------------------------- HTTP


class JudgeServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the judge and its batcher; `base_url` is what OpenAI clients take."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, judge: Judge, settings: ServeSettings):
        self.judge, self.settings = judge, settings
        self.model_name = settings.model_name or judge.name
        try:
            super().__init__((settings.host, settings.port), _Handler)
        except OSError as e:
            raise SettingsError(f"{settings.host}:{settings.port}: cannot listen there ({e.strerror or e})") from None
        self.batcher = Batcher(judge, settings.max_batch, settings.batch_wait_s)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI SDK's connection pool expects
    timeout = 120  # seconds a client may take to send its request
    server: JudgeServer

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's signature)
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, obj: dict, close: bool = False) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: Optional[str] = None, close: bool = False) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": None}}, close)

    def do_GET(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                          "created": 0, "owned_by": "mlxhv"}]})
        elif path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}; the judge serves POST /v1/chat/completions", close=True)
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "a Content-Length header is required", close=True)
            return
        if length > self.server.settings.max_body_bytes:
            self._error(413, f"request body of {length} bytes is over the limit of "
                             f"{self.server.settings.max_body_bytes}", close=True)
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            where = f" ({e.msg} at line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
            self._error(400, f"malformed JSON in the request body{where}")
            return
        try:
            request = parse_chat_request(body)
            completion_id = "chatcmpl-" + secrets.token_hex(12)
            pred = self.server.batcher.submit(completion_id, request).result()
        except BadRequest as e:
            self._error(e.status, e.message, e.param)
            return
        except Exception as e:  # generation failed: tell this client, keep serving
            self._error(500, f"generation failed: {type(e).__name__}: {e}")
            return
        self._send(200, chat_completion(pred, request, completion_id, self.server.model_name))


def start_server(judge: Judge, settings: Optional[ServeSettings] = None) -> JudgeServer:
    """Bind and serve in a background thread; returns the server (`.base_url`); stop it with `shutdown()`
    then `server_close()`, or use `serving`."""
    server = JudgeServer(judge, settings or ServeSettings())
    threading.Thread(target=server.serve_forever, name="mlxhv-judge-http", daemon=True).start()
    return server


@contextlib.contextmanager
def serving(judge: Judge, settings: Optional[ServeSettings] = None) -> Iterator[JudgeServer]:
    """`with serving(judge, ServeSettings(port=0)) as server:` … `server.base_url` … — stopped on exit."""
    server = start_server(judge, settings)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def serve(judge: Judge, settings: Optional[ServeSettings] = None,
          on_ready: Optional[Callable[[JudgeServer], None]] = None) -> None:
    """Serve until interrupted (what `mlxhv serve` runs); `on_ready(server)` runs once it listens."""
    server = JudgeServer(judge, settings or ServeSettings())
    log.info("serving %s at %s", server.model_name, server.base_url)
    if on_ready is not None:
        on_ready(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


__all__ = ["ServeSettings", "JudgeServer", "Batcher", "BadRequest", "parse_chat_request", "chat_completion",
           "start_server", "serving", "serve", "SCHEMA_NAME"]
