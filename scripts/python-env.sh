#!/usr/bin/env bash
# The project's Python environment, made or brought up to date: a virtual environment in .venv
# (or $VENV) with maturin, NumPy, PyTorch, JAX, ml_dtypes and pytest from PyPI, and the package
# `xent` (loss-py) built from this checkout and installed into it. Prints the interpreter's path
# last. PyTorch's wheel is the CUDA build (~6 GB, a few minutes the first time); only its CPU
# side is used.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-$PWD/.venv}"
python="${PYTHON_FOR_VENV:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "python-env: creating $venv" >&2
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# The peers of the harness (PyTorch, JAX) and the package's tests need these.
"${pip[@]}" install -q maturin numpy torch jax jaxlib pytest ml_dtypes >&2
# The package from this checkout (maturin builds loss-py in release; the workspace's target/).
"${pip[@]}" install -q --force-reinstall --no-deps ./loss-py >&2
echo "$venv/bin/python"
