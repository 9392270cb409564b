#!/usr/bin/env bash
# Installs what the tests and the harness need beyond Rust: Mesa's software Vulkan driver
# (lavapipe), so that the wgpu backend has an adapter on a machine without a GPU, and Valgrind,
# for the deterministic counts of `loss-bench run --counts` (and the CI gate on them).
set -euo pipefail
have_lavapipe() {
  ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && ldconfig -p | grep -q 'libvulkan.so.1'
}
missing=()
have_lavapipe || missing+=(mesa-vulkan-drivers libvulkan1)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing ${missing[*]} and cannot install them (needs root and apt-get);" \
      "wgpu tests report themselves skipped unless LOSS_WGPU_REQUIRE_ADAPTER=1," \
      "and counts tests unless CI is set" >&2
  fi
fi
