#!/usr/bin/env bash
# The README's test command: installs dependencies, builds everything and runs
# all tests (lit/FileCheck regression tests, the Python tests, then mhc used
# from an installed prefix: scripts/test-install.sh).
# GPU execution tests are marked `REQUIRES: cuda` and skip on machines without
# a visible GPU; GPU compilation (PTX/cubin generation) is tested everywhere.
#
# --sanitizers (CI passes it, .ci/run): then also the ASan + UBSan build
# (build-san/) runs the whole lit suite, and mhc's libFuzzer target replays
# the seed corpus and fuzzes for MHC_FUZZ_SECONDS (default 120) seconds
# (docs/Guarantees.md). Adds about 25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SANITIZERS=0
for arg in "$@"; do
  case "$arg" in
    --sanitizers) SANITIZERS=1 ;;
    *) echo "usage: scripts/test.sh [--sanitizers]" >&2; exit 2 ;;
  esac
done
scripts/install-deps.sh
scripts/build.sh
BUILD=${MHC_BUILD_DIR:-build}
ninja -C "$BUILD" check-mhc
python3 -m pytest -q python/tests
scripts/test-install.sh
if [ "$SANITIZERS" = 1 ]; then
  scripts/build.sh --sanitize
  ninja -C "${MHC_SAN_BUILD_DIR:-build-san}" check-mhc
  MHC_FUZZ_SEED=${MHC_FUZZ_SEED:-1} scripts/fuzz.sh "${MHC_FUZZ_SECONDS:-120}"
fi
