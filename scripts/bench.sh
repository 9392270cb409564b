#!/usr/bin/env bash
# The main job: verify every backend on the conformance vectors, then run the default
# throughput grid and write results/latest.{json,md,svg}. Extra arguments go to `loss-bench run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo build --release -p bench-harness
./target/release/loss-bench verify
./target/release/loss-bench run "$@"
