#!/usr/bin/env bash
# The README's test command: installs dependencies, builds everything and runs
# all tests (lit/FileCheck regression tests, then the Python tests).
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
if [ "$SANITIZERS" = 1 ]; then
  scripts/build.sh --sanitize
  ninja -C "${MHC_SAN_BUILD_DIR:-build-san}" check-mhc
  scripts/fuzz.sh "${MHC_FUZZ_SECONDS:-120}"
fi
