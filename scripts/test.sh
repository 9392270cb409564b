#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace — Rust
# (unit, integration, property and conformance tests, doc tests, and each criterion bench once)
# and Python (the package `xent`'s pytest suite, against PyTorch) — in one go.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# Where Mesa's software Vulkan driver is installed there must be an adapter: its absence then
# fails the wgpu tests instead of letting them report themselves skipped.
if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  export LOSS_WGPU_REQUIRE_ADAPTER="${LOSS_WGPU_REQUIRE_ADAPTER:-1}"
fi
# The Python environment (PyTorch, JAX, the package built from this checkout): the harness's
# peers run with it, and their absence is then a failure, never a skip.
PYTHON="$(scripts/python-env.sh | tail -n 1)"
export PYTHON LOSS_BENCH_REQUIRE_PEERS=1
cargo test --workspace --all-targets
cargo test --workspace --doc
(cd loss-py && "$PYTHON" -m pytest -q tests)
