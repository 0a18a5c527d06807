"""The OpenAI client wrapper: one JSON reply of a pydantic type per call, with retries, re-asks and redaction.

`call_json(client, settings, model=…, messages=…, schema=Draft, check=…)` returns `check(draft)`:

- `structured` mode sends `client.chat.completions.parse(..., response_format=Draft)` (strict JSON schema) and
  reads `message.parsed` / `message.refusal`; `prompt` mode (servers that ignore `response_format`, such as
  `mlx_lm.server`) puts the JSON schema and a sample reply in the system message and parses the text itself
  (code fences, `<think>` blocks and prose around the object are tolerated).
- Transport failures — 429, 408, 409, 5xx, timeouts, dropped connections — are retried up to `max_retries` times,
  waiting what `Retry-After` / `retry-after-ms` asks (capped at `max_retry_after_s`), else
  `backoff_base_s * 2**k` (capped at `backoff_max_s`, minus up to 25 % jitter). The SDK's own retries are off
  (`max_retries=0`) so the waits are ours, counted in the ledger, and short in tests.
- A reply cut by the token limit or refused raises `ReplyError` at once (the caller regenerates it); a reply
  that is not JSON, breaks the schema, or fails `check` is re-asked in the same conversation with the validation
  errors, at most `max_fix_rounds` times, then raises `ReplyError("invalid")`.
- Anything else (401, 403, 404, 400, retries exhausted) raises `APIFailure`, which stops a run.
- The API key is read from the environment variable named in the settings, never stored in a settings object,
  and scrubbed (with anything shaped like an OpenAI key) from every message this module raises.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from mlxhv.errors import SettingsError
from mlxhv.errors import DatagenError
from mlxhv.data.io import pydantic_errors
from mlxhv.datagen.drafts import SAMPLES
from mlxhv.datagen.ledger import Ledger
from mlxhv.answer import strip_think

T = TypeVar("T")
MODES = ("structured", "prompt")
LOCAL_PLACEHOLDER_KEY = "not-needed"  # sent to --base-url servers when no key is set; they ignore it


@dataclass
class ClientSettings:
    """How to reach the API (shared by `mlxhv data topics` and `mlxhv data generate`)."""

    base_url: Optional[str] = None  # None: api.openai.com (or OPENAI_BASE_URL); e.g. http://127.0.0.1:8080/v1
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key; the key itself is never a setting
    mode: str = "structured"  # "structured" (response_format) | "prompt" (schema in the prompt)
    timeout_s: float = 600.0  # per request; o1-class models think for minutes
    max_retries: int = 6  # transport retries per request
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0  # longest server-requested wait we honour
    max_fix_rounds: int = 2  # re-asks with the validation errors before a reply counts as invalid
    temperature: Optional[float] = None  # None: not sent (o1-class models reject it)


class APIFailure(DatagenError):
    """The API cannot serve us (auth, bad request, unknown model, retries exhausted): stop the run."""


class ReplyError(DatagenError):
    """One reply is unusable: kind is 'length' (cut by the token limit), 'refused' or 'invalid'."""

    def __init__(self, kind: str, detail: str, raw: str = ""):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.raw = kind, detail, raw


_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*.]{6,}")


def redact(text: str, secret: Optional[str] = None) -> str:
    """Remove `secret` and anything shaped like an OpenAI key (`sk-…`) from `text`."""
    if secret and len(secret) >= 4 and secret != LOCAL_PLACEHOLDER_KEY:
        text = text.replace(secret, "***")
    return _KEY_PATTERN.sub("sk-***", text)


def make_client(settings: ClientSettings) -> openai.OpenAI:
    """An `openai.OpenAI` client with the SDK's retries off. Raises APIFailure when no key is set for api.openai.com."""
    key = os.environ.get(settings.api_key_env)
    if not key:
        if settings.base_url is None and not os.environ.get("OPENAI_BASE_URL"):
            raise APIFailure(f"${settings.api_key_env} is not set (needed for api.openai.com; "
                             "a local server given with --base-url needs no key)")
        key = LOCAL_PLACEHOLDER_KEY
    return openai.OpenAI(api_key=key, base_url=settings.base_url, timeout=settings.timeout_s, max_retries=0)


def parse_retry_after(headers: Any) -> Optional[float]:
    """Seconds a server asks us to wait: `retry-after-ms`, `retry-after` (seconds or an HTTP date), else None."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
            return seconds if math.isfinite(seconds) else None
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


def retry_delay(retry: int, headers: Any, settings: ClientSettings, rng: random.Random) -> float:
    """Wait before retry number `retry` (0-based): Retry-After when given, else capped exponential backoff."""
    asked = parse_retry_after(headers)
    if asked is not None:
        return min(max(asked, 0.0), settings.max_retry_after_s)
    return min(settings.backoff_max_s, settings.backoff_base_s * 2**retry) * (1 - 0.25 * rng.random())


def _is_retryable(exc: Exception) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _describe_api_error(exc: Exception) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection failed ({exc.__cause__ or exc})"
    return f"{type(exc).__name__}: {exc}"


_rng_lock = threading.Lock()
_rng = random.Random()


def with_retries(fn: Callable[[], T], *, settings: ClientSettings, model: str, ledger: Optional[Ledger],
                 secret: Optional[str] = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call `fn`, retrying transport failures (see module doc); other API errors become APIFailure."""
    for retry in range(settings.max_retries + 1):
        try:
            return fn()
        except openai.APIError as exc:
            if not _is_retryable(exc):
                hint = ""
                if isinstance(exc, openai.BadRequestError) and settings.mode == "structured":
                    hint = " (if this server does not support structured outputs, try --mode prompt)"
                raise APIFailure(redact(f"{model}: {_describe_api_error(exc)}{hint}", secret)) from None
            if retry == settings.max_retries:
                raise APIFailure(redact(f"{model}: giving up after {settings.max_retries} retries: "
                                        f"{_describe_api_error(exc)}", secret)) from None
            headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else None
            with _rng_lock:
                delay = retry_delay(retry, headers, settings, _rng)
            if ledger is not None:
                ledger.record_retry(model)
            sleep(delay)
    raise AssertionError("unreachable")


def extract_json(text: str) -> Any:
    """The first JSON object in a reply: after any `</think>` (`answer.strip_think`), inside or outside ```
    fences, prose ignored."""
    text = strip_think(text)
    decoder = json.JSONDecoder()
    start = text.find("{")
    last_error: Optional[json.JSONDecodeError] = None
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
            return obj
        except json.JSONDecodeError as e:
            last_error = last_error or e
            start = text.find("{", start + 1)
    if last_error is None:
        raise ValueError("no JSON object in the reply")
    raise ValueError(f"malformed JSON: {last_error.msg} (line {last_error.lineno} column {last_error.colno})")


def describe_invalid(exc: Exception) -> str:
    """Validation errors as `field: message` lines (the text a re-ask sends back)."""
    if isinstance(exc, ValidationError):
        lines = []
        for err in pydantic_errors(exc, "reply", 0):
            lines.append(f"{err.field}: {err.message}" if err.field else err.message)
        return "; ".join(lines)
    return str(exc)


def schema_instructions(schema: type[BaseModel]) -> str:
    """The prompt-mode instruction: the JSON schema of `schema` and a sample reply."""
    text = ("Reply with exactly one JSON object and nothing else (no prose, no code fences). "
            f"It must match this JSON schema:\n{json.dumps(schema.model_json_schema(), separators=(',', ':'))}")
    if schema in SAMPLES:
        text += f"\nA reply of the right shape (content only illustrative):\n{json.dumps(SAMPLES[schema])}"
    return text


def _with_schema(messages: list[dict], schema: type[BaseModel]) -> list[dict]:
    messages = [dict(m) for m in messages]
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = messages[0]["content"] + "\n\n" + schema_instructions(schema)
    else:
        messages.insert(0, {"role": "system", "content": schema_instructions(schema)})
    return messages


def _fix_message(errors: str) -> dict:
    return {"role": "user", "content": f"That reply was not valid: {errors}\nReply again with only the corrected "
                                       "JSON object."}


def _request_kwargs(model: str, messages: list[dict], max_tokens: Optional[int], settings: ClientSettings) -> dict:
    kwargs: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is not None:
        kwargs["max_completion_tokens"] = max_tokens
    if settings.temperature is not None:
        kwargs["temperature"] = settings.temperature
    return kwargs


def _one_reply(client: openai.OpenAI, settings: ClientSettings, schema: type[BaseModel], kwargs: dict,
               ledger: Optional[Ledger]) -> tuple[str, Optional[BaseModel], Optional[Exception]]:
    """One request (with transport retries): (content, parsed draft or None, parse error or None).

    Raises ReplyError for length cuts and refusals.
    """
    model = kwargs["model"]
    secret = client.api_key if isinstance(client.api_key, str) else None
    if settings.mode == "structured":
        raw = with_retries(lambda: client.chat.completions.with_raw_response.parse(response_format=schema, **kwargs),
                           settings=settings, model=model, ledger=ledger, secret=secret)
        try:
            body = raw.http_response.json()
        except ValueError:
            body = {}
        if ledger is not None:
            ledger.record(model, body.get("usage") if isinstance(body, dict) else None)
        try:
            choice0 = body["choices"][0]
            content = (choice0.get("message") or {}).get("content") or ""
        except (KeyError, IndexError, TypeError):
            choice0, content = {}, ""
        try:
            completion = raw.parse()
        except openai.LengthFinishReasonError:
            raise ReplyError("length", "the reply was cut by the token limit", content) from None
        except openai.ContentFilterFinishReasonError:
            raise ReplyError("refused", "the reply was stopped by the content filter", content) from None
        except (ValidationError, ValueError) as e:
            return content, None, e
        except openai.APIResponseValidationError as e:
            return content, None, ValueError(f"malformed response body ({e.message})")
        if not completion.choices:
            return content, None, ValueError("the response has no choices")
        message = completion.choices[0].message
        if message.refusal:
            raise ReplyError("refused", f"the model refused: {message.refusal}", message.refusal)
        if message.parsed is None:
            return content, None, ValueError("empty reply")
        return content, message.parsed, None

    completion = with_retries(lambda: client.chat.completions.create(**kwargs),
                              settings=settings, model=model, ledger=ledger, secret=secret)
    if ledger is not None:
        ledger.record(model, completion.usage)
    if not completion.choices:
        return "", None, ValueError("the response has no choices")
    choice = completion.choices[0]
    content = choice.message.content or ""
    if choice.finish_reason == "length":
        raise ReplyError("length", "the reply was cut by the token limit", content)
    if choice.finish_reason == "content_filter":
        raise ReplyError("refused", "the reply was stopped by the content filter", content)
    if getattr(choice.message, "refusal", None):
        raise ReplyError("refused", f"the model refused: {choice.message.refusal}", choice.message.refusal)
    try:
        return content, schema.model_validate(extract_json(content)), None
    except (ValidationError, ValueError) as e:
        return content, None, e


def call_json(client: openai.OpenAI, settings: ClientSettings, *, model: str, messages: list[dict],
              schema: type[BaseModel], check: Optional[Callable[[Any], T]] = None,
              max_tokens: Optional[int] = None, ledger: Optional[Ledger] = None) -> T:
    """Ask `model` for one `schema` object and return `check(obj)` (or `obj`); see the module doc for failures.

    `check` may raise ValueError / pydantic.ValidationError: its message is sent back like a schema error.
    """
    if settings.mode not in MODES:
        raise SettingsError(f"mode {settings.mode!r}: expected one of {', '.join(MODES)}")
    secret = client.api_key if isinstance(client.api_key, str) else None
    convo = _with_schema(messages, schema) if settings.mode == "prompt" else [dict(m) for m in messages]
    problem = ""
    content = ""
    for _ in range(settings.max_fix_rounds + 1):
        content, parsed, error = _one_reply(client, settings, schema,
                                            _request_kwargs(model, convo, max_tokens, settings), ledger)
        if error is None:
            try:
                return check(parsed) if check is not None else parsed
            except (ValidationError, ValueError) as e:
                error = e
        problem = redact(describe_invalid(error), secret)
        convo = convo + [{"role": "assistant", "content": content}, _fix_message(problem)]
    raise ReplyError("invalid", problem, redact(content, secret))
