#!/usr/bin/env bash
# The README's main command: installs dependencies, builds mhc, then widens the
# bundled tiny Llama (exported by torch-mlir) into mHC form with
# --mhc-hyperconnect, runs the original and the rewritten model on the CPU path
# and prints a short summary (python/mhc/demo.py).
#   scripts/run-example.sh              the summary
#   scripts/run-example.sh FILE.mlir    verify, canonicalize and run FILE's @main
#                                       (e.g. examples/sublayer.mlir) instead
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh >/dev/null
BUILD=${MHC_BUILD_DIR:-build}
if [ $# -eq 0 ]; then
  PYTHONPATH=python exec python3 -m mhc.demo --mhc-opt "$BUILD/bin/mhc-opt"
fi
LIB=/usr/lib/llvm-22/lib
"$BUILD/bin/mhc-opt" "$1" --canonicalize --mhc-cpu-pipeline |
  /usr/lib/llvm-22/bin/mlir-runner -e main --entry-point-result=void \
    --shared-libs="$LIB/libmlir_runner_utils.so,$LIB/libmlir_c_runner_utils.so"
