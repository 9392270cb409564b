#!/usr/bin/env bash
# Regenerates every figure the README quotes, into bench-harness/results/figures/ (or $OUT):
# one JSON (and Markdown) file per figure, COMMANDS.md with the exact command, time and commit
# of each, and TABLES.md with the README's tables rendered from those files
# (bench-harness/scripts/tables.py). The README's numbers are copied from the latest run.
#
#   scripts/figures.sh                 # every section (about 45 min on the reference machine)
#   scripts/figures.sh peers rayon     # some sections; TABLES.md is rendered from what is there
#
# Sections: verify default peers rayon machine dtype extensions wgpu python ab-gate
# The peers need PyTorch and JAX: $PYTHON (default: the project's environment, scripts/python-env.sh).
# Nothing else may run on the machine meanwhile: the figures are timings.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
PYTHON="${PYTHON:-$(scripts/python-env.sh | tail -n 1)}"
export PYTHON
out="${OUT:-bench-harness/results/figures}"
mkdir -p "$out"
cargo build --release -p bench-harness
bench=./target/release/loss-bench
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo "+changes")

# The cells of the peers table (PERF.md's, plus a tiny one for per-call overhead).
peer_cells=4x3,65536x3,16384x10,16384x100,1024x1000,4096x4096,256x32000,8x128256,64x128256

# Runs one figure's command, logging it with its date, duration and commit.
record() {
  local name=$1
  shift
  local start
  start=$(date +%s)
  echo "figures: $name: $*" >&2
  "$@"
  {
    echo "## $name"
    echo
    echo "\`$*\`"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - start)) s, commit $commit"
    echo
  } >>"$out/COMMANDS.md.new"
}

verify() {
  record verify sh -c "$bench verify > $out/verify.txt"
}

default_grid() {
  record default "$bench" run --out-dir "$out/default"
}

peers() {
  record peers "$bench" run --cells "$peer_cells" --backend cpu --backend rayon --threads 1,2 \
    --format json --out "$out/peers.json"
}

rayon() {
  record rayon-vs-cpu "$bench" ab --backend rayon --threads 2 --against-backend cpu \
    --cells "$peer_cells" --no-peers --format json --out "$out/rayon-vs-cpu.json"
}

machine() {
  record small-classes "$bench" run --cells 65536x3,16384x10,16384x100 --backend cpu \
    --threads 1 --no-peers --format json --out "$out/small-classes.json"
  record large-rows "$bench" run --cells 1024x1000,4096x4096,256x32000,8x128256,64x128256 \
    --backend cpu --threads 1 --no-peers --format json --out "$out/large-rows.json"
}

dtype() {
  record dtype "$bench" run --backend cpu --cells 1024x1000,16384x1000,256x32000,16x128256 \
    --dtype f32,bf16,f16 --op forward,forward_backward --threads 1 --no-peers \
    --format json --out "$out/dtype.json"
  record peers-bf16 "$bench" run --backend cpu --cells 1024x1000,256x32000 --dtype f32,bf16 \
    --op forward,forward_backward --threads 1 --format json --out "$out/peers-bf16.json"
}

extensions() {
  record zloss "$bench" run --backend cpu --cells 1024x1000,16384x1000,256x32000,16x128256 \
    --dtype f32,bf16 --z-loss 1e-4 --op forward,forward_backward --threads 1 --no-peers \
    --format json --out "$out/zloss.json"
  record softcap "$bench" run --backend cpu --cells 1024x1000,16384x1000,256x32000,16x128256 \
    --dtype f32,bf16 --softcap 30 --op forward,forward_backward --threads 1 --no-peers \
    --format json --out "$out/softcap.json"
  record peers-ext "$bench" run --backend cpu --cells 1024x1000,256x32000 --dtype bf16 \
    --z-loss 1e-4 --softcap 30 --op forward,forward_backward --threads 1 \
    --format json --out "$out/peers-ext.json"
}

python() {
  record python sh -c "'$PYTHON' loss-py/bench/bench_torch.py --threads 1 --out '$out/python.json' > '$out/python.md'"
}

wgpu() {
  record wgpu-lavapipe "$bench" run --backend wgpu --backend cpu \
    --cells 256x10,64x1000,8x32768,1024x1000 --no-peers --format json \
    --out "$out/wgpu-lavapipe.json"
}

# `ab`'s false alarms and power: 20 runs of the README's CI recipe against a copy of this very
# binary, then 10 runs of the same recipe on large forward cells against a build whose `cpu`
# forward pass reads an extra fifth of the logits (the `planted-slowdown` feature).
ab_gate() {
  local tmp
  tmp=$(mktemp -d)
  cp "$bench" "$tmp/loss-bench-copy"
  CARGO_TARGET_DIR=target/planted cargo build --release -p bench-harness \
    --features planted-slowdown
  cp target/planted/release/loss-bench "$tmp/loss-bench-slowed"
  mkdir -p "$out/ab-gate"
  local start
  start=$(date +%s)
  for i in $(seq 1 20); do
    "$bench" ab --against "$tmp/loss-bench-copy" --quick --no-peers --fail-above 5% \
      --format json --out "$out/ab-gate/same-$i.json" >/dev/null && rc=0 || rc=$?
    echo "same $i exit $rc" >>"$out/ab-gate/exits.txt.new"
  done
  for i in $(seq 1 10); do
    "$tmp/loss-bench-slowed" ab --against "$bench" --quick --no-peers --fail-above 5% \
      --cells 256x32000,64x128256,2048x1000 --op forward \
      --format json --out "$out/ab-gate/slowed-$i.json" >/dev/null && rc=0 || rc=$?
    echo "slowed $i exit $rc" >>"$out/ab-gate/exits.txt.new"
  done
  mv "$out/ab-gate/exits.txt.new" "$out/ab-gate/exits.txt"
  {
    echo "## ab-gate"
    echo
    echo "20 × \`$bench ab --against COPY --quick --no-peers --fail-above 5%\`, then"
    echo "10 × \`SLOWED ab --against $bench --quick --no-peers --fail-above 5% --cells 256x32000,64x128256,2048x1000 --op forward\`"
    echo "(SLOWED: \`cargo build --release -p bench-harness --features planted-slowdown\`)"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - start)) s, commit $commit"
    echo
  } >>"$out/COMMANDS.md.new"
  rm -rf "$tmp"
}

sections=("$@")
if [ ${#sections[@]} -eq 0 ]; then
  sections=(verify default peers rayon machine dtype extensions wgpu python ab-gate)
fi
rm -f "$out/COMMANDS.md.new"
for s in "${sections[@]}"; do
  case "$s" in
    verify) verify ;;
    default) default_grid ;;
    peers) peers ;;
    rayon) rayon ;;
    machine) machine ;;
    dtype) dtype ;;
    extensions) extensions ;;
    wgpu) wgpu ;;
    python) python ;;
    ab-gate) ab_gate ;;
    *)
      echo "figures: unknown section $s" >&2
      exit 2
      ;;
  esac
done
# COMMANDS.md keeps the latest entry of every section.
"$PYTHON" bench-harness/scripts/tables.py --merge-commands "$out/COMMANDS.md" "$out/COMMANDS.md.new"
rm -f "$out/COMMANDS.md.new"
"$PYTHON" bench-harness/scripts/tables.py "$out" >"$out/TABLES.md"
echo "figures: $out/TABLES.md and $out/COMMANDS.md"
