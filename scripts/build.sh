#!/usr/bin/env bash
# Configures (once) and builds mhc into build/ (override with MHC_BUILD_DIR).
# --sanitize: the ASan + UBSan build with the libFuzzer target (mhc-fuzz) in
# build-san/ (override with MHC_SAN_BUILD_DIR); see docs/Guarantees.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${MHC_BUILD_DIR:-build}
EXTRA=()
if [ "${1:-}" = "--sanitize" ]; then
  BUILD=${MHC_SAN_BUILD_DIR:-build-san}
  EXTRA=(-DMHC_SANITIZE=ON)
fi
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -G Ninja -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DLLVM_EXTERNAL_LIT=/usr/lib/llvm-22/bin/lit \
    -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22 \
    -DPython3_EXECUTABLE="$(command -v python3)" "${EXTRA[@]}" >/dev/null
fi
ninja -C "$BUILD" ${MHC_NINJA_JOBS:+-j "$MHC_NINJA_JOBS"}
