#!/usr/bin/env bash
# Runs mhc's libFuzzer target (tools/mhc-fuzz) for a bounded time:
#   scripts/fuzz.sh [SECONDS] [JOBS]        default: 60 seconds, 1 job
# Builds the ASan + UBSan build (build-san/, scripts/build.sh --sanitize),
# writes the seed corpus from the lit tests (test/fuzz/make_corpus.py), and
# fuzzes with the dialect's dictionary (test/fuzz/mhc.dict). The corpus it
# grows is kept in build-san/fuzz/corpus; a crash, hang, leak, sanitizer
# report or broken promise (docs/Guarantees.md) leaves its input in
# build-san/fuzz/artifacts/ and makes this script fail. The statistics
# (executions, coverage) are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-60}
JOBS=${2:-1}
BUILD=${MHC_SAN_BUILD_DIR:-build-san}
scripts/build.sh --sanitize >/dev/null
ninja -C "$BUILD" mhc-fuzz >/dev/null
FUZZ="$BUILD/fuzz"
mkdir -p "$FUZZ/seeds" "$FUZZ/corpus" "$FUZZ/artifacts"
python3 test/fuzz/make_corpus.py "$FUZZ/seeds"
# Leak checks run at exit and per input; the MLIR context is rebuilt per
# input, so what stays allocated across inputs is a leak.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
# MHC_FUZZ_SEED fixes libFuzzer's random seed (the test command uses 1, so that
# every run walks the same sequence of inputs); unset, each run differs.
ARGS=(-dict=test/fuzz/mhc.dict -max_total_time="$SECONDS_TO_RUN" -timeout=60
      -seed="${MHC_FUZZ_SEED:-0}"
      -rss_limit_mb=3072 -max_len=65536 -print_final_stats=1
      -artifact_prefix="$FUZZ/artifacts/")
if [ "$JOBS" -gt 1 ]; then
  ARGS+=(-jobs="$JOBS" -workers="$JOBS")
fi
"$BUILD/bin/mhc-fuzz" "${ARGS[@]}" "$FUZZ/corpus" "$FUZZ/seeds"
