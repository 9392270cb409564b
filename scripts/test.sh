#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace
# (unit, integration, property and conformance tests, doc tests, and each criterion bench once).
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
cargo test --workspace --all-targets
cargo test --workspace --doc
