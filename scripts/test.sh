#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace
# (unit, integration, property and conformance tests, doc tests, and each criterion bench once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
cargo test --workspace --all-targets
cargo test --workspace --doc
