#!/usr/bin/env bash
# The README's main command: installs dependencies, builds mhc, then verifies,
# canonicalizes and runs the bundled mHC sublayer on the CPU and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh >/dev/null
BUILD=${MHC_BUILD_DIR:-build}
LIB=/usr/lib/llvm-22/lib
EXAMPLE=${1:-examples/sublayer.mlir}
"$BUILD/bin/mhc-opt" "$EXAMPLE" --canonicalize --mhc-cpu-pipeline |
  /usr/lib/llvm-22/bin/mlir-runner -e main --entry-point-result=void \
    --shared-libs="$LIB/libmlir_runner_utils.so,$LIB/libmlir_c_runner_utils.so"
