#!/usr/bin/env bash
# On the GPU machine: the GPU checks of docs/Embedding.md, results under OUT.
#   iree-h200.json      bench/iree/run_on_gpu.py: IREE models (orig / mhc / mhc-fast) against
#                       the CPU path, forward times
#   programs-h200.json  test/Integration/GPU/harness/run_programs.py: whole programs through
#                       --mhc-gpu-pipeline against the CPU path
# Needs .embed-carry/ from this machine (bench/iree/prepare.py, build_programs.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: bench/iree/run_h200.sh OUT_DIR}
mkdir -p "$OUT"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 bench/iree/run_on_gpu.py --carry .embed-carry/iree --json "$OUT/iree-h200.json" 2>&1 \
  | tee "$OUT/iree-h200.log"
iree=${PIPESTATUS[0]}
python3 test/Integration/GPU/harness/run_programs.py --dir .embed-carry/programs \
  --json "$OUT/programs-h200.json" 2>&1 | tee "$OUT/programs-h200.log"
programs=${PIPESTATUS[0]}
echo "run_h200: iree exit $iree, programs exit $programs"
[ "$iree" -eq 0 ] && [ "$programs" -eq 0 ]
