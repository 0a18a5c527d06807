"""The OpenAI-compatible judge server on 127.0.0.1, driven by the real `openai` client and by raw sockets.

Fast tests serve a tiny randomly initialised llama (with the embedded model's tokenizer and the judge's real
prompt) through the real continuous batch, and compare its answers against the engine and `Judge` called
directly; the slow test serves the embedded model."""

import concurrent.futures as cf
import http.client
import json
import random
import socket
import time
from urllib.parse import urlparse

import mlx.core as mx
import openai
import pytest

from mlxhv.data import synth_examples
from mlxhv.engine import GenerationSettings, generate
from mlxhv.errors import MlxhvError
from mlxhv.judge import Judge, JudgeSettings
from mlxhv.prompts import JSON_ANSWER_PREFIX, PromptConfig
from mlxhv.schema import Prediction
from mlxhv.serve import BadRequest, ServeSettings, parse_chat_request, serving
from mlxhv.serve_request import nesting_depth


def _content(example) -> str:
    return json.dumps({"hypothesis": example.hypothesis, "evidence": [e.model_dump() for e in example.evidence]})


def _body(content, **kw) -> dict:
    return {"model": "judge", "messages": [{"role": "system", "content": "ignored"},
                                           {"role": "user", "content": content}], **kw}


def _client(server, timeout=120):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=timeout)


def _ask(client, example, **kw):
    return client.chat.completions.create(model="judge", messages=[{"role": "user", "content": _content(example)}],
                                          **kw)


def _post_raw(base_url: str, data: bytes) -> tuple[int, dict]:
    u = urlparse(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        conn.request("POST", u.path + "/chat/completions", body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _raw_http(server, head: bytes, body: bytes = b"", timeout: float = 30) -> tuple[int, dict, bytes]:
    """Send bytes as they are over a fresh socket; (status, headers, body) of the reply."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(head)
        try:
            s.sendall(body)
        except (BrokenPipeError, ConnectionResetError):  # refused before the body: the reply is still there
            pass
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                top, rest = data.split(b"\r\n\r\n", 1)
                lines = top.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
                if len(rest) >= int(headers.get("content-length", 1 << 30)):
                    return int(lines[0].split()[1]), headers, rest
    raise AssertionError(f"no complete reply: {data[:200]!r}")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


@pytest.fixture(scope="module")
def tiny_judge(smollm_dir):
    """A 2-layer llama with random weights (an untied, scaled head so greedy answers vary), the embedded
    model's tokenizer and the judge's JSON answer prefix."""
    from mlx_lm.models import llama
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(smollm_dir)
    mx.random.seed(0)
    args = llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=49152,
                           tie_word_embeddings=False, max_position_embeddings=8192)
    model = llama.Model(args)
    model.lm_head.weight = model.lm_head.weight * 4
    mx.eval(model.parameters())
    return Judge(model, tok, PromptConfig(answer_prefix=JSON_ANSWER_PREFIX),
                 JudgeSettings(max_tokens=8, max_prompt_tokens=2000), name="tiny")


@pytest.fixture
def server(tiny_judge):
    with serving(tiny_judge, ServeSettings(port=0, max_batch=8, batch_wait_s=0.05)) as s:
        yield s


def _slow(seconds):
    return lambda: time.sleep(seconds)


# ------------------------------------------------------------------------------------------- parsing


def test_request_validation_messages():
    ex = synth_examples(1, seed=0)[0]
    good = parse_chat_request(_body(_content(ex), max_tokens=7, temperature=0, seed=3))
    assert good.item.hypothesis == ex.hypothesis and (good.max_tokens, good.temperature, good.seed) == (7, 0.0, 3)
    assert not good.structured and not good.stream
    assert parse_chat_request(_body(_content(ex), response_format={"type": "json_object"})).structured
    streamed = parse_chat_request(_body(_content(ex), stream=True, stream_options={"include_usage": True}))
    assert streamed.stream and streamed.include_usage
    deep = json.dumps({"hypothesis": "h", "evidence": [{"source": "s", "content": "c", "relevance": 1}],
                       "metadata": [[[[[[1]]]]]]})
    cases = [
        ([1, 2], "the request body must be a JSON object, got list"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages: no user message"),
        (_body("not json"), "messages[1].content: malformed JSON"),
        (_body(json.dumps({"evidence": [e.model_dump() for e in ex.evidence]})),
         "messages[1].content: hypothesis: Field required"),
        (_body(json.dumps({"hypothesis": "h", "evidence": "a study"})),
         "messages[1].content: evidence: Input should be a valid list"),
        (_body(_content(ex), stream="yes"), "stream must be true or false"),
        (_body(_content(ex), n=2), "n must be 1"),
        (_body(_content(ex), max_tokens=0), "max_tokens must be >= 1 and <= 4096, got 0"),
        (_body(_content(ex), max_tokens=10**9), "max_tokens must be >= 1 and <= 4096"),
        (_body(_content(ex), top_p=0), "top_p must be > 0.0 and <= 1.0, got 0"),
        (_body(_content(ex), temperature=float("nan")), "temperature must be >= 0.0"),
        (_body(_content(ex), seed=-1), "seed must be >= 0"),
        (_body(deep), "messages[1].content: JSON nested 7 levels deep; at most 6 are accepted"),
        (_body(_content(ex), response_format={"type": "json_schema", "json_schema": {"name": "Other"}}),
         "answers in the Prediction schema (mlxhv.schema.Prediction) only, not 'Other'"),
    ]
    for body, message in cases:
        with pytest.raises(BadRequest) as e:
            parse_chat_request(body, max_depth=6)
        assert message in e.value.message, (body, e.value.message)
        assert e.value.status == 400 and isinstance(e.value, MlxhvError)


def _depth_reference(x) -> int:
    if isinstance(x, dict):
        return 1 + max((_depth_reference(v) for v in x.values()), default=0)
    if isinstance(x, list):
        return 1 + max((_depth_reference(v) for v in x), default=0)
    return 0


def test_nesting_depth_against_a_recursive_reference():
    rng = random.Random(0)

    def make(d):
        if d == 0 or rng.random() < 0.2:
            return rng.choice([1, "a[{\"]}", None, "\\", 'x"]'])
        if rng.random() < 0.5:
            return [make(d - 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}{'{['[i % 2]}": make(d - 1) for i in range(rng.randint(0, 3))}

    for _ in range(200):
        x = make(rng.randint(0, 8))
        assert nesting_depth(json.dumps(x)) == _depth_reference(x), x
    assert nesting_depth(b"[" * 100_000) == 100_000


# ------------------------------------------------------------------------------------------- answers


def test_served_greedy_answers_equal_the_judge_and_rows_join_a_running_batch(tiny_judge, server):
    examples = synth_examples(8, seed=2)
    budgets = [3, 12, 5, 9, 2, 12, 7, 4]
    reference = [tiny_judge.run([e.id], [tiny_judge.encode(e, m)], tiny_judge.generation_settings(
        max_tokens=m))[0] for e, m in zip(examples, budgets)]
    client = _client(server)

    def ask(i):
        time.sleep(0.03 * i)  # staggered: later requests join the batch the earlier ones started
        return _ask(client, examples[i], max_tokens=budgets[i])

    with cf.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(8)))
    assert [r.choices[0].message.content for r in replies] == [p.raw for p in reference]
    assert [r.usage.completion_tokens for r in replies] == [p.completion_tokens for p in reference]
    assert [r.usage.prompt_tokens for r in replies] == [p.prompt_tokens for p in reference]
    assert [r.choices[0].finish_reason for r in replies] == ["length" if p.truncated else "stop" for p in reference]
    assert sum(server.scheduler.admissions) == 8 and max(server.scheduler.admissions) > 1

    parsed = client.chat.completions.parse(model="judge", response_format=Prediction,
                                           messages=[{"role": "user", "content": _content(examples[0])}],
                                           max_tokens=budgets[0])
    p = parsed.choices[0].message.parsed
    assert isinstance(p, Prediction) and p.raw == reference[0].raw and p.decision == reference[0].decision


def test_same_seed_same_answer_alone_and_in_a_busy_batch(tiny_judge, server):
    """A sampled request's answer depends on its seed only: alone, in a batch of 7 others with other settings,
    and as the engine gives it for that one prompt."""
    ex, others = synth_examples(1, seed=5)[0], synth_examples(8, seed=6)
    client = _client(server)
    want = dict(max_tokens=10, temperature=1.0, seed=7)
    alone = _ask(client, ex, **want).choices[0].message.content

    def busy(i):
        if i == 3:
            time.sleep(0.05)
            return _ask(client, ex, **want)
        return _ask(client, others[i], max_tokens=12, temperature=[0.0, 0.5, 1.3][i % 3], top_p=0.9, seed=i)

    with cf.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(busy, range(8)))
    prompt = tiny_judge.encode(ex, 10)
    direct, _ = generate(tiny_judge.model, tiny_judge.tokenizer, [prompt],
                         GenerationSettings(max_tokens=10, temperature=1.0, seed=7))
    assert replies[3].choices[0].message.content == alone == JSON_ANSWER_PREFIX + direct[0].text
    other_seed = _ask(client, ex, **{**want, "seed": 8}).choices[0].message.content
    assert other_seed != alone


def test_stream_sends_the_answer_as_it_decodes(tiny_judge, server):
    ex = synth_examples(1, seed=3)[0]
    client = _client(server)
    whole = _ask(client, ex, max_tokens=9)
    chunks = list(_ask(client, ex, max_tokens=9, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert JSON_ANSWER_PREFIX + text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 3  # token by token
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-2].model_extra["prediction"]["raw"] == whole.model_extra["prediction"]["raw"]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    with client.chat.completions.stream(model="judge", response_format=Prediction, max_tokens=9,
                                        messages=[{"role": "user", "content": _content(ex)}]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed.raw == whole.choices[0].message.content


def test_models_and_metrics(server):
    client = _client(server)
    assert client.models.list().data[0].id == "tiny"
    _ask(client, synth_examples(1, seed=1)[0], max_tokens=4)
    u = urlparse(server.base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain")
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values['mlxhv_requests_total{code="200"}'] >= 2
    assert values["mlxhv_queue_depth"] == 0 and values["mlxhv_running_rows"] == 0
    assert values["mlxhv_generated_tokens_total"] >= 1 and values["mlxhv_request_latency_seconds_count"] >= 1
    assert values['mlxhv_request_latency_seconds_bucket{le="+Inf"}'] == values["mlxhv_request_latency_seconds_count"]


# ------------------------------------------------------------------------------------------- hostile input


def test_hostile_inputs_get_4xx_and_the_server_keeps_serving(server):
    ex = synth_examples(1, seed=4)[0]
    good = json.dumps(_body(_content(ex), max_tokens=3)).encode()
    post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    limit = server.settings.max_body_bytes
    rss = _rss_mb()
    cases = [
        ("Content-Length -1", post + b"Content-Length: -1\r\n\r\n", b"x" * (2 << 20), 400, "non-negative integer"),
        ("Content-Length not a number", post + b"Content-Length: ten\r\n\r\n", b"{}", 400, "non-negative integer"),
        ("Content-Length 1e3", post + b"Content-Length: 1e3\r\n\r\n", b"{}", 400, "non-negative integer"),
        ("two Content-Lengths", post + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n", b"{}", 400,
         "one non-negative integer"),
        ("over the limit", post + f"Content-Length: {limit + 1}\r\n\r\n".encode(), b"", 413, "over the limit"),
        ("huge Content-Length", post + b"Content-Length: 99999999999999999999999\r\n\r\n", b"", 400,
         "non-negative integer"),
        ("no Content-Length", post + b"\r\n", b"", 411, "Content-Length header is required"),
        ("chunked", post + b"Transfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", 411, "chunked"),
        ("100,000 nested brackets", post + b"Content-Length: 100000\r\n\r\n", b"[" * 100_000, 400,
         "nested 100000 levels deep"),
        ("deep nesting in the input", post,
         None, 400, "messages[0].content: JSON nested"),
        ("not UTF-8", post + b"Content-Length: 4\r\n\r\n", b"\xff\xfe{}", 400, "not valid UTF-8"),
        ("unknown route", b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n", b"{}", 404, "no route"),
        ("bad method", b"DELETE /v1/chat/completions HTTP/1.1\r\n\r\n", b"", 405, "not allowed"),
        ("garbage request line", b"\x00\x01 nonsense\r\n\r\n", b"", 400, ""),
    ]
    for name, head, body, status, message in cases:
        if body is None:  # an input whose own JSON is 10,000 levels deep, inside a well-formed body
            content = json.dumps({"hypothesis": "h", "evidence": [], "metadata": "x"}).replace('"x"', "[" * 10_000 +
                                                                                                "]" * 10_000)
            body = json.dumps({"messages": [{"role": "user", "content": content}]}).encode()
            head = head + f"Content-Length: {len(body)}\r\n\r\n".encode()
        got, headers, raw = _raw_http(server, head, body)
        err = json.loads(raw)["error"]
        assert got == status and message in err["message"], (name, got, err)
        assert err["type"] == "invalid_request_error" and headers["content-type"] == "application/json", name
    assert _rss_mb() - rss < 64
    got, _, raw = _raw_http(server, post + f"Content-Length: {len(good)}\r\n\r\n".encode(), good)
    assert got == 200 and json.loads(raw)["usage"]["completion_tokens"] >= 1


# ------------------------------------------------------------------------------------------- limits


def test_full_queue_gets_429_and_too_many_connections_503(tiny_judge):
    ex = synth_examples(1, seed=8)[0]
    settings = ServeSettings(port=0, max_batch=1, max_queue=1, max_connections=3, batch_wait_s=0)
    with serving(tiny_judge, settings, step_hook=_slow(0.05)) as server:
        client = _client(server)
        with cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(_ask, client, ex, max_tokens=20)
            time.sleep(0.3)  # decoding now: the next request waits in the queue
            second = pool.submit(_ask, client, ex, max_tokens=2)
            time.sleep(0.2)
            with pytest.raises(openai.RateLimitError) as e:
                _ask(client, ex, max_tokens=2)
            assert e.value.response.headers["retry-after"] == "1" and "busy" in e.value.message
            assert first.result().usage.completion_tokens >= 1 and second.result().usage.completion_tokens >= 1
        host, port = server.server_address[:2]
        idle = [socket.create_connection((host, port)) for _ in range(3)]  # hold every connection slot
        try:
            time.sleep(0.2)
            got, headers, raw = _raw_http(server, b"GET /health HTTP/1.1\r\n\r\n")
            assert got == 503 and headers["retry-after"] == "1" and "limit of 3 connections" in raw.decode()
        finally:
            for s in idle:
                s.close()
        time.sleep(0.3)
        assert _ask(client, ex, max_tokens=2).usage.completion_tokens >= 1


def test_timeout_and_disconnect_take_the_row_out_of_the_batch(tiny_judge):
    ex = synth_examples(1, seed=9)[0]
    settings = ServeSettings(port=0, max_batch=4, request_timeout_s=0.6, batch_wait_s=0)
    with serving(tiny_judge, settings, step_hook=_slow(0.05)) as server:
        client = _client(server)
        t = time.monotonic()
        with pytest.raises(openai.APIStatusError) as e:
            _ask(client, ex, max_tokens=400)  # 400 steps of 50 ms: far past the timeout
        assert e.value.status_code == 504 and time.monotonic() - t < 3
        time.sleep(0.3)
        assert server.scheduler.running == 0

        body = json.dumps(_body(_content(ex), max_tokens=400)).encode()
        host, port = server.server_address[:2]
        s = socket.create_connection((host, port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 5
        while server.scheduler.running == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.scheduler.running == 1
        s.close()  # the client goes away: its row leaves within a few steps, not after 400
        deadline = time.monotonic() + 3
        while server.scheduler.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.scheduler.running == 0
        assert _ask(client, ex, max_tokens=2).usage.completion_tokens >= 1


def test_drain_answers_requests_in_flight_and_refuses_new_ones(tiny_judge):
    ex = synth_examples(1, seed=10)[0]
    with serving(tiny_judge, ServeSettings(port=0, batch_wait_s=0), step_hook=_slow(0.03)) as server:
        client = _client(server)
        with cf.ThreadPoolExecutor(3) as pool:
            flying = [pool.submit(_ask, client, ex, max_tokens=15) for _ in range(2)]
            time.sleep(0.3)
            draining = pool.submit(server.drain, 30)
            time.sleep(0.1)
            status, body = _post_raw(server.base_url, json.dumps(_body(_content(ex))).encode())
            assert status == 503 and "shutting down" in body["error"]["message"]
            assert draining.result() is True
            assert all(f.result().usage.completion_tokens >= 1 for f in flying)


@pytest.mark.slow
def test_embedded_model_server(smollm):
    """The embedded SmolLM2 behind the server: the same decisions as the Judge library call, 8 concurrent clients,
    bad requests refused, and a good request after them."""
    model, tokenizer = smollm
    judge = Judge(model, tokenizer, PromptConfig(answer_prefix=JSON_ANSWER_PREFIX), JudgeSettings(max_tokens=3),
                  name="smollm2-135m")
    examples = synth_examples(8, seed=9)
    reference = {p.id: p for p in judge.judge_many([{"id": e.id, "hypothesis": e.hypothesis,
                                                      "evidence": e.evidence} for e in examples])}
    with serving(judge, ServeSettings(port=0, max_batch=8)) as server:
        client = _client(server, timeout=600)

        def ask(ex):
            msg = json.dumps({"id": ex.id, **json.loads(_content(ex))})
            return client.chat.completions.parse(model="judge", response_format=Prediction,
                                                 messages=[{"role": "user", "content": msg}])

        with cf.ThreadPoolExecutor(8) as pool:
            answers = [x.choices[0].message.parsed for x in pool.map(ask, examples)]
        assert [a.id for a in answers] == [e.id for e in examples]
        assert [a.raw for a in answers] == [reference[e.id].raw for e in examples]
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="judge", messages=[{"role": "user", "content": json.dumps(
                {"hypothesis": "h", "evidence": [{"source": "s", "content": "word " * 9000, "relevance": 1}]})}])
        assert "exceeds the model's context of 8192 tokens" in e.value.message
        r = _ask(client, examples[3])
        assert r.model_extra["prediction"]["decision"] == reference[examples[3].id].decision
