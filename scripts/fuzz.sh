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
# MHC_FUZZ_BIN: a prebuilt mhc-fuzz (e.g. carried to a machine without MLIR,
# with its shared libraries on LD_LIBRARY_PATH); then nothing is built.
if [ -z "${MHC_FUZZ_BIN:-}" ]; then
  scripts/build.sh --sanitize >/dev/null
  ninja -C "$BUILD" mhc-fuzz >/dev/null
fi
BIN=${MHC_FUZZ_BIN:-$PWD/$BUILD/bin/mhc-fuzz}
FUZZ="$PWD/$BUILD/fuzz"
rm -rf "$FUZZ/seeds"          # seeds are derived: rewrite them from test/
mkdir -p "$FUZZ/seeds" "$FUZZ/corpus" "$FUZZ/artifacts" "$FUZZ/logs"
python3 test/fuzz/make_corpus.py "$FUZZ/seeds"
# Leak checks (LeakSanitizer) run when each fuzzing process exits: the MLIR
# context is rebuilt per input, so memory lost by any input is unreachable
# then. libFuzzer's per-input leak check (MHC_FUZZ_LEAKS_PER_INPUT=1) names
# the input but costs ~8x the executions: an input where LLVM's lazily built
# statics grow triggers a whole-heap scan.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
# MHC_FUZZ_SEED fixes libFuzzer's random seed (the test command uses 1, so that
# every run walks the same sequence of inputs); unset, each run differs.
# The hang limit is wall time: MHC_FUZZ_TIMEOUT raises it where the fuzzer
# shares the CPU (a starved worker is not a hang).
ARGS=(-dict="$PWD/test/fuzz/mhc.dict" -max_total_time="$SECONDS_TO_RUN"
      -timeout="${MHC_FUZZ_TIMEOUT:-60}"
      -seed="${MHC_FUZZ_SEED:-0}" -detect_leaks="${MHC_FUZZ_LEAKS_PER_INPUT:-0}"
      -rss_limit_mb=3072 -max_len=65536 -print_final_stats=1
      -artifact_prefix="$FUZZ/artifacts/" -report_slow_units=60)
START="$FUZZ/.started"
touch "$START"
if [ "$JOBS" -gt 1 ]; then
  # Parallel workers write fuzz-<i>.log into $FUZZ/logs (libFuzzer names
  # them); their statistics are summed at the end.
  rm -f "$FUZZ"/logs/fuzz-*.log
  (cd "$FUZZ/logs" && "$BIN" "${ARGS[@]}" -jobs="$JOBS" -workers="$JOBS" \
       "$FUZZ/corpus" "$FUZZ/seeds") || true
  grep -a -h -E "^stat::|ERROR|mhc-fuzz: BUG" "$FUZZ"/logs/fuzz-*.log || true
  awk '/stat::number_of_executed_units/ {n += $2} END {print "executions (all workers):", n}' \
      "$FUZZ"/logs/fuzz-*.log
  # A worker that stopped early (crash, or a leak reported at its exit).
  if grep -a -q -E "ERROR|mhc-fuzz: BUG" "$FUZZ"/logs/fuzz-*.log; then RC=1; else RC=0; fi
else
  RC=0
  "$BIN" "${ARGS[@]}" "$FUZZ/corpus" "$FUZZ/seeds" || RC=$?
fi
# A crash, hang, out-of-memory or broken promise leaves its input here; a leak
# found at exit only makes the fuzzer fail.
# (slow-unit-* files are not findings: libFuzzer keeps the slowest input.)
FOUND=$(find "$FUZZ/artifacts" -type f -newer "$START" ! -name 'slow-unit-*' | sort)
if [ -n "$FOUND" ] || [ "$RC" -ne 0 ]; then
  echo "fuzz.sh: FAILED (exit $RC); reproducers in $FUZZ/artifacts:" >&2
  echo "${FOUND:-(none)}" >&2
  exit 1
fi
echo "fuzz.sh: no crash, hang, leak or broken promise"
