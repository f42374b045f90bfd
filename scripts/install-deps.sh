#!/usr/bin/env bash
# Installs everything mhc needs on a fresh Debian 12 machine: the LLVM/MLIR 22
# packages, Ninja and the Python packages that python/ and the tests use.
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(llvm-22-dev llvm-22-tools libmlir-22-dev mlir-22-tools clang-22 lld-22
              ninja-build cmake g++    # g++: torch.compile (inductor) builds CPU kernels in the tests
              libclang-rt-22-dev)      # ASan/UBSan/libFuzzer runtimes: scripts/test.sh --sanitizers

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "mhc: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import numpy, pytest, torch" 2>/dev/null; then
  echo "mhc: installing Python packages from python/requirements.txt"
  "$PYTHON" -m pip install -q -r python/requirements.txt
fi
