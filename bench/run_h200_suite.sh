#!/usr/bin/env bash
# The GPU checks and benchmarks of the backward kernels (and the forward kernel
# check), in one device call, from the repository root:
#
#   bench/run_backward_on_device.sh OUTDIR [steps]
#
# Carried along (built here, see bench/results/README.md): .mhc-cache (the
# kernel sets: python -m mhc.torch.build_cache), .gpu-carry (the forward check's
# cubins: test/Integration/GPU/harness/build_cubins.py) and .peers (the public
# implementations, ../shared/peers). steps: any of
# check-backward,bench-backward,check-forward,time-forward,check-torch
# (default: all). Each step is bounded in time so that one cannot starve the
# others; everything is logged to OUTDIR/run.log.
set -uo pipefail
out=${1:?usage: run_backward_on_device.sh OUTDIR [steps]}
steps=${2:-check-backward,bench-backward,check-forward,time-forward,check-torch}
mkdir -p "$out"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MHC_CACHE="$PWD/.mhc-cache"
log="$out/run.log"
{ date; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv; } >>"$log" 2>&1
step() { # name seconds command...
  local name=$1 secs=$2; shift 2
  [[ ",$steps," == *",$name,"* ]] || return 0
  echo "=== $name ($(date +%T))" | tee -a "$log"
  timeout "$secs" "$@" 2>&1 | tee -a "$log"
  echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}
step check-backward 200 python3 test/Integration/GPU/harness/check_backward.py --json "$out/check-backward.json"
step bench-backward 330 python3 bench/bench_backward.py --json "$out/backward.json"
step check-forward 130 python3 test/Integration/GPU/harness/check_kernels.py --cubins .gpu-carry --json "$out/check-forward.json" --no-timing
step time-forward 80 python3 test/Integration/GPU/harness/check_kernels.py --cubins .gpu-carry --json "$out/time-forward.json" --skip-check
step check-torch 170 python3 bench/check_torch_backend.py --json "$out/check-torch.json" --C 4096
exit 0
