"""What the judge server reads and writes: a chat-completions body validated into a `JudgeRequest`, and the
OpenAI objects it answers with (`chat.completion`, `chat.completion.chunk`, the error body), and the server's
settings (`ServeSettings`: limits, timeouts, batch size).

Everything a client can get wrong raises `BadRequest` (an `MlxhvError`) with the HTTP status, the message and
the offending field; the server turns it into `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Optional

from mlxhv import __version__
from mlxhv.errors import DataError, MlxhvError, SettingsError
from mlxhv.judge import JudgeInput, as_input
from mlxhv.schema import Prediction

SCHEMA_NAME = Prediction.__name__  # the response_format schema name (or title) that asks for a Prediction
MAX_SEED = 2**32 - 1
MAX_TEMPERATURE = 2.0  # OpenAI's range


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (tests)
    max_batch: int = 16  # rows decoding together
    batch_wait_s: float = 0.02  # an idle worker waits this long after a request for others to start with it
    max_body_bytes: int = 1 << 20
    model_name: Optional[str] = None  # the id /v1/models reports and replies carry; default: the judge's model
    max_connections: int = 64  # open client connections (threads) at most; beyond: 503
    max_queue: int = 64  # requests waiting to join the batch at most; beyond: 429
    request_timeout_s: float = 300.0  # receive to reply; beyond: 504 and the row leaves the batch
    read_timeout_s: float = 30.0  # a client's time to send its request (and idle keep-alive time)
    max_json_depth: int = 64  # nesting of the body's JSON and of the input's JSON
    max_tokens_limit: int = 4096  # the largest max_tokens a request may ask for
    drain_timeout_s: float = 120.0  # how long drain() waits for requests in flight
    fast_kernels: bool = True  # the engine's own CPU blocks (mlxhv.kernels); False: mlx-lm's

    def __post_init__(self):
        for name in ("max_batch", "max_connections", "max_queue", "max_body_bytes", "max_json_depth",
                     "max_tokens_limit"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_wait_s", "request_timeout_s", "read_timeout_s", "drain_timeout_s"):
            if not getattr(self, name) >= 0:
                raise SettingsError(f"{name} must be >= 0, got {getattr(self, name)}")



class BadRequest(MlxhvError):
    """A request the server refuses; `status` 400 unless said otherwise, `param` the offending field.
    `retry_after` (seconds) goes out as a Retry-After header (429, 503)."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 retry_after: Optional[int] = None, code: Optional[str] = None):
        super().__init__(message)
        self.message, self.param, self.status, self.retry_after, self.code = message, param, status, retry_after, code


def error_body(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    """OpenAI's error object; `type` is invalid_request_error for 4xx, server_error for 5xx."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------------------------------------ raw JSON

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(raw: bytes | str) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not count); a
    linear scan, so a hostile body cannot exhaust the stack the way `json.loads` would."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = deepest = 0
    for ch in _STRING.sub(b"", data).translate(None, _NOT_BRACKET):
        depth += 1 if ch in (0x5B, 0x7B) else -1  # [ {
        deepest = max(deepest, depth)
    return deepest


def loads_bounded(raw: bytes | str, max_depth: int, where: str) -> Any:
    """`json.loads` of a text whose nesting is at most `max_depth`; BadRequest (400) naming `where` otherwise."""
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise BadRequest(f"{where}: JSON nested {depth} levels deep; at most {max_depth} are accepted",
                         None if where == "the request body" else where)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise BadRequest(f"{where}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON in {where} ({e.msg} at line {e.lineno} column {e.colno})",
                         None if where == "the request body" else where) from None
    except RecursionError:  # unreachable after the depth check; kept so a stack overflow is never a dropped socket
        raise BadRequest(f"{where}: JSON nested too deeply") from None


# ------------------------------------------------------------------------------------------- request parsing


@dataclass(frozen=True)
class JudgeRequest:
    """A validated chat request: what to judge, the per-request generation settings (None: the judge's),
    whether the reply is a Prediction, and whether it streams."""

    item: JudgeInput
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    structured: bool = False
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage counts


def _number(body: dict, name: str, kind: type, lo: float, hi: Optional[float] = None, lo_open: bool = False):
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int):
        raise BadRequest(f"{name} must be {'a number' if kind is float else 'an integer'}, got {v!r}", name)
    if math.isnan(v) or v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
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


def _flag(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BadRequest(f"{name} must be true or false, got {v!r}", name)
    return v


def parse_chat_request(body: Any, max_tokens_limit: int = 4096, max_depth: int = 64) -> JudgeRequest:
    """Validate a chat-completions body into a JudgeRequest; BadRequest says what is wrong and where.
    `max_tokens_limit` bounds max_tokens; `max_depth` the nesting of the JSON input in the user message."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    include_usage = bool(stream and options and options.get("include_usage") is True)
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or n != 1):
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
        data = loads_bounded(text, max_depth, where)
    except BadRequest as e:
        if e.message.startswith("malformed JSON"):
            e.message = e.message.replace(f"malformed JSON in {where}", f"{where}: malformed JSON") + \
                '; it must be {"hypothesis": …, "evidence": [...]}'
        raise
    if not isinstance(data, dict):
        raise BadRequest(f"{where}: must be a JSON object with hypothesis and evidence, got "
                         f"{type(data).__name__}", where)
    try:
        item = as_input(data, where)
    except DataError as e:
        first = e.errors[0]
        raise BadRequest("; ".join(str(x) for x in e.errors), f"{where}.{first.field}" if first.field else where)
    max_tokens = _number(body, "max_completion_tokens", int, 1, max_tokens_limit)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 1, max_tokens_limit)
    return JudgeRequest(
        item, max_tokens=max_tokens, temperature=_number(body, "temperature", float, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", float, 0.0, 1.0, lo_open=True), seed=_number(body, "seed", int, 0, MAX_SEED),
        structured=_wants_prediction(body.get("response_format")), stream=stream, include_usage=include_usage)


# ------------------------------------------------------------------------------------------------ replies


def _usage(pred: Prediction) -> dict:
    return {"prompt_tokens": pred.prompt_tokens, "completion_tokens": pred.completion_tokens,
            "total_tokens": pred.prompt_tokens + pred.completion_tokens}


def finish_reason(pred: Prediction, request: JudgeRequest) -> str:
    """"stop", or "length" when the budget cut a raw answer (a Prediction reply is complete either way)."""
    return "stop" if request.structured or not pred.truncated else "length"


def reply_content(pred: Prediction, request: JudgeRequest) -> str:
    return pred.model_dump_json() if request.structured else pred.raw


def chat_completion(pred: Prediction, request: JudgeRequest, completion_id: str, model_name: str) -> dict:
    """The OpenAI `chat.completion` object for one prediction."""
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
        "system_fingerprint": f"mlxhv-{__version__}",
        "choices": [{"index": 0, "finish_reason": finish_reason(pred, request), "logprobs": None,
                     "message": {"role": "assistant", "content": reply_content(pred, request), "refusal": None}}],
        "usage": _usage(pred),
        "prediction": pred.model_dump(mode="json"),
    }


def chat_chunk(completion_id: str, model_name: str, delta: Optional[dict] = None,
               finish: Optional[str] = None, **extra) -> dict:
    """One `chat.completion.chunk` of a stream; `delta` None means no choices (the usage chunk)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model_name, "system_fingerprint": f"mlxhv-{__version__}", "choices": choices, **extra}


def final_chunks(pred: Prediction, request: JudgeRequest, completion_id: str, model_name: str) -> list[dict]:
    """The chunks that end a stream: the Prediction's content (a structured reply arrives whole, once parsed),
    the finish reason with the parsed `prediction`, and the usage chunk when stream_options asked for it."""
    out = []
    if request.structured:
        out.append(chat_chunk(completion_id, model_name, {"content": reply_content(pred, request)}))
    out.append(chat_chunk(completion_id, model_name, {}, finish_reason(pred, request),
                          prediction=pred.model_dump(mode="json")))
    if request.include_usage:
        out.append(chat_chunk(completion_id, model_name, None, usage=_usage(pred)))
    return out


__all__ = ["BadRequest", "JudgeRequest", "parse_chat_request", "chat_completion", "chat_chunk", "final_chunks",
           "error_body", "nesting_depth", "loads_bounded", "SCHEMA_NAME"]
