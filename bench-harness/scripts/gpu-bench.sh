#!/usr/bin/env bash
# The wgpu backend on a lent GPU, as one prepared command (about 2–4 minutes on a current GPU).
#
# The device machine has no network and no cargo registry, so nothing is built there: build the
# harness here and carry the binary with the tree,
#     cargo build --release -p bench-harness      # then carry target/release/loss-bench
# (the device tool's `carry: ["target/release/loss-bench"]`), and run there
#     bench-harness/scripts/gpu-bench.sh
#
# Steps: the adapter is named and must be hardware (a container without the vendor's Vulkan
# driver would otherwise time Mesa's lavapipe on the CPU: refused unless --allow-software);
# `verify --backend wgpu` (every conformance case on the device); a trimmed fused grid, resident
# and end to end, wgpu only (no CPU rows), written as JSON, Markdown and SVG under $OUT (default
# bench-harness/results), with the fraction of the device's copy ceiling (a vec4 copy kernel
# timed by GPU timestamps) by GPU time and by wall time.
#
#   --allow-software   time a software adapter anyway (a smaller grid; correctness only)
#   LOSS_BENCH=path    the prebuilt binary (default target/release/loss-bench)
#   GPU_CELLS=NxC,...  the grid (default below; the software default is smaller)
set -euo pipefail
cd "$(dirname "$0")/../.."
allow_software=0
for arg in "$@"; do
  case "$arg" in
    --allow-software) allow_software=1 ;;
    *) echo "gpu-bench: unknown argument $arg" >&2; exit 2 ;;
  esac
done
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
out="${OUT:-bench-harness/results}"
mkdir -p "$out"
bench="${LOSS_BENCH:-target/release/loss-bench}"
if [ ! -x "$bench" ]; then
  echo "gpu-bench: no prebuilt $bench; build it with cargo build --release -p bench-harness" \
    "where cargo is, and carry it with the tree" >&2
  exit 2
fi
start=$(date +%s)
if ! devices=$("$bench" devices); then
  echo "gpu-bench: no wgpu adapter" >&2
  exit 2
fi
echo "$devices"
wgpu_line=$(printf '%s\n' "$devices" | grep '^wgpu' | head -n 1)
cells="${GPU_CELLS:-2048x128256,16384x32000,2048x32000,64x128256,1x128256,1024x1000,65536x3}"
case "$wgpu_line" in
  *$'\t'software$'\t'*)
    if [ "$allow_software" != 1 ]; then
      echo "gpu-bench: the adapter is a software rasteriser, whose timings say nothing about" \
        "a GPU; refusing (--allow-software runs it anyway)" >&2
      exit 3
    fi
    cells="${GPU_CELLS:-256x32000,8x32768,1024x1000,4096x10}"
    ;;
esac
"$bench" verify --backend wgpu | tail -n 3
"$bench" run --backend wgpu --no-peers --op forward_backward --cells "$cells" --max-mib 4096 \
  --format json --out "$out/gpu.json"
"$bench" plot "$out/gpu.json" --out "$out/gpu.svg"
python3 - "$out/gpu.json" "$out/gpu.md" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lines = []
for d in r["machine"].get("devices", []):
    lines.append(f"device: {d['adapter']}: copy ceiling {d['copy_bandwidth_gbps']:.0f} GB/s "
                 "(vec4 copy kernel, GPU-timed where the device has timestamps)")
lines += ["", "| variant | op | N×C | wall µs | of ceiling (wall) | GPU µs | of ceiling (GPU) | agrees |",
          "|---|---|---|---|---|---|---|---|"]
for x in r["results"]:
    if x["backend"] != "wgpu":
        continue
    gpu = x.get("gpu_median_ns")
    frac = x.get("gpu_bandwidth_fraction")
    lines.append(f"| {x['variant'] or 'end to end'} | {x['op']} | {x['batch']}×{x['classes']} | "
                 f"{x['median_ns'] / 1e3:.1f} | {100 * x['bandwidth_fraction']:.0f}% | "
                 + (f"{gpu / 1e3:.1f} | {100 * frac:.0f}% | " if gpu else "– | – | ")
                 + f"{x['agrees']} |")
text = "\n".join(lines) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
echo "gpu-bench: done in $(( $(date +%s) - start )) s; files in $out"
