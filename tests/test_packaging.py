"""The wheel's layout: pyproject lists every package, the CLI installs as mlxhv.cli, no top-level `cli`."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed_and_mapped():
    st = PYPROJECT["tool"]["setuptools"]
    listed = set(st["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mlxhv").rglob("__init__.py")}
    found |= {"mlxhv.cli"}
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert not any(p == "cli" or p.startswith("cli.") for p in listed)
    assert st["package-dir"]["mlxhv.cli"] == "cli"
    for pkg in listed:
        if pkg in st["package-dir"]:
            assert (ROOT / st["package-dir"][pkg]).is_dir(), pkg


def test_entry_point_and_license():
    proj = PYPROJECT["project"]
    assert proj["scripts"] == {"mlxhv": "mlxhv.cli:main"}
    assert proj["license"] == "MIT"
    assert "Copyright (c) 2026 the mlxhv authors" in (ROOT / "LICENSE").read_text()


def test_mlx_pins_are_bounded_above():
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["cuda"]
    for name in ("mlx-lm", "mlx[cpu]", "mlx[cuda13]"):
        spec = next(d for d in deps if d.startswith(name + ">"))
        assert "<0.33" in spec, spec


def test_cli_imports_as_mlxhv_cli():
    import mlxhv.cli

    assert Path(mlxhv.cli.__file__).parent == ROOT / "cli"
    assert mlxhv.cli.main.name == "main"


def test_install_script_refuses_an_old_python(tmp_path):
    import subprocess

    fake = tmp_path / "python3.9"
    fake.write_text('#!/bin/sh\nif [ "$1" = "-V" ]; then echo "Python 3.9.18"; exit 0; fi\nexit 1\n')
    fake.chmod(0o755)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env={"PATH": "/usr/bin:/bin",
                       "PYTHON": str(fake)}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f"error: mlxhv needs Python >= 3.10; {fake} is Python 3.9.18." in r.stderr
