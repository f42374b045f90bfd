#!/usr/bin/env bash
# Builds the AOT examples into OUTDIR (default out/aot), from the repository root:
#   examples/aot/build.sh [OUTDIR] [cuda|mock]
# OUTDIR/libpre_apply.so + OUTDIR/caller: the hand-written upstream-gpu kernel and its C caller.
# OUTDIR/libsublayer_C<C>.so and libsublayer_backward_C<C>.so for C in $MHC_WIDTHS (default
# 4096 2560): the mhc sublayer and its backward (needs a working --mhc-gpu-pipeline; skipped
# with a message otherwise). Tools: MHC_BUILD_DIR (default build) holds bin/mhc-opt and lib/libmhc_runtime*.so.
set -euo pipefail
out=${1:-out/aot}
runtime=${2:-cuda}
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export MHC_BUILD_DIR=${MHC_BUILD_DIR:-build}
rtlib=libmhc_runtime.so
[ "$runtime" = mock ] && rtlib=libmhc_runtime_mock.so

python3 -m mhc.compiler gpu examples/aot/pre_apply_gpu.mlir -o "$out/libpre_apply.so" \
  --pipeline upstream --runtime "$runtime"
clang-22 -O2 -Wall examples/aot/caller.c -Iinclude -L"$out" -l:libpre_apply.so -l:$rtlib \
  -lm -Wl,-rpath,'$ORIGIN' -o "$out/caller"

# The sublayer is written for C = 4096; other widths are the same text with C and 4C replaced.
for C in ${MHC_WIDTHS:-4096 2560}; do
  src="$out/sublayer_C$C.mlir"
  sed "s/16384/$((4 * C))/g; s/4096/$C/g" examples/aot/sublayer.mlir > "$src"
  if ! python3 -m mhc.compiler gpu "$src" -o "$out/libsublayer_C$C.so" --pipeline mhc \
      --runtime "$runtime"; then
    echo "build.sh: the mhc sublayer (C=$C) did not compile (is --mhc-gpu-pipeline ready?)" >&2
  fi
  bwd="$out/sublayer_backward_C$C.mlir"
  sed "s/16384/$((4 * C))/g; s/4096/$C/g" examples/aot/sublayer_backward.mlir > "$bwd"
  if ! python3 -m mhc.compiler gpu "$bwd" -o "$out/libsublayer_backward_C$C.so" --pipeline mhc \
      --runtime "$runtime"; then
    echo "build.sh: the mhc sublayer backward (C=$C) did not compile" >&2
  fi
done
