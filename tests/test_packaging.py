"""The wheel: pyproject lists every package, the CLI installs as mlxhv.cli, no top-level `cli`; the wheel alone
judges."""

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


def test_the_wheel_alone_judges_from_an_empty_folder(tmp_path, smollm_dir):
    """Build the wheel, install it (its code only: the dependencies are this venv's) and run `mlxhv judge` from
    an empty folder: the shipped adapter and the CLI come from the wheel, nothing from the checkout."""
    import json
    import os
    import subprocess
    import sys
    import zipfile

    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("mlxhv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not any(n.startswith("cli/") for n in names) and "mlxhv/cli/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    for f in ("adapters/smollm2-135m-judge/adapters.safetensors", "adapters/smollm2-135m-judge/judge_prompt.json",
              "data/holdout.jsonl", "data/train.jsonl", "configs/judge-sft-real.json"):
        assert f"mlxhv/shipped/{f}" in names, f
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    (work / "in.jsonl").write_text(json.dumps({"id": "h1", "hypothesis": "Fee cuts raise repeat orders.",
                                               "evidence": [{"source": "A/B test", "content": "Orders rose 9%.",
                                                             "relevance": 0.9}]}) + "\n")
    code = ("import sys, mlxhv, mlxhv.paths; print(mlxhv.__file__); "
            "print(mlxhv.paths.resolve_path('smollm2-135m-judge')); from mlxhv.cli import main; "
            "sys.argv = ['mlxhv', 'judge', 'in.jsonl', '-o', 'out.jsonl', '--max-tokens', '24']; main()")
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    where, adapter = r.stdout.splitlines()[:2]
    assert where.startswith(str(target)) and adapter.startswith(str(target / "mlxhv" / "shipped")), r.stdout
    (pred,) = [json.loads(line) for line in (work / "out.jsonl").read_text().splitlines()]
    assert pred["id"] == "h1" and pred["decision"] in ("VALIDATED", "REJECTED", "REFINED", "INVALID")
    assert sorted(p.name for p in work.iterdir()) == ["in.jsonl", "out.jsonl", "out.jsonl.run.json"]
