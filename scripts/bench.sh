#!/usr/bin/env bash
# The main job: verify every backend on the conformance vectors, then run the default throughput
# grid (PyTorch and JAX beside ours) and write its JSON, Markdown and SVG into one folder (OUT,
# default bench-harness/results/latest).
# Extra arguments go to `loss-bench run` (`--quick` for the one-minute version).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# The peers (PyTorch, JAX) in the project's Python environment, made if missing.
PYTHON="${PYTHON:-$(scripts/python-env.sh | tail -n 1)}"
export PYTHON
out="${OUT:-bench-harness/results/latest}"
cargo build --release -p bench-harness
./target/release/loss-bench verify
./target/release/loss-bench run --out-dir "$out" "$@"
echo "bench: results in $out/results.json, $out/results.md, $out/results.svg"
