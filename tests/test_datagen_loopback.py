"""`mlxhv data generate` / `topics` against a real HTTP server on 127.0.0.1 (tests/loopback_openai.py).

Each test scripts the server's replies and asserts what ends up in the output file and its side files.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxhv.cli import main
from loopback_openai import LoopbackOpenAI, error, example_draft, qa_verdict, reply
from mlxhv.data.io import load_examples
from mlxhv.data.stats import balance_targets
from mlxhv.datagen import ClientSettings, DatagenSettings, generate_examples
from mlxhv.datagen.resume import make_plan
from mlxhv.datagen.job import side_path
from mlxhv.schema import DOMAINS

KEY = "sk-test-SUPERSECRET0123456789"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def server():
    with LoopbackOpenAI() as srv:
        yield srv


@pytest.fixture
def topics_file(tmp_path):
    path = tmp_path / "topics.jsonl"
    with open(path, "w") as f:
        for d in DOMAINS:
            for i in range(2):
                f.write(json.dumps({"id": f"{d[:3]}-t{i}", "domain": d, "title": f"{d} theme {i}",
                                    "description": f"Hypotheses about {d} theme {i}."}) + "\n")
    return path


def settings(tmp_path, srv, topics_file, n=5, **kw):
    client = kw.pop("client", {})
    cs = ClientSettings(base_url=srv.url, backoff_base_s=0.01, backoff_max_s=0.05, **client)
    return DatagenSettings(topics=topics_file, out=tmp_path / "examples.jsonl", n=n, concurrency=1,
                            progress=False, client=cs, **kw)


def run(s, lines=None):
    out = []
    report = generate_examples(s, echo=out.append)
    if lines is not None:
        lines.extend(out)
    return report


def jsonl(path):
    return [json.loads(line) for line in open(path)] if path.exists() else []


def check_plan_satisfied(s):
    """The output holds exactly the planned ids, each in its planned cell, and the balance holds."""
    _, items, _ = make_plan(s)
    examples = load_examples(s.out)  # validates schema and unique ids
    assert sorted(e.id for e in examples) == sorted(it.id for it in items)
    by_id = {it.id: it for it in items}
    for e in examples:
        it = by_id[e.id]
        assert (e.metadata.domain, e.metadata.difficulty_level, e.expected_decision.value, e.metadata.topic) == (
            it.domain, it.level, it.decision, it.topic_title)
    per = {d: sum(e.expected_decision.value == d for e in examples) for d in ("VALIDATED", "REJECTED", "REFINED")}
    for d, (lo, hi) in balance_targets(len(items)).items():
        assert lo <= per[d] <= hi
    return examples


def first_item(s):
    return make_plan(s)[1][0]


def generate_args(topics_file, out, srv, n=20):
    return ["data", "generate", "--topics", str(topics_file), "-n", str(n), "-o", str(out), "--base-url", srv.url,
            "--concurrency", "2", "--backoff", "0.01", "--no-progress", "--yes"]


def spawn_cli(args):
    """`mlxhv ARGS` in a subprocess, stdout and stderr together."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", "from mlxhv.cli import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for_lines(path, k, timeout_s=60):
    deadline = time.time() + timeout_s
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < k):
        time.sleep(0.02)


def test_valid_replies_fill_the_plan(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=12)
    report = run(s)
    assert report.complete and report.accepted == 12
    check_plan_satisfied(s)
    qa = jsonl(side_path(s.out, "qa.jsonl"))
    assert len(qa) == 12 and all(r["accepted"] for r in qa)
    assert not side_path(s.out, "rejects.jsonl").exists()
    assert server.kinds().count("example") == 12 and server.kinds().count("qa") == 12
    # the wire format: strict json_schema response_format, the key as a bearer token, models as settings
    body = server.requests[0]["body"]
    assert body["model"] == "o1" and body["response_format"]["json_schema"]["strict"] is True
    assert body["response_format"]["json_schema"]["name"] == "ExampleDraft"
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert {r["body"]["model"] for r in server.requests if r["kind"] == "qa"} == {"gpt-4o-mini"}
    ledger = json.loads(side_path(s.out, "ledger.json").read_text())
    assert ledger["o1"]["requests"] == 12 and ledger["o1"]["prompt_tokens"] == 1200
    assert ledger["o1"]["cost_usd"] == pytest.approx(1200 / 1e6 * 15 + 600 / 1e6 * 60)
    assert json.loads(side_path(s.out, "plan.json").read_text())["fingerprint"] == report.fingerprint


def test_invalid_json_is_reasked_with_the_error(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=3)
    server.push(reply('{"hypothesis": "cut off'), kind="example")
    assert run(s).complete
    check_plan_satisfied(s)
    second = server.requests[1]["body"]["messages"]
    assert second[-2] == {"role": "assistant", "content": '{"hypothesis": "cut off'}
    assert "not valid" in second[-1]["content"] and "JSON" in second[-1]["content"]
    assert not side_path(s.out, "rejects.jsonl").exists()  # fixed within the re-ask budget


def test_invalid_json_beyond_fix_budget_is_rejected_and_regenerated(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=3, client={"max_fix_rounds": 0})
    server.push(reply("I think the answer is VALIDATED."), kind="example")
    report = run(s)
    assert report.complete
    check_plan_satisfied(s)
    rejects = jsonl(side_path(s.out, "rejects.jsonl"))
    assert len(rejects) == 1 and rejects[0]["kind"] == "invalid"
    assert rejects[0]["raw"] == "I think the answer is VALIDATED." and rejects[0]["id"] == first_item(s).id
    assert report.rejects_by_kind == {"invalid": 1}
    # the regeneration prompt carries the reason
    retry_prompt = server.requests[1]["body"]["messages"][-1]["content"]
    assert "previous attempt" in retry_prompt and "Invalid JSON" in retry_prompt


def test_schema_violations_are_reasked_with_field_paths(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=3)
    item = first_item(s)
    bad = example_draft(item.decision)
    bad["evidence"][1]["relevance"] = 1.7
    del bad["confidence"]
    server.push(reply(json.dumps(bad)), kind="example")
    rule = example_draft(item.decision)  # passes the draft schema, breaks an Example rule or the plan
    if item.decision == "VALIDATED":
        rule["confidence"] = 0.3
        expect = "VALIDATED needs confidence >= 0.7"
    else:
        rule["expected_decision"] = "VALIDATED"
        rule["refined_hypothesis"] = None
        rule["confidence"] = 0.9
        expect = f"must be {item.decision}"
    server.push(reply(json.dumps(rule)), kind="example")
    assert run(s).complete
    examples = check_plan_satisfied(s)
    msgs = server.requests[1]["body"]["messages"]
    assert "confidence" in msgs[-1]["content"]  # the missing field, named
    msgs = server.requests[2]["body"]["messages"]
    assert expect in msgs[-1]["content"]
    assert all(ev.relevance <= 1 for e in examples for ev in e.evidence)


def test_429_with_retry_after_is_waited_then_succeeds(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=2)
    server.push(error(429, "Rate limit reached", headers={"Retry-After": "1"}))
    report = run(s)
    assert report.complete
    check_plan_satisfied(s)
    gap = server.requests[1]["time"] - server.requests[0]["time"]
    assert gap >= 0.9  # the backoff setting is 0.01 s: only Retry-After explains the wait
    assert report.ledger.usage["o1"].retries == 1


def test_500_is_retried(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=2)
    server.push(error(500, "boom"))
    server.push(error(503, "busy"))
    report = run(s)
    assert report.complete and report.ledger.usage["o1"].retries == 2
    check_plan_satisfied(s)


def test_timeout_is_retried(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=1, client={"timeout_s": 0.3})
    server.push(reply(json.dumps(example_draft(first_item(s).decision)), delay_s=1.5), kind="example")
    report = run(s)
    assert report.complete and report.ledger.usage["o1"].retries == 1
    check_plan_satisfied(s)


def test_retries_exhausted_stop_the_run_cleanly(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=4, client={"max_retries": 2})
    server.fail_after = 2  # example + QA for the first item, then nothing but 500s
    lines = []
    report = run(s, lines)
    assert not report.complete and report.accepted == 1
    assert "giving up after 2 retries: HTTP 500" in report.aborted
    assert "stopped early" in "\n".join(lines) and "incomplete: 3 of 4" in "\n".join(lines)
    assert len(jsonl(s.out)) == 1
    server.fail_after = None
    assert run(s).complete  # the same command finishes the plan
    check_plan_satisfied(s)


def test_length_cut_is_regenerated_not_kept(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=3)
    server.push(reply('{"hypothesis": "A long', finish_reason="length"), kind="example")
    report = run(s)
    assert report.complete and report.rejects_by_kind == {"length": 1}
    check_plan_satisfied(s)
    rejects = jsonl(side_path(s.out, "rejects.jsonl"))
    assert rejects[0]["kind"] == "length" and rejects[0]["raw"] == '{"hypothesis": "A long'
    assert "cut by the token limit" in server.requests[1]["body"]["messages"][-1]["content"]


def test_length_cut_in_prompt_mode(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=2, client={"mode": "prompt"})
    server.push(reply(json.dumps(example_draft(first_item(s).decision)), finish_reason="length"), kind="example")
    report = run(s)
    assert report.complete and report.rejects_by_kind == {"length": 1}  # even a parseable cut reply is dropped
    check_plan_satisfied(s)


def test_refusal_is_regenerated(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=2)
    server.push(reply(None, refusal="I can't help with that."), kind="example")
    report = run(s)
    assert report.complete and report.rejects_by_kind == {"refused": 1}
    check_plan_satisfied(s)
    assert jsonl(side_path(s.out, "rejects.jsonl"))[0]["raw"] == "I can't help with that."


def test_qa_rejection_then_acceptance(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=3)
    item = first_item(s)
    why = "evidence is not realistic: the survey sample is implausible"
    server.push(reply(json.dumps(qa_verdict(item.decision, accept=False, reasons=[why]))), kind="qa")
    lines = []
    report = run(s, lines)
    assert report.complete and report.accepted == 3 and report.accepted_first_try == 2
    check_plan_satisfied(s)
    # the rejected example is kept aside with the reason; the regeneration prompt carries the reason
    rejects = jsonl(side_path(s.out, "rejects.jsonl"))
    assert [(r["id"], r["kind"], r["reasons"]) for r in rejects] == [(item.id, "qa", [why])]
    assert rejects[0]["example"]["id"] == item.id
    writer_prompts = [r["body"]["messages"][-1]["content"] for r in server.requests if r["kind"] == "example"]
    assert why in writer_prompts[1] and why not in writer_prompts[0]
    qa = jsonl(side_path(s.out, "qa.jsonl"))
    assert [(r["id"], r["accepted"]) for r in qa][:2] == [(item.id, False), (item.id, True)]
    assert report.rejects == {(item.domain, item.level): 1}
    saved = json.loads(side_path(s.out, "report.json").read_text())
    assert saved["rejects_by_domain_level"] == {item.domain: {str(item.level): 1}}
    assert "rejected / attempts by domain × level" in "\n".join(lines)


def test_cell_that_always_fails_qa_is_surfaced(tmp_path, topics_file):
    """The seed saw risk fail level 1 again and again: the report must name such a cell."""
    import re

    from loopback_openai import smart_reply

    def picky(kind, body, srv):
        if kind == "qa":
            text = body["messages"][-1]["content"]
            if "Domain: risk." in text and "Planned level 1" in text:
                return reply(json.dumps(qa_verdict("REJECTED", accept=False,
                                                   reasons=["level 1 must be clear-cut; this is ambiguous"])))
        return smart_reply(kind, body, srv)

    with LoopbackOpenAI(smart=picky) as srv:
        s = settings(tmp_path, srv, topics_file, n=40, max_attempts=2, levels=(1, 2))
        lines = []
        report = run(s, lines)
    risky = [it for it in make_plan(s)[1] if it.domain == "risk" and it.level == 1]
    assert risky and report.missing == len(risky)
    hot = report.hot_cells()
    assert hot[0][0] == ("risk", 1) and hot[0][1] == hot[0][2] == 2 * len(risky)
    text = "\n".join(lines)
    assert re.search(r"risk level 1: \d+ of \d+ attempts rejected — qa: level 1 must be clear-cut", text)
    assert "incomplete" in text
    ids = {e["id"] for e in jsonl(s.out)}
    assert not ids & {it.id for it in risky} and len(ids) == 40 - len(risky)


def test_prompt_mode_puts_schema_in_prompt_and_reasks(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=2, client={"mode": "prompt"})
    item = first_item(s)
    server.push(reply("Here you go:\n```json\n{\"hypothesis\": \"H\"}\n```"), kind="example")
    server.push(reply("Sure!\n```json\n" + json.dumps(example_draft(item.decision)) + "\n```\nHope it helps."),
                kind="example")
    assert run(s).complete
    check_plan_satisfied(s)
    first = server.requests[0]["body"]
    assert "response_format" not in first
    assert '"title":"ExampleDraft"' in first["messages"][0]["content"]
    fix = server.requests[1]["body"]["messages"][-1]["content"]
    assert "evidence: Field required" in fix and "expected_decision: Field required" in fix


def test_kill_half_way_then_resume(tmp_path, server, topics_file):
    """SIGKILL a CLI run in a subprocess mid-way, then run the same command: exactly the planned ids, once each."""
    server.delay_s = 0.05
    out = tmp_path / "examples.jsonl"
    args = generate_args(topics_file, out, server)
    proc = spawn_cli(args)
    wait_for_lines(out, 5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(jsonl(out))
    assert 5 <= killed_at < 20, proc.stdout.read().decode()
    with open(out, "a") as f:  # what a writer killed mid-line would leave
        f.write('{"id": "gen-fin-00')
    before = len(server.requests)
    server.delay_s = 0.0
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert f"{killed_at} of 20 done" in r.output
    s = DatagenSettings(topics=topics_file, out=out, n=20)
    check_plan_satisfied(s)
    assert server.kinds()[before:].count("example") == 20 - killed_at  # only the missing ones were asked for
    r = CliRunner().invoke(main, args)  # a third run has nothing to do
    assert r.exit_code == 0 and "20 of 20" in r.output and len(server.requests) == before + 2 * (20 - killed_at)


def test_server_failing_hard_then_resume(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=10)
    server.fail_after = 8
    server.fail_reply = error(401, "Incorrect API key provided")
    report = run(s)
    assert report.accepted == 4 and "HTTP 401" in report.aborted
    server.fail_after = None
    report = run(s)
    assert report.done_before == 4 and report.accepted == 6 and report.complete
    check_plan_satisfied(s)
    assert server.kinds().count("example") == 4 + 1 + 6  # the request that failed was not retried (401)
    ledger = json.loads(side_path(s.out, "ledger.json").read_text())  # summed over both runs
    assert ledger["o1"]["requests"] == 10 and ledger["gpt-4o-mini"]["requests"] == 10


def test_a_different_plan_is_refused_unless_force(tmp_path, server, topics_file):
    base = ["data", "generate", "--topics", str(topics_file), "-o", str(tmp_path / "ex.jsonl"),
            "--base-url", server.url, "--no-progress", "--yes"]
    assert CliRunner().invoke(main, base + ["-n", "4"]).exit_code == 0
    r = CliRunner().invoke(main, base + ["-n", "6"])
    assert r.exit_code != 0 and "different plan" in r.output and "--force" in r.output
    r = CliRunner().invoke(main, base + ["-n", "4", "--seed", "9"])
    assert r.exit_code != 0 and "different plan" in r.output
    assert len(jsonl(tmp_path / "ex.jsonl")) == 4
    r = CliRunner().invoke(main, base + ["-n", "6", "--force"])
    assert r.exit_code == 0, r.output
    assert len(jsonl(tmp_path / "ex.jsonl")) == 6
    (tmp_path / "other.jsonl").write_text('{"id": "x"}\n')
    r = CliRunner().invoke(main, base[:4] + ["-o", str(tmp_path / "other.jsonl"), "--base-url", server.url])
    assert r.exit_code != 0 and "not from this plan" in r.output


def test_api_key_never_appears_in_output_or_files(tmp_path, server, topics_file):
    args = ["data", "generate", "--topics", str(topics_file), "-n", "3", "-o", str(tmp_path / "ex.jsonl"),
            "--base-url", server.url, "--no-progress", "--max-fix-rounds", "0", "--yes"]
    server.push(reply(f"my key is {KEY} and the answer is VALIDATED"), kind="example")  # echoed into a reject
    server.push(error(401, f"Incorrect API key provided: {KEY}. You can find your API key at ..."))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "HTTP 401" in r.output
    assert KEY not in r.output and "SUPERSECRET" not in r.output
    for p in tmp_path.iterdir():
        assert "SUPERSECRET" not in p.read_text(), p
    rejects = jsonl(side_path(tmp_path / "ex.jsonl", "rejects.jsonl"))
    assert rejects[0]["raw"] == "my key is *** and the answer is VALIDATED"


def test_dry_run_calls_nothing_and_estimates_cost(tmp_path, server, topics_file):
    r = CliRunner().invoke(main, ["data", "generate", "--topics", str(topics_file), "-n", "350", "-o",
                                  str(tmp_path / "ex.jsonl"), "--base-url", server.url, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "VALIDATED   175  target 150-200  ok" in r.output and "estimated tokens and cost" in r.output
    assert "o1" in r.output and "total cost: $" in r.output
    assert server.requests == [] and list(tmp_path.iterdir()) == [topics_file]


def test_generate_shows_the_cost_and_asks_first(tmp_path, server, topics_file):
    out = tmp_path / "ex.jsonl"
    args = ["data", "generate", "--topics", str(topics_file), "-n", "4", "-o", str(out), "--base-url", server.url,
            "--no-progress", "--price", "o1=10,40", "--price", "gpt-4o-mini=1,2"]
    r = CliRunner().invoke(main, args, input="n\n")
    assert r.exit_code == 2 and "estimated tokens and cost of the 4 example(s) to write" in r.output
    assert "total cost: $" in r.output and "go ahead? [y/N]" in r.output
    assert "error: not confirmed, nothing was called" in r.output
    r = CliRunner().invoke(main, args)  # nobody to answer
    assert r.exit_code == 2 and "pass --yes to run without asking" in r.output
    assert server.requests == [] and not out.exists()
    r = CliRunner().invoke(main, args[:5] + ["2"] + args[6:], input="y\n")  # 2 of the 4 planned, then resume
    assert r.exit_code == 0, r.output
    assert len(jsonl(out)) == 2
    r = CliRunner().invoke(main, args, input="y\n")  # another plan in OUT: refused before the question
    assert r.exit_code == 2 and "was written for a different plan" in r.output and "go ahead?" not in r.output
    r = CliRunner().invoke(main, args + ["--force", "--yes"])
    assert r.exit_code == 0 and len(jsonl(out)) == 4
    r = CliRunner().invoke(main, args, input="n\n")  # the same plan, all written: nothing left to pay for
    assert "of the 0 example(s) to write" in r.output


def test_no_key_for_openai_is_a_clean_error(tmp_path, topics_file, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    r = CliRunner().invoke(main, ["data", "generate", "--topics", str(topics_file), "-n", "2", "-o",
                                  str(tmp_path / "ex.jsonl")])
    assert r.exit_code == 2 and "error: " in r.output and "OPENAI_API_KEY is not set" in r.output


def test_topics_spread_evenly_and_deduplicated(tmp_path, server):
    out = tmp_path / "topics.jsonl"
    dup = {"topics": [{"title": "Dividend payout policy", "description": "a"},
                      {"title": "The dividend payout policies", "description": "b"},
                      {"title": "Share buybacks", "description": "c"},
                      {"title": "share buyback", "description": "d"}]}
    server.push(reply(json.dumps(dup)), kind="topics")
    r = CliRunner().invoke(main, ["data", "topics", "-n", "11", "--domains", "finance,risk", "-o", str(out),
                                  "--base-url", server.url, "--concurrency", "1", "--model", "gpt-4o-mini"])
    assert r.exit_code == 0, r.output
    rows = jsonl(out)
    assert [r["domain"] for r in rows].count("finance") == 6 and [r["domain"] for r in rows].count("risk") == 5
    titles = [r["title"] for r in rows]
    assert len(set(t.lower() for t in titles)) == 11
    assert titles[:2] == ["Dividend payout policy", "Share buybacks"]
    assert len({r["id"] for r in rows}) == 11 and rows[0]["id"] == "fin-t001"
    second_finance = [q["body"] for q in server.requests if "Domain: finance" in q["body"]["messages"][-1]["content"]][1]
    assert "Do not repeat" in second_finance["messages"][-1]["content"]
    assert "dropped 2 duplicate" in r.output
    r = CliRunner().invoke(main, ["data", "topics", "-n", "5", "-o", str(out), "--base-url", server.url])
    assert r.exit_code != 0 and "already exists" in r.output
    r = CliRunner().invoke(main, ["data", "validate", str(out)])
    assert r.exit_code == 0, r.output


def test_topics_then_generate_end_to_end(tmp_path, server):
    topics = tmp_path / "topics.jsonl"
    r = CliRunner().invoke(main, ["data", "topics", "-n", "10", "-o", str(topics), "--base-url", server.url])
    assert r.exit_code == 0, r.output
    out = tmp_path / "examples.jsonl"
    r = CliRunner().invoke(main, ["data", "generate", "--topics", str(topics), "-n", "14", "-o", str(out),
                                  "--base-url", server.url, "--concurrency", "4", "--no-progress",
                                  "--price", "o1=1,2", "--yes"])
    assert r.exit_code == 0, r.output
    check_plan_satisfied(DatagenSettings(topics=topics, out=out, n=14))
    r = CliRunner().invoke(main, ["data", "validate", str(out)])
    assert r.exit_code == 0 and "14 valid" in r.output


def test_unusable_qa_reply_is_asked_again_before_discarding(tmp_path, server, topics_file):
    s = settings(tmp_path, server, topics_file, n=2, client={"max_fix_rounds": 0})
    server.push(reply("looks fine to me"), kind="qa")  # first QA try unusable, second (smart) accepts
    report = run(s)
    assert report.complete and report.accepted_first_try == 2 and not report.rejects_by_kind
    assert server.kinds()[:3] == ["example", "qa", "qa"]
    server2_out = tmp_path / "b.jsonl"
    s2 = settings(tmp_path, server, topics_file, n=2, client={"max_fix_rounds": 0}, qa_attempts=1)
    s2.out = server2_out
    server.push(reply('{"judged_decision": "VALIDATED"', finish_reason="length"), kind="qa")
    report = run(s2)
    assert report.complete and report.rejects_by_kind == {"qa-error": 1}
    rejects = jsonl(side_path(server2_out, "rejects.jsonl"))
    assert rejects[0]["kind"] == "qa-error" and rejects[0]["example"] is not None
    assert "cut by the token limit" in rejects[0]["reasons"][0]


def test_ctrl_c_stops_within_seconds_keeps_every_accepted_example_then_resumes(tmp_path, server, topics_file):
    """SIGINT a CLI run whose API calls hang: it exits in a few seconds, with every accepted example on disk."""
    server.delay_s = 0.05
    out = tmp_path / "examples.jsonl"
    args = generate_args(topics_file, out, server)
    proc = spawn_cli(args)
    try:
        wait_for_lines(out, 3)
        server.delay_s = 30.0  # from now on every call hangs, as an o1 request thinking for minutes does
        deadline = time.time() + 20
        while time.time() < deadline and sum(r["replied"] is None for r in server.requests) < 2:
            time.sleep(0.02)  # both workers are now waiting on a reply
        time.sleep(0.5)  # the replies already sent have been handled
        hanging = sum(r["replied"] is None for r in server.requests)
        qa_answered = sum(r["kind"] == "qa" and r["replied"] is not None for r in server.requests)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=20)[0].decode()
        stopped_in = time.monotonic() - t0
    finally:
        proc.kill()
    assert hanging == 2 and 3 <= qa_answered < 20, (hanging, qa_answered, output)
    assert stopped_in < 5.0, (stopped_in, output)  # the hanging calls (30 s) were not waited for
    assert proc.returncode == 130 and "stopped early: interrupted (Ctrl-C)" in output, output  # cli/common.py
    examples = load_examples(out)  # valid JSONL, each line a valid Example, ids unique
    assert len(examples) == qa_answered  # every example the judge accepted is on disk
    _, items, _ = make_plan(DatagenSettings(topics=topics_file, out=out, n=20))
    assert {e.id for e in examples} <= {it.id for it in items}
    saved = json.loads(side_path(out, "report.json").read_text())
    assert saved["aborted"] == "interrupted (Ctrl-C)" and saved["accepted"] == len(examples)
    before = len(server.requests)
    server.delay_s = 0.0
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert f"{len(examples)} of 20 done" in r.output
    check_plan_satisfied(DatagenSettings(topics=topics_file, out=out, n=20))
    assert server.kinds()[before:].count("example") == 20 - len(examples)


def test_topics_api_failure_stops_keeps_what_was_kept_and_reports(tmp_path, server):
    """The pool's policy for topics too: an API failure stops the job, kept topics are written, exit 1."""
    out = tmp_path / "topics.jsonl"
    server.fail_after = 1  # finance gets its topics, then every request is refused
    server.fail_reply = error(401, "Incorrect API key provided")
    args = ["data", "topics", "-n", "4", "--domains", "finance,risk", "-o", str(out), "--base-url", server.url,
            "--concurrency", "1", "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    assert "stopped early: o1: HTTP 401" in r.output and "run again with --force" in r.output
    assert [row["domain"] for row in jsonl(out)] == ["finance", "finance"]
    assert server.kinds() == ["topics", "topics"]  # the 401 was not retried
    server.fail_after = None
    r = CliRunner().invoke(main, args + ["--force"])
    assert r.exit_code == 0, r.output
    assert sorted(row["domain"] for row in jsonl(out)) == ["finance", "finance", "risk", "risk"]
    out.unlink()
    server.fail_after = 0  # nothing kept: no file that a rerun would have to --force away
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "HTTP 401" in r.output and not out.exists()


def test_stop_event_from_the_caller_ends_the_run_after_the_running_item(tmp_path, topics_file):
    import threading

    from loopback_openai import smart_reply

    stop = threading.Event()

    def stopper(kind, body, srv):
        if kind == "qa" and srv.kinds().count("qa") == 3:
            stop.set()  # another thread asks the run to end while item 3 waits for its verdict
        return smart_reply(kind, body, srv)

    with LoopbackOpenAI(smart=stopper) as srv:
        s = settings(tmp_path, srv, topics_file, n=8)
        report = generate_examples(s, echo=lambda _: None, stop=stop)
        assert report.accepted == 3 and report.aborted == "stopped by the caller"  # item 3 finished, no 4th
        assert srv.kinds() == ["example", "qa"] * 3 and len(jsonl(s.out)) == 3
        assert run(s).complete
    check_plan_satisfied(s)
