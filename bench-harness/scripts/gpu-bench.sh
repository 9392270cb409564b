#!/usr/bin/env bash
# The wgpu backend on a real GPU, in one go (well under 8 minutes on a current GPU):
#   1. release build;
#   2. `verify --backend wgpu`: every conformance case on the GPU;
#   3. a grid timed end to end and resident (the problem uploaded once), with cells of
#      N·C ≥ 64M logits, written as JSON + Markdown + SVG into $OUT (default bench-harness/results).
# The resident fused forward+backward rows are the ones to read against the device bandwidth the
# run measures (machine.devices in the JSON).
set -euo pipefail
cd "$(dirname "$0")/../.."
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
out="${OUT:-bench-harness/results}"
mkdir -p "$out"
start=$(date +%s)
cargo build --release -p bench-harness
bench=./target/release/loss-bench
$bench verify --backend wgpu | tail -n 3
# GPU_BATCH / GPU_CLASSES shrink the grid (e.g. to try the script on a software adapter).
$bench run --backend wgpu --backend rayon --no-peers \
  --batch "${GPU_BATCH:-1,256,2048,16384}" --classes "${GPU_CLASSES:-1000,32000,128256}" --max-mib 4096 \
  --format json --out "$out/gpu.json"
$bench plot "$out/gpu.json" --out "$out/gpu.svg"
python3 - "$out/gpu.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
for d in r["machine"].get("devices", []):
    print(f"device: {d['adapter']}: copy bandwidth {d['copy_bandwidth_gbps']:.0f} GB/s")
for x in r["results"]:
    if x["backend"] == "wgpu" and x["elements"] >= 64 << 20:
        print(f"{x['backend']}/{x['variant'] or 'end-to-end'} {x['op']} {x['batch']}x{x['classes']}: "
              f"{x['elements_per_second']/1e9:.2f} G logits/s, {100*x['bandwidth_fraction']:.0f}% of device bandwidth, agrees={x['agrees']}")
PY
echo "gpu-bench: done in $(( $(date +%s) - start )) s"
