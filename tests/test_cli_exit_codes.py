"""One exit status per kind of outcome (cli/common.py): user errors 2, Ctrl-C 130."""

import json

from click.testing import CliRunner

from mlxhv.cli import main


def _run(*args, **kw):
    return CliRunner().invoke(main, list(args), **kw)


def test_user_errors_exit_2(tmp_path, monkeypatch):
    import mlxhv.rl.plot

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"stepz": 3}))
    r = _run("train", "ppo", "--config", str(cfg), "--print-config")
    assert r.exit_code == 2 and "unknown RL setting(s): stepz" in r.output
    r = _run("eval", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "none.jsonl" in r.output
    r = _run("eval", "--adapter", str(tmp_path / "no-adapter"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "does not exist" in r.output  # click's usage error, same status
    monkeypatch.setattr(mlxhv.rl.plot, "plot_run", lambda run_dir, out=None: None)
    r = _run("train", "plot", str(tmp_path))
    assert r.exit_code == 2 and "error: matplotlib is not installed" in r.output


def test_bad_prompts_file_lists_every_bad_line_by_its_number(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n\n{"text": "b"}\nnot json\n')
    r = _run("generate", "-f", str(f))
    assert r.exit_code == 2
    assert f"error: {f}:3: prompt: expected a JSON object" in r.output
    assert f"error: {f}:4: prompt: expected a JSON object" in r.output and "error: 2 errors" in r.output


def test_ctrl_c_exits_130(monkeypatch):
    import mlxhv.models.doctor

    def interrupted(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(mlxhv.models.doctor, "report", interrupted)
    r = _run("doctor", "--quick")
    assert r.exit_code == 130 and "error: interrupted; run the same command again to resume" in r.output
