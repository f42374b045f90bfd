#!/usr/bin/env bash
# Builds, on the MLIR machine, everything bench/run_on_device.sh needs on the GPU machine (which has
# no MLIR) into .rt-carry/aot (ignored by git, carried to the device):
#   MHC_BUILD_DIR=build bench/build_device_libs.sh
# the AOT examples (libpre_apply.so, caller, libsublayer_C<C>.so) and libruntime_check.so.
set -euo pipefail
out=${1:-.rt-carry/aot}
rm -rf "$out"
examples/aot/build.sh "$out" cuda
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" python3 -m mhc.compiler gpu \
  bench/runtime_check.mlir -o "$out/libruntime_check.so" --pipeline upstream
ls -la "$out"
