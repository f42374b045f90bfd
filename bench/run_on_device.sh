#!/usr/bin/env bash
# Runs the mHC sublayer benchmark on the GPU machine, from the repository root.
#
#   MHC_GIT_COMMIT=$(git rev-parse HEAD) bench/run_on_device.sh OUTDIR [extra bench_sublayer.py args]
#
# Expects the AOT libraries (built on the MLIR machine, see docs/Runtime.md) in .rt-carry/aot:
# libmhc_runtime.so, libpre_apply.so (runtime check) and libsublayer_C<C>.so (generated kernels).
# Writes OUTDIR/sublayer-h200.json, OUTDIR/bench.log and OUTDIR/nvidia-smi.txt.
set -euo pipefail
out_dir=${1:?usage: run_on_device.sh OUTDIR [args]}
shift
mkdir -p "$out_dir"
export PYTHONPATH="$PWD/python:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export MHC_BENCH_WRAPPER="bench/run_on_device.sh $out_dir $*"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv > "$out_dir/nvidia-smi.txt" || true
# The C route: examples/aot/caller.c against the real runtime.
if [ -x .rt-carry/aot/caller ]; then
  for shape in "1 100" "1000 2560" "16384 4096"; do
    .rt-carry/aot/caller $shape 2>&1 | tee -a "$out_dir/bench.log"
  done
fi
python3 bench/bench_sublayer.py --aot-dir .rt-carry/aot --check-runtime \
  --out "$out_dir/sublayer-h200.json" "$@" 2>&1 | tee -a "$out_dir/bench.log"
