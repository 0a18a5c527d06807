"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: `/v1/chat/completions` with scripted replies.

By default it answers like a competent model (`smart_reply`): it reads which schema was asked for (the
`response_format` name, or the schema title in a prompt-mode system message) and the planned cell in the prompt,
and returns a valid `ExampleDraft`, an accepting `QAVerdict` or a `TopicList`. Tests queue overrides:

    server.push(reply(content="{not json"), kind="example")   # the next example request gets this
    server.push(error(429, headers={"Retry-After": "1"}))     # the next request of any kind
    server.fail_after = 5                                     # every request after the 5th: 500

Every request is recorded (`server.requests`: kind, body, headers with lower-case names, time, and `replied`: when
its whole reply was written to the socket, None until then or when the client had gone). Usable as a context
manager.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional


@dataclass
class Reply:
    status: int = 200
    body: object = None  # dict → JSON; str → sent as is
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0


def reply(content: Optional[str] = None, *, finish_reason: str = "stop", refusal: Optional[str] = None,
          prompt_tokens: int = 100, completion_tokens: int = 50, reasoning_tokens: int = 0,
          delay_s: float = 0.0) -> Reply:
    """A 200 chat completion whose message content is `content` (or a refusal)."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens,
             "completion_tokens_details": {"reasoning_tokens": reasoning_tokens}}
    body = {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "test",
            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}],
            "usage": usage}
    return Reply(200, body, {}, delay_s)


def error(status: int, message: str = "error", headers: Optional[dict] = None, delay_s: float = 0.0) -> Reply:
    """An OpenAI-style error response."""
    return Reply(status, {"error": {"message": message, "type": "test_error", "param": None, "code": None}},
                 headers or {}, delay_s)


def classify(body: dict) -> str:
    """'example' | 'qa' | 'topics' | 'unknown' — which schema the request asks for."""
    rf = body.get("response_format") or {}
    name = (rf.get("json_schema") or {}).get("name", "")
    text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
    for kind, title in (("example", "ExampleDraft"), ("qa", "QAVerdict"), ("topics", "TopicList")):
        if name == title or f'"title":"{title}"' in text:
            return kind
    return "unknown"


def user_text(body: dict) -> str:
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user")


def example_draft(decision: str, topic: str = "a topic", level: int = 1) -> dict:
    """A valid ExampleDraft for `decision`."""
    conf = {"VALIDATED": 0.9, "REJECTED": 0.8, "REFINED": 0.65}[decision]
    return {
        "hypothesis": f"Investing in {topic} improves quarterly margins for mid-size firms.",
        "evidence": [
            {"source": "2023 industry survey of 400 firms", "content": f"Firms that invested in {topic} saw "
             f"margins change by {'+4' if decision != 'REJECTED' else '-1'} points over two years.",
             "relevance": 0.9},
            {"source": "Internal pilot, 12 business units", "content": "Units in the pilot matched the survey "
             "result within one point" + (" but only when demand was stable." if decision == "REFINED" else "."),
             "relevance": 0.8},
        ],
        "expected_decision": decision,
        "confidence": conf,
        "refined_hypothesis": (f"Investing in {topic} improves margins when demand is stable."
                               if decision == "REFINED" else None),
    }


def qa_verdict(decision: str, accept: bool = True, reasons: Optional[list] = None) -> dict:
    return {"judged_decision": decision, "label_correct": accept, "difficulty_matches_level": True,
            "confidence_consistent": True, "evidence_realistic": True, "accept": accept,
            "reasons": reasons or []}


class LoopbackOpenAI:
    """The server. `url` is the base URL to give the client (http://127.0.0.1:PORT/v1)."""

    def __init__(self, smart: Optional[Callable[[str, dict, "LoopbackOpenAI"], Reply]] = None):
        self.requests: list[dict] = []
        self.queue: list[tuple[Optional[str], Reply]] = []
        self.fail_after: Optional[int] = None
        self.fail_reply: Reply = error(500, "server exploded")
        self.delay_s = 0.0
        self.smart = smart or smart_reply
        self.topic_counter = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def push(self, r: Reply, kind: Optional[str] = None) -> None:
        """Queue `r` for the next request of `kind` (any kind when None)."""
        with self.lock:
            self.queue.append((kind, r))

    def kinds(self) -> list[str]:
        return [r["kind"] for r in self.requests]

    def start(self) -> "LoopbackOpenAI":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _pick(self, kind: str, body: dict, headers: dict) -> tuple[dict, Reply]:
        record = {"kind": kind, "body": body, "headers": headers, "time": time.time(), "replied": None}
        with self.lock:
            self.requests.append(record)
            count = len(self.requests)
            for i, (k, r) in enumerate(self.queue):
                if k is None or k == kind:
                    del self.queue[i]
                    return record, r
            if self.fail_after is not None and count > self.fail_after:
                return record, self.fail_reply
        return record, self.smart(kind, body, self)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(error(404, f"no route {self.path}"))
                body = json.loads(raw or b"{}")
                kind = classify(body)
                record, r = server._pick(kind, body, {k.lower(): v for k, v in self.headers.items()})
                if r.delay_s or server.delay_s:
                    time.sleep(r.delay_s or server.delay_s)
                if self._send(r):
                    record["replied"] = time.time()

            def _send(self, r: Reply) -> bool:
                data = r.body if isinstance(r.body, str) else json.dumps(r.body)
                data = data.encode("utf-8")
                try:
                    self.send_response(r.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in r.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    return True
                except (BrokenPipeError, ConnectionResetError):
                    return False

        return Handler


def smart_reply(kind: str, body: dict, server: LoopbackOpenAI) -> Reply:
    """A competent model: a valid answer for whatever schema and cell the request asks for."""
    text = user_text(body)
    if kind == "example":
        m = re.search(r"Cell: domain=(\S+) level=(\d) decision=(\w+)", text)
        decision = m.group(3) if m else "VALIDATED"
        t = re.search(r"on the topic: (.+?)(?: — |\.\n)", text)
        return reply(json.dumps(example_draft(decision, t.group(1) if t else "a topic")))
    if kind == "qa":
        m = re.search(r'"expected_decision": "(\w+)"', text)
        return reply(json.dumps(qa_verdict(m.group(1) if m else "VALIDATED")))
    if kind == "topics":
        dm = re.search(r"Domain: (\S+)", text)
        km = re.search(r"Number of topics: (\d+)", text)
        domain, k = (dm.group(1) if dm else "x"), int(km.group(1) if km else 3)
        topics = []
        with server.lock:
            for _ in range(k):
                server.topic_counter += 1
                c = server.topic_counter
                topics.append({"title": f"{domain} subject number{c} alpha{c}", "description": f"About {c}."})
        return reply(json.dumps({"topics": topics}))
    return error(400, "unknown request")
