#!/usr/bin/env bash
# Installs what the tests and the harness need beyond Rust: Mesa's software Vulkan driver
# (lavapipe), so that the wgpu backend has an adapter on a machine without a GPU.
set -euo pipefail
have_lavapipe() {
  ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && ldconfig -p | grep -q 'libvulkan.so.1'
}
if ! have_lavapipe; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing mesa-vulkan-drivers libvulkan1" >&2
    apt-get update -qq
    apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "setup: no Vulkan driver and cannot install one (needs root and apt-get);" \
      "wgpu tests will report themselves skipped unless LOSS_WGPU_REQUIRE_ADAPTER=1" >&2
  fi
fi
