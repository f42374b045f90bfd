#!/usr/bin/env bash
# Configures (once) and builds mhc into build/ (override with MHC_BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${MHC_BUILD_DIR:-build}
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -G Ninja -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DLLVM_EXTERNAL_LIT=/usr/lib/llvm-22/bin/lit \
    -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22 \
    -DPython3_EXECUTABLE="$(command -v python3)" >/dev/null
fi
ninja -C "$BUILD"
