"""The OpenAI-compatible judge server on 127.0.0.1, driven by the real `openai` client.

Fast tests run the real server, tokenizer and prompt with a scripted engine (`generate_fn`), so the HTTP,
batching and error paths are checked without model compute; the slow test serves the embedded model."""

import concurrent.futures as cf
import http.client
import json
import threading
import time
from urllib.parse import urlparse

import openai
import pytest

from mlxhv.data import synth_examples
from mlxhv.engine import Completion, GenerationStats
from mlxhv.judge import Judge, JudgeSettings
from mlxhv.prompts import JSON_ANSWER_PREFIX, PromptConfig
from mlxhv.schema import Prediction
from mlxhv.serve import BadRequest, ServeSettings, parse_chat_request, serving

ANSWER = 'REFINED", "confidence": 0.75, "refined_hypothesis": "Holds for large firms only."}'


def _content(example) -> str:
    return json.dumps({"hypothesis": example.hypothesis, "evidence": [e.model_dump() for e in example.evidence]})


def _body(content, **kw) -> dict:
    return {"model": "judge", "messages": [{"role": "system", "content": "ignored"},
                                           {"role": "user", "content": content}], **kw}


def _post_raw(base_url: str, data: bytes) -> tuple[int, dict]:
    u = urlparse(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        conn.request("POST", u.path + "/chat/completions", body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


class ScriptedEngine:
    """`engine.generate`'s signature; answers ANSWER for every prompt after `delay_s`, recording each call."""

    def __init__(self, delay_s: float = 0.3):
        self.delay_s, self.calls, self.lock = delay_s, [], threading.Lock()

    def __call__(self, model, tokenizer, prompts, settings, progress=False, on_batch=None):
        with self.lock:
            self.calls.append((len(prompts), settings))
        time.sleep(self.delay_s)
        toks = list(tokenizer.encode(ANSWER, add_special_tokens=False))
        comps = [Completion(ANSWER, toks, [0.0] * len(toks), "stop", len(p)) for p in prompts]
        if on_batch is not None:
            on_batch(list(range(len(prompts))), comps)
        return comps, GenerationStats()


@pytest.fixture(scope="module")
def tokenizer(smollm_dir):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(smollm_dir)


@pytest.fixture
def scripted(tokenizer):
    engine = ScriptedEngine()
    judge = Judge(None, tokenizer, PromptConfig(answer_prefix=JSON_ANSWER_PREFIX),
                  JudgeSettings(max_tokens=32, max_prompt_tokens=2000), name="smollm2-135m", generate_fn=engine)
    with serving(judge, ServeSettings(port=0, max_batch=8, batch_wait_s=0.05)) as server:
        yield server, engine


def test_request_validation_messages():
    ex = synth_examples(1, seed=0)[0]
    good = parse_chat_request(_body(_content(ex), max_tokens=7, temperature=0))
    assert good.item.hypothesis == ex.hypothesis and dict(good.overrides) == {"max_tokens": 7, "temperature": 0.0}
    assert not good.structured
    assert parse_chat_request(_body(_content(ex), response_format={"type": "json_object"})).structured
    cases = [
        ([1, 2], "the request body must be a JSON object, got list"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages: no user message"),
        (_body("not json"), "messages[1].content: malformed JSON"),
        (_body(json.dumps({"evidence": [e.model_dump() for e in ex.evidence]})),
         "messages[1].content: hypothesis: Field required"),
        (_body(json.dumps({"hypothesis": "h", "evidence": "a study"})),
         "messages[1].content: evidence: Input should be a valid list"),
        (_body(_content(ex), stream=True), "stream is not supported"),
        (_body(_content(ex), n=2), "n must be 1"),
        (_body(_content(ex), max_tokens=0), "max_tokens must be >= 1, got 0"),
        (_body(_content(ex), top_p=0), "top_p must be > 0.0 and <= 1.0, got 0"),
        (_body(_content(ex), response_format={"type": "json_schema", "json_schema": {"name": "Other"}}),
         "answers in the Prediction schema (mlxhv.schema.Prediction) only, not 'Other'"),
    ]
    for body, message in cases:
        with pytest.raises(BadRequest) as e:
            parse_chat_request(body)
        assert message in e.value.message, (body, e.value.message)
        assert e.value.status == 400


def test_scripted_server_openai_client(scripted):
    server, engine = scripted
    examples = synth_examples(8, seed=2)
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)

    r = client.chat.completions.create(model="judge", messages=[{"role": "user", "content": _content(examples[0])}],
                                       max_tokens=9)
    assert r.choices[0].message.content == JSON_ANSWER_PREFIX + ANSWER and r.choices[0].finish_reason == "stop"
    assert r.model_extra["prediction"]["decision"] == "REFINED" and r.usage.prompt_tokens > 100
    assert engine.calls[-1][1].max_tokens == 9  # the request's budget reached the engine

    parsed = client.chat.completions.parse(model="judge", response_format=Prediction,
                                           messages=[{"role": "user", "content": _content(examples[1])}])
    p = parsed.choices[0].message.parsed
    assert isinstance(p, Prediction) and (p.decision, p.confidence) == ("REFINED", 0.75)
    assert p.refined_hypothesis == "Holds for large firms only." and p.raw == JSON_ANSWER_PREFIX + ANSWER

    # 8 concurrent clients: all answered, in fewer engine calls than requests
    engine.calls.clear()
    with cf.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda ex: client.chat.completions.create(
            model="judge", messages=[{"role": "user", "content": _content(ex)}]), examples))
    assert [x.model_extra["prediction"]["decision"] for x in replies] == ["REFINED"] * 8
    sizes = [n for n, _ in engine.calls]
    assert sum(sizes) == 8 and len(sizes) < 8 and max(sizes) > 1, sizes
    assert server.batcher.batches[-len(sizes):] == sizes


def test_bad_requests_get_400_and_the_server_keeps_serving(scripted):
    server, engine = scripted
    ex = synth_examples(1, seed=4)[0]
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)

    status, body = _post_raw(server.base_url, b'{"model": "judge", "messages": [')
    assert status == 400 and body["error"]["message"].startswith("malformed JSON in the request body")
    bad = {
        "missing hypothesis": (json.dumps({"evidence": [e.model_dump() for e in ex.evidence]}),
                               "hypothesis: Field required"),
        "evidence not a list": (json.dumps({"hypothesis": ex.hypothesis, "evidence": {"source": "x"}}),
                                "evidence: Input should be a valid list"),
        "oversize prompt": (json.dumps({"hypothesis": ex.hypothesis, "evidence": [
            {"source": "dump", "content": "margins rose " * 1500, "relevance": 0.4}]}),
            "longer than max_prompt_tokens 2000"),
    }
    for name, (content, message) in bad.items():
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="judge", messages=[{"role": "user", "content": content}])
        assert e.value.status_code == 400 and message in e.value.message, (name, e.value.message)
    n_calls = len(engine.calls)
    r = client.chat.completions.create(model="judge", messages=[{"role": "user", "content": _content(ex)}])
    assert r.model_extra["prediction"]["decision"] == "REFINED" and len(engine.calls) == n_calls + 1
    assert client.models.list().data[0].id == "smollm2-135m"


@pytest.mark.slow
def test_embedded_model_server(smollm, tmp_path):
    """The embedded SmolLM2 behind the server: the same decisions as the Judge library call, 8 concurrent clients,
    every bad request a 400, and a good request after them."""
    model, tokenizer = smollm
    judge = Judge(model, tokenizer, PromptConfig(answer_prefix=JSON_ANSWER_PREFIX), JudgeSettings(max_tokens=3),
                  name="smollm2-135m")
    examples = synth_examples(8, seed=9)
    reference = {p.id: p for p in judge.judge_many([{"id": e.id, "hypothesis": e.hypothesis,
                                                      "evidence": e.evidence} for e in examples])}
    with serving(judge, ServeSettings(port=0, max_batch=8)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=600)
        r = client.chat.completions.create(model="judge", messages=[{"role": "user", "content": _content(examples[0])}])
        assert r.choices[0].message.content.startswith(JSON_ANSWER_PREFIX)
        assert r.model_extra["prediction"]["decision"] == reference[examples[0].id].decision
        parsed = client.chat.completions.parse(model="judge", response_format=Prediction,
                                               messages=[{"role": "user", "content": _content(examples[1])}])
        assert parsed.choices[0].message.parsed.decision == reference[examples[1].id].decision

        def ask(ex):
            msg = json.dumps({"id": ex.id, **json.loads(_content(ex))})
            return client.chat.completions.parse(model="judge", response_format=Prediction,
                                                 messages=[{"role": "user", "content": msg}])

        with cf.ThreadPoolExecutor(8) as pool:
            answers = [x.choices[0].message.parsed for x in pool.map(ask, examples)]
        assert [a.id for a in answers] == [e.id for e in examples]
        assert [a.decision for a in answers] == [reference[e.id].decision for e in examples]
        assert max(server.batcher.batches) > 1, server.batcher.batches

        status, body = _post_raw(server.base_url, b"{not json")
        assert status == 400 and "malformed JSON" in body["error"]["message"]
        for content, message in [
            (json.dumps({"evidence": [e.model_dump() for e in examples[2].evidence]}), "hypothesis: Field required"),
            (json.dumps({"hypothesis": "h", "evidence": "x"}), "evidence: Input should be a valid list"),
            (json.dumps({"hypothesis": "h", "evidence": [{"source": "s", "content": "word " * 9000,
                                                          "relevance": 1}]}),
             "exceeds the model's context of 8192 tokens"),
        ]:
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="judge", messages=[{"role": "user", "content": content}])
            assert message in e.value.message
        r = client.chat.completions.create(model="judge", messages=[{"role": "user", "content": _content(examples[3])}])
        assert r.model_extra["prediction"]["decision"] == reference[examples[3].id].decision
