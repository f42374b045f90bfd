#!/usr/bin/env bash
# The README's test command: installs dependencies, builds everything and runs
# all tests (lit/FileCheck regression tests, the Python tests, then mhc used
# from an installed prefix: scripts/test-install.sh).
# GPU execution tests are marked `REQUIRES: cuda` and skip on machines without
# a visible GPU; GPU compilation (PTX/cubin generation) is tested everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
BUILD=${MHC_BUILD_DIR:-build}
ninja -C "$BUILD" check-mhc
python3 -m pytest -q python/tests
scripts/test-install.sh
