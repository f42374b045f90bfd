#!/usr/bin/env bash
# Every GPU check and benchmark of mhc in one device call, from the repository
# root, most important first (the device time of a session is short):
#
#   bench/run_h200_suite.sh OUTDIR [steps]
#
# Carried along (built here, see bench/results/README.md): .mhc-cache (the
# kernel sets: python -m mhc.torch.build_cache), .gpu-carry (the forward
# check's cubins: test/Integration/GPU/harness/build_cubins.py), .peers (the
# public implementations, ../shared/peers) and .embed-carry (IREE models and
# whole programs: bench/iree/prepare.py, harness/build_programs.py).
# steps: any of check-backward, time-forward, bench-backward, check-torch,
# host-time, block-bench, block-compile, iree, stability, check-forward
# (default: all, in that order). STABILITY_MINUTES sets the stability study's
# minutes per variant (default 0.5; a 10-minute device call fits 2.8).
# Each step is bounded in time so that one cannot starve the others; all
# output is logged to OUTDIR/run.log, results go to OUTDIR/<step>.json.
set -uo pipefail
out=${1:?usage: bench/run_h200_suite.sh OUTDIR [steps]}
steps=${2:-check-backward,time-forward,bench-backward,check-torch,host-time,block-bench,block-compile,iree,stability,check-forward}
mkdir -p "$out"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MHC_CACHE="$PWD/.mhc-cache"
log="$out/run.log"
{ date; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv; } >>"$log" 2>&1
step() { # name seconds command...
  local name=$1 secs=$2; shift 2
  [[ ",$steps," == *",$name,"* ]] || return 0
  echo "=== $name ($(date +%T)): $*" | tee -a "$log"
  timeout "$secs" "$@" 2>&1 | tee -a "$log"
  echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}
# The C++ launch path is built for this machine's PyTorch first (~50 s), so that no
# timed or time-limited step pays for it.
MHC_NATIVE=1 python3 -m mhc.torch.build_native >>"$log" 2>&1 || echo "build_native failed (see $log)"
tiny="gpt2-tiny-orig,gpt2-tiny-mhc,gpt2-tiny-mhc-fast,llama-tiny-orig,llama-tiny-mhc,llama-tiny-mhc-fast"
step check-backward 240 python3 test/Integration/GPU/harness/check_backward.py --json "$out/check-backward.json"
step time-forward 40 python3 test/Integration/GPU/harness/check_kernels.py --cubins .gpu-carry --json "$out/time-forward.json" --skip-check
step bench-backward 130 python3 bench/bench_backward.py --json "$out/bench-backward.json" --Cs 4096 \
  --providers te_triton,torch_compile,liger_triton,torch_eager
step check-torch 60 python3 bench/check_torch_backend.py --json "$out/check-torch.json" --C 4096
step host-time 60 python3 bench/host_time.py --json "$out/host-time.json"
step block-bench 240 python3 bench/block_bench.py --json "$out/block-bench.json" --C 2560 --C 4096 \
  --modes eager --providers torch_eager,te_triton,liger_triton --reps 10 --warmup 3
step block-compile 300 python3 bench/block_bench.py --json "$out/block-compile.json" --C 4096 \
  --modes compile --providers torch_eager --reps 10 --warmup 3
step iree 100 python3 bench/iree/run_on_gpu.py --carry .embed-carry/iree --only "$tiny" --timeout 60 \
  --json "$out/iree.json"
step iree 40 python3 test/Integration/GPU/harness/run_programs.py --dir .embed-carry/programs \
  --json "$out/programs.json"
stability_minutes=${STABILITY_MINUTES:-0.5}
stability_secs=$(awk -v m="$stability_minutes" 'BEGIN { print int(3 * 60 * m + 120) }')
step stability "$stability_secs" python3 examples/stability_study.py --json "$out/stability.json" \
  --minutes "$stability_minutes" \
  --log-every 25 --eval-every 100
step check-forward 90 python3 test/Integration/GPU/harness/check_kernels.py --cubins .gpu-carry --json "$out/check-forward.json" --no-timing
exit 0
