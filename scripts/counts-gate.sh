#!/usr/bin/env bash
# The deterministic performance gate: instruction and simulated cache-miss counts of a small grid
# under Valgrind, compared with the baseline committed in bench-harness/results/. Counts do not
# depend on the machine's load, so the gate cannot be flaky; it fails when a configuration's
# instructions or estimated cycles per call grow by more than 2%.
#   scripts/counts-gate.sh            # compare with the baseline
#   scripts/counts-gate.sh --refresh  # rewrite the baseline (commit it, saying why)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
baseline=bench-harness/results/counts-baseline.json
cells=1024x10,16384x3,256x1000,8x32000,1x128256
cargo build --release -p bench-harness
bench=./target/release/loss-bench
if [ "${1:-}" = --refresh ]; then
  $bench run --counts --backend cpu --backend rayon --cells "$cells" --format json --out "$baseline"
  echo "counts-gate: wrote $baseline; commit it with the reason for the change"
  exit 0
fi
current="${TMPDIR:-/tmp}/counts-current-$$.json"
$bench run --counts --backend cpu --backend rayon --cells "$cells" --format json --out "$current"
$bench compare "$baseline" "$current"
