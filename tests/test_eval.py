"""The evaluator's files, resume after a kill, settings guard, and the compare CLI — with a stub engine."""

import json
import math
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner

from mlxhv.cli import main
from mlxhv.data import synth_examples
from mlxhv.eval import EvalError, EvalSettings, evaluate, format_compare, generation_preset, read_predictions, verdict
from mlxhv.eval.report import NOT_NEEDED, WORTH
from mlxhv.errors import SettingsError
from tests.test_prompts import FakeTokenizer


@dataclass
class FakeCompletion:
    text: str
    tokens: list
    logprobs: list = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0


@dataclass
class FakeStats:
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float = 100.0
    generation_tps: float = 10.0
    wall_s: float = 1.0
    peak_memory_gb: float = 0.5


class Killed(Exception):
    pass


class StubEngine:
    """generate(): batches in reverse order (like a length sort would), answers chosen from the prompt length;
    raises Killed after `kill_after` batches, having streamed them."""

    ANSWERS = ['{"decision": "VALIDATED", "confidence": 0.9}', 'REJECTED, confidence 0.6',
               '{"decision": "REFINED", "confidence": 0.7, "refined_hypothesis": "x"}', "no idea"]

    def __init__(self, kill_after=None):
        self.kill_after = kill_after
        self.asked = []

    def __call__(self, model, tokenizer, prompts, settings, progress=False, on_batch=None):
        self.asked.append(len(prompts))
        order = list(range(len(prompts)))[::-1]
        out = [None] * len(prompts)
        for b, start in enumerate(range(0, len(order), settings.batch_size)):
            if self.kill_after is not None and b == self.kill_after:
                raise Killed()
            idx = order[start:start + settings.batch_size]
            comps = []
            for i in idx:
                text = self.ANSWERS[len(prompts[i]) % 4]
                comps.append(FakeCompletion(text, list(range(len(text) // 4)), prompt_tokens=len(prompts[i]),
                                            finish_reason="length" if text == "no idea" else "stop"))
            for i, c in zip(idx, comps):
                out[i] = c
            if on_batch:
                on_batch(idx, comps)
        n_gen = sum(len(c.tokens) for c in out)
        return out, FakeStats(sum(len(p) for p in prompts), n_gen)


def _settings(**kw):
    return EvalSettings(model="stub", batch_size=3, progress=False, **kw)


def test_presets():
    assert generation_preset("qwq-32b") == {"temperature": 0.6, "top_p": 0.95, "max_tokens": 8192}
    assert generation_preset("mlx-community/QwQ-32B-4bit")["temperature"] == 0.6
    assert generation_preset("smollm2-135m") == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 256}
    s = EvalSettings(model="qwq-32b", max_tokens=1000).resolved()
    assert (s.max_tokens, s.temperature, s.top_p) == (1000, 0.6, 0.95)  # overrides win


def test_in_memory_run():
    exs = synth_examples(7, seed=1)
    run = evaluate(None, FakeTokenizer(), exs, _settings(), generate_fn=StubEngine())
    assert [p.id for p in run.predictions] == [e.id for e in exs]
    assert run.out_dir is None and run.metrics["n"] == 7 and run.metrics["n_timed"] == 7


def test_resume_after_kill_gives_one_prediction_per_example(tmp_path):
    exs = synth_examples(10, seed=0)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        evaluate(None, FakeTokenizer(), exs, _settings(), out_dir=out, generate_fn=StubEngine(kill_after=2))
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 6  # two batches of 3 were streamed before the kill
    assert not (out / "metrics.json").exists()
    with open(out / "predictions.jsonl", "a") as f:  # a kill in the middle of a write leaves half a line
        f.write('{"id": "' + exs[0].id + '", "decis')

    engine = StubEngine()
    run = evaluate(None, FakeTokenizer(), exs, _settings(), out_dir=out, generate_fn=engine)
    assert engine.asked == [4]  # only the missing examples were generated
    ids = [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(e.id for e in exs) and len(ids) == 10
    assert [p.id for p in run.predictions] == [e.id for e in exs]
    for name in ("metrics.json", "report.md", "reliability.png", "run.json", "sessions.jsonl"):
        assert (out / name).exists(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 10 and m["n_missing"] == 0 and m["n_timed"] == 4

    # a third run has nothing to do and rewrites the same metrics
    engine = StubEngine()
    run2 = evaluate(None, FakeTokenizer(), exs, _settings(), out_dir=out, generate_fn=engine)
    assert engine.asked == [] and run2.metrics["accuracy"] == m["accuracy"]
    assert len(read_predictions(out / "predictions.jsonl")) == 10


def test_prediction_fields(tmp_path):
    exs = synth_examples(8, seed=2)
    run = evaluate(None, FakeTokenizer(), exs, _settings(), out_dir=tmp_path, generate_fn=StubEngine())
    by_raw = {p.raw: p for p in run.predictions}
    if "no idea" in by_raw:
        p = by_raw["no idea"]
        assert p.decision == "INVALID" and p.truncated and p.confidence is None
    for p in run.predictions:
        assert p.prompt_tokens > 0 and p.completion_tokens == len(p.raw) // 4 and p.latency_s >= 0
    report = (tmp_path / "report.md").read_text()
    assert "## Per class" in report and "## By difficulty level" in report and "verdict" in report


def test_limit_and_settings_guard(tmp_path):
    exs = synth_examples(6, seed=0)
    run = evaluate(None, FakeTokenizer(), exs, _settings(limit=4), out_dir=tmp_path, generate_fn=StubEngine())
    assert run.metrics["n"] == 4 and run.metrics["n_examples"] == 4
    with pytest.raises(EvalError, match="max_tokens: 256 there, 99 now"):
        evaluate(None, FakeTokenizer(), exs, _settings(max_tokens=99), out_dir=tmp_path, generate_fn=StubEngine())
    engine = StubEngine()
    run = evaluate(None, FakeTokenizer(), exs, _settings(max_tokens=99, restart=True), out_dir=tmp_path,
                   generate_fn=engine)
    assert engine.asked == [6] and run.metrics["n"] == 6
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 6


def test_verdict_and_compare(tmp_path):
    assert verdict(0.84) == WORTH and verdict(0.85) == NOT_NEEDED and verdict(None) == WORTH
    assert verdict(0.9, threshold=0.95) == WORTH
    exs = synth_examples(9, seed=4)
    for name in ("a", "b"):
        evaluate(None, FakeTokenizer(), exs, _settings(), out_dir=tmp_path / name, generate_fn=StubEngine())
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    out = result.output
    for needle in ("| accuracy |", "VALIDATED", "**accuracy by level**", "**accuracy by domain**",
                   "generation tok/s", "Verdict: RL is worth pursuing"):
        assert needle in out, needle
    assert out.splitlines()[0].startswith("|  | a | b |")
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "a"), "--threshold", "0.01"])
    assert "Verdict: not needed" in result.output
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "metrics.json: no such file" in result.output


def test_mcnemar_exact_and_paired_compare(tmp_path):
    from mlxhv.eval.metrics import mcnemar_exact, paired_outcomes

    assert mcnemar_exact(0, 8) == 2 / 256 and mcnemar_exact(8, 0) == 2 / 256
    assert mcnemar_exact(1, 5) == pytest.approx(2 * (1 + 6) / 64)  # C(6, 0) + C(6, 1)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    po = paired_outcomes({"a": True, "b": False, "c": False, "d": True}, {"a": True, "b": True, "c": False, "x": True})
    assert po == {"n": 3, "both": 1, "a_only": 0, "b_only": 1, "neither": 1, "p_value": 1.0}
    exs = synth_examples(9, seed=4)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(e.model_dump_json() + "\n" for e in exs))
    for name in ("a", "b"):
        evaluate(None, FakeTokenizer(), exs, _settings(), out_dir=tmp_path / name, generate_fn=StubEngine())
    lines = (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()
    flipped = json.loads(lines[0])  # make run b wrong on its first example
    gold = {e.id: e.expected_decision.value for e in exs}
    was_right = flipped["decision"] == gold[flipped["id"]]
    flipped["decision"] = next(d for d in ("VALIDATED", "REJECTED") if d != gold[flipped["id"]])
    (tmp_path / "b" / "predictions.jsonl").write_text("\n".join([json.dumps(flipped)] + lines[1:]) + "\n")
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(data)])
    assert result.exit_code == 0, result.output
    expect = f"only in b 0, only in a {int(was_right)}"
    assert "9 common examples" in result.output and expect in result.output, result.output


def test_format_compare_without_accuracy():
    assert "no run has an accuracy" in format_compare([("x", {"accuracy": None})])


def test_subset_follows_the_mix_and_is_deterministic():
    from collections import Counter

    from mlxhv.eval.evaluator import subset

    exs = synth_examples(60, seed=5)
    assert subset(exs, None) == exs and subset(exs, 60) == exs and subset(exs, 0) == []
    sub = subset(exs, 12)
    assert len(sub) == 12 and sub == subset(exs, 12) and len({e.id for e in sub}) == 12
    pos = {e.id: i for i, e in enumerate(exs)}
    assert [pos[e.id] for e in sub] == sorted(pos[e.id] for e in sub)  # file order kept
    for attr in (lambda e: e.metadata.domain, lambda e: e.expected_decision.value,
                 lambda e: e.metadata.difficulty_level):
        full, part = Counter(map(attr, exs)), Counter(map(attr, sub))
        assert set(part) == set(full)  # every value is in
        for v in full:  # and each within one of its proportional share
            assert abs(part[v] - 12 * full[v] / 60) <= 1.0 + 1e-9, (v, part[v], full[v])
    with pytest.raises(EvalError):
        subset(exs, -1)


class PrefixEngine:
    """Continues a JSON answer prefix: REJECTED at 0.4 for every prompt; remembers the prompts it saw."""

    def __call__(self, model, tokenizer, prompts, settings, progress=False, on_batch=None):
        self.prompts = prompts
        comps = [FakeCompletion('REJECTED", "confidence": 0.4}', [1, 2, 3], prompt_tokens=len(p)) for p in prompts]
        if on_batch:
            on_batch(list(range(len(prompts))), comps)
        return comps, FakeStats(sum(len(p) for p in prompts), 3 * len(prompts))


def test_answer_prefix_is_prompted_parsed_and_guarded(tmp_path):
    exs = synth_examples(4, seed=0)
    engine = PrefixEngine()
    run = evaluate(None, FakeTokenizer(), exs, _settings(answer_prefix="json"), out_dir=tmp_path, generate_fn=engine)
    prefix = '{"decision": "'
    assert all(FakeTokenizer().decode(p).endswith("<|assistant|>" + prefix) for p in engine.prompts)
    assert [(p.decision, p.confidence) for p in run.predictions] == [("REJECTED", 0.4)] * 4
    assert all(p.raw == prefix + 'REJECTED", "confidence": 0.4}' for p in run.predictions)
    gold_rejected = sum(e.expected_decision.value == "REJECTED" for e in exs)
    assert run.metrics["accuracy"] == gold_rejected / 4 and run.metrics["parse_failure_rate"] == 0.0
    with pytest.raises(EvalError, match="answer_prefix"):  # a run in tmp_path was made with the prefix
        evaluate(None, FakeTokenizer(), exs, _settings(), out_dir=tmp_path, generate_fn=engine)
    with pytest.raises(EvalError, match="think"):
        evaluate(None, FakeTokenizer(think=True), exs, _settings(answer_prefix="json"), generate_fn=engine)


def test_system_prompt_file_is_used_and_guarded(tmp_path):
    exs = synth_examples(2, seed=0)
    variant = tmp_path / "prompt.txt"
    variant.write_text("Judge it. Answer in JSON.\n")
    engine = PrefixEngine()
    out = tmp_path / "run"
    evaluate(None, FakeTokenizer(), exs, _settings(system_prompt_file=str(variant)), out_dir=out, generate_fn=engine)
    assert all(FakeTokenizer().decode(p).startswith("<|system|>Judge it. Answer in JSON.<|user|>")
               for p in engine.prompts)
    variant.write_text("Another prompt.")  # same file name, other text: the prompt hash tells them apart
    with pytest.raises(EvalError, match="prompt_sha"):
        evaluate(None, FakeTokenizer(), exs, _settings(system_prompt_file=str(variant)), out_dir=out,
                 generate_fn=engine)
    with pytest.raises(SettingsError, match="not found"):
        _settings(system_prompt_file=str(tmp_path / "missing.txt")).run_info()


# --------------------------------------------------------------------------- decision-token probability (stubs)


class ChunkTokenizer:
    """Tokens are whole strings of a fixed vocabulary, so a token can straddle a word's edge."""

    def __init__(self, vocab):
        self.vocab = list(vocab)

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def test_decision_span_rules():
    from mlxhv.answer import decision_span

    assert decision_span('VALIDATED", "confidence": 0.9}', "VALIDATED", at_start=True) == (0, 9)
    assert decision_span(' validated"}', "VALIDATED", at_start=True) == (1, 10)
    text = 'Let me weigh it. REJECTED? No. {"decision": "REFINED", "confidence": 0.6}'
    assert decision_span(text, "REFINED", at_start=True) == (text.index("REFINED"), text.index("REFINED") + 7)
    text = '{"decision": "REJECTED"} and later the decision VALIDATED'
    assert decision_span(text, "REJECTED") == (14, 22)  # the keyed word that names the parsed decision
    text = "It is REJECTED, I think. Then again REJECTED. Confidence 0.7"
    assert decision_span(text, "REJECTED") == (36, 44)  # no key: the last word naming it
    assert decision_span("decision: VALID", "VALIDATED") == (10, 15)  # an alias the parser accepts
    assert decision_span("no answer", "REJECTED") is None
    assert decision_span('REJECTED"}', "INVALID", at_start=True) is None


def test_decision_prob_sums_the_tokens_that_spell_the_word():
    from mlxhv.answer import decision_prob, token_range

    tok = FakeTokenizer()  # one token per character
    text = 'REJECTED", "confidence": 0.4}'
    ids = tok.encode(text)
    lps = [-0.01 * (k + 1) if k < 8 else -2.0 for k in range(len(ids))]
    assert decision_prob(tok, ids, lps, "REJECTED", answer_prefix='{"decision": "') == pytest.approx(
        math.exp(-0.01 * sum(range(1, 9))))
    assert decision_prob(tok, ids, lps, "INVALID", '{"decision": "') is None
    assert decision_prob(tok, ids, [], "REJECTED", '{"decision": "') is None  # no log-probs (a stub engine)

    vocab = ["I think", ' {"decision": "', "REJ", 'ECTED",', ' "confidence": 0.', "4}", "REJECTED"]
    chunks = ChunkTokenizer(vocab)
    ids = [0, 1, 2, 3, 4, 5]
    assert token_range(chunks, ids, 22, 30) == (2, 4)  # "REJ" + 'ECTED",' cover characters 22-30
    lps = [-1.0, -0.5, -0.2, -0.1, -3.0, -0.05]
    assert decision_prob(chunks, ids, lps, "REJECTED") == pytest.approx(math.exp(-0.3))
    assert decision_prob(chunks, [6, 5], [-0.7, -0.1], "REJECTED", answer_prefix="x") == pytest.approx(
        math.exp(-0.7))


class TokenEngine:
    """Continues the JSON prefix with REJECTED, one token per character (FakeTokenizer), each letter of the
    decision word at log-prob -0.05 and the rest at -1; remembers its settings and prompts."""

    TEXT = 'REJECTED", "confidence": 0.4}'

    def __call__(self, model, tokenizer, prompts, settings, progress=False, on_batch=None):
        self.settings, self.prompts = settings, prompts
        ids = tokenizer.encode(self.TEXT)
        lps = [-0.05 if k < 8 else -1.0 for k in range(len(ids))]
        comps = [FakeCompletion(self.TEXT, ids, lps, prompt_tokens=len(p)) for p in prompts]
        if on_batch:
            on_batch(list(range(len(prompts))), comps)
        return comps, FakeStats(sum(len(p) for p in prompts), len(ids) * len(prompts))


def test_decision_prob_is_stored_and_scored(tmp_path):
    exs = synth_examples(6, seed=3)
    run = evaluate(None, FakeTokenizer(), exs, _settings(answer_prefix="json"), out_dir=tmp_path,
                   generate_fn=TokenEngine())
    q = math.exp(-0.4)
    saved = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [x["decision_prob"] for x in saved] == [pytest.approx(q)] * 6
    m = json.loads((tmp_path / "metrics.json").read_text())
    acc = sum(e.expected_decision.value == "REJECTED" for e in exs) / 6
    # one bin holds every example: |acc − q| for the token probability, |acc − 0.4| for the stated confidence
    assert m["ece_token"] == pytest.approx(abs(acc - q)) and m["ece"] == pytest.approx(abs(acc - 0.4))
    assert m["n_token"] == 6 and m["by_predicted_class"]["REJECTED"]["n"] == 6
    report = (tmp_path / "report.md").read_text()
    assert "## Calibration per predicted class" in report and "Better calibrated" in report
    assert "AUROC, decision-token prob" in report
    assert run.predictions[0].decision_prob == pytest.approx(q)
    # the returned confidence is the decision-token probability; the stated 0.4 is kept beside it
    assert [x["confidence"] for x in saved] == [pytest.approx(q)] * 6
    assert {(x["stated_confidence"], x["confidence_source"]) for x in saved} == {(0.4, "decision_prob")}
    assert m["ece_returned"] == pytest.approx(abs(acc - q))


def test_returned_confidence_falls_back_to_the_stated_one_and_reads_old_files():
    from mlxhv.answer import completion_prediction
    from mlxhv.schema import Prediction

    comp = FakeCompletion('REJECTED", "confidence": 0.4}', [1, 2, 3], prompt_tokens=5)  # no log-probs
    p = completion_prediction("a", comp, answer_prefix='{"decision": "', tokenizer=FakeTokenizer())
    assert (p.confidence, p.stated_confidence, p.confidence_source, p.stated) == (0.4, 0.4, "stated", 0.4)
    old = Prediction.model_validate({"id": "a", "decision": "REJECTED", "confidence": 0.8, "decision_prob": 0.6})
    assert old.stated == 0.8  # a file written before confidence_source held the stated number as confidence


# ------------------------------------------------------------------------------- adapter prompt settings


def _adapter(tmp_path, **kw):
    from mlxhv.prompts import PromptConfig, write_prompt_config

    d = tmp_path / "adapter"
    d.mkdir(exist_ok=True)
    write_prompt_config(d, PromptConfig(**kw))
    return d


def test_adapter_prompt_settings_apply_unless_set(tmp_path):
    from mlxhv.prompts import prompt_sha

    exs = synth_examples(3, seed=1)
    adapter = _adapter(tmp_path, system_prompt="Adapter prompt.", answer_prefix='{"decision": "', max_tokens=7)
    engine = TokenEngine()
    out = tmp_path / "run"
    run = evaluate(None, FakeTokenizer(), exs, _settings(adapter_path=str(adapter)), out_dir=out, generate_fn=engine)
    texts = [FakeTokenizer().decode(p) for p in engine.prompts]
    assert all(t.startswith("<|system|>Adapter prompt.<|user|>") for t in texts)
    assert all(t.endswith('<|assistant|>{"decision": "') for t in texts)
    assert engine.settings.max_tokens == 7
    info = json.loads((out / "run.json").read_text())
    assert info["answer_prefix"] == '{"decision": "' and info["max_tokens"] == 7
    assert info["prompt_sha"] == prompt_sha("Adapter prompt.") != prompt_sha()
    assert sorted(info["prompt_from_adapter"]) == ["answer_prefix", "max_tokens", "system_prompt"]
    assert run.predictions[0].raw.startswith('{"decision": "REJECTED"')

    # resuming with the same adapter settings generates nothing; changing one through an override is refused
    engine = TokenEngine()
    evaluate(None, FakeTokenizer(), exs, _settings(adapter_path=str(adapter)), out_dir=out, generate_fn=engine)
    assert not hasattr(engine, "prompts")
    with pytest.raises(EvalError, match="answer_prefix"):
        evaluate(None, FakeTokenizer(), exs, _settings(adapter_path=str(adapter), answer_prefix=""), out_dir=out,
                 generate_fn=engine)
    # retrained into the same folder: other weights, so the old answers are not resumed as the new model's
    (adapter / "adapters.safetensors").write_bytes(b"new weights")
    with pytest.raises(EvalError, match="adapter_sha"):
        evaluate(None, FakeTokenizer(), exs, _settings(adapter_path=str(adapter)), out_dir=out, generate_fn=engine)

    # settings given explicitly win over the adapter's
    variant = tmp_path / "prompt.txt"
    variant.write_text("File prompt.")
    engine = PrefixEngine()
    evaluate(None, FakeTokenizer(), exs,
             _settings(adapter_path=str(adapter), answer_prefix="", max_tokens=5, system_prompt_file=str(variant)),
             out_dir=tmp_path / "override", generate_fn=engine)
    texts = [FakeTokenizer().decode(p) for p in engine.prompts]
    assert all(t.startswith("<|system|>File prompt.<|user|>") and t.endswith("<|assistant|>") for t in texts)
    info = json.loads((tmp_path / "override" / "run.json").read_text())
    assert info["max_tokens"] == 5 and info["answer_prefix"] == "" and info["prompt_from_adapter"] == []
    assert info["prompt_sha"] == prompt_sha("File prompt.")


def test_adapter_without_prompt_settings_and_system_prompt_text(tmp_path):
    from mlxhv.errors import ModelLoadError, SettingsError
    from mlxhv.prompts import prompt_sha

    bare = tmp_path / "bare"  # an adapter made by mlx_lm.lora records no prompt: eval's defaults
    bare.mkdir()
    s = _settings(adapter_path=str(bare)).resolved()
    assert (s.answer_prefix, s.max_tokens, s.system_prompt, s.from_adapter) == ("", 256, None, ())
    # the adapter trained with the built-in prompt (stored as null) and no prefix: nothing to apply but max_tokens
    adapter = _adapter(tmp_path, max_tokens=9)
    s = _settings(adapter_path=str(adapter)).resolved()
    assert (s.answer_prefix, s.max_tokens, s.system_prompt) == ("", 9, None)
    assert s.resolved() == s  # resolving twice changes nothing

    engine = PrefixEngine()
    run = evaluate(None, FakeTokenizer(), synth_examples(2, seed=0), _settings(system_prompt="Text prompt."),
                   out_dir=tmp_path / "text", generate_fn=engine)
    assert all(FakeTokenizer().decode(p).startswith("<|system|>Text prompt.<|user|>") for p in engine.prompts)
    assert json.loads((tmp_path / "text" / "run.json").read_text())["prompt_sha"] == prompt_sha("Text prompt.")
    assert run.metrics["n"] == 2
    with pytest.raises(SettingsError, match="not both"):
        _settings(system_prompt="a", system_prompt_file="b.txt")
    (adapter / "judge_prompt.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="judge_prompt.json"):
        _settings(adapter_path=str(adapter)).resolved()


def test_compare_shows_auroc_and_token_metrics_and_pairs_in_the_library(tmp_path):
    from mlxhv.eval import paired_with_first

    exs = synth_examples(6, seed=3)
    evaluate(None, FakeTokenizer(), exs, _settings(answer_prefix="json"), out_dir=tmp_path / "tok",
             generate_fn=TokenEngine())
    evaluate(None, FakeTokenizer(), exs, _settings(), out_dir=tmp_path / "plain", generate_fn=StubEngine())
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "tok"), str(tmp_path / "plain")])
    assert result.exit_code == 0, result.output
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in result.output.splitlines() if line.startswith("|")}
    m = json.loads((tmp_path / "tok" / "metrics.json").read_text())
    assert rows["ECE, decision-token prob"] == [f"{m['ece_token']:.3f}", "–"]  # the stub engine gives no log-probs
    assert "AUROC, right vs wrong" in rows and "better calibrated (ECE)" in rows

    gold = {e.id: e.expected_decision.value for e in exs}
    tok_right = {e.id: gold[e.id] == "REJECTED" for e in exs}
    plain = [p for p in read_predictions(tmp_path / "plain" / "predictions.jsonl")]
    plain_right = {p.id: p.decision != "INVALID" and p.decision == gold[p.id] for p in plain}
    (po,) = paired_with_first([tmp_path / "tok", tmp_path / "plain"], exs)
    assert po["n"] == 6
    assert po["a_only"] == sum(tok_right[i] and not plain_right[i] for i in gold)
    assert po["b_only"] == sum(plain_right[i] and not tok_right[i] for i in gold)


def test_settings_take_the_names_of_shipped_files(tmp_path, monkeypatch):
    from mlxhv.paths import shipped_adapter, shipped_dir

    monkeypatch.chdir(tmp_path)  # an empty folder: the names can only mean the shipped copies
    s = EvalSettings(adapter_path="smollm2-135m-judge", data="data/holdout.jsonl")
    assert s.adapter_path == str(shipped_adapter()) and s.data == str(shipped_dir("data") / "holdout.jsonl")
    assert EvalSettings(adapter_path="no/such/dir").adapter_path == "no/such/dir"  # reported missing by the loader
