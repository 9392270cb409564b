#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace
# (unit, integration, property and conformance tests, doc tests, and each criterion bench once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --workspace --all-targets
cargo test --workspace --doc
