#!/usr/bin/env bash
# Checks mhc as a dependency, from an installed prefix only (docs/Embedding.md):
#   1. `cmake --install` of the build into a temporary prefix;
#   2. examples/embedding configured with find_package(MHC) against that
#      prefix, built, and run on the exported GPT-2 (rewrite -> fuse -> lower);
#   3. the C API test compiled by a plain C compiler against the prefix;
#   4. stock mlir-opt loading the installed plugin;
#   5. the installed mhc-opt.
# Nothing may come from the build or source tree (checked on the consumer's
# build files). Run by scripts/test.sh after the lit and Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${MHC_BUILD_DIR:-build}
BUILD_ABS=$(cd "$BUILD" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mhc-install-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PREFIX=$WORK/prefix
LLVM=/usr/lib/llvm-22
fail() { echo "test-install: FAIL: $*" >&2; exit 1; }

echo "test-install: cmake --install $BUILD --prefix $PREFIX"
cmake --install "$BUILD" --prefix "$PREFIX" >/dev/null
for f in lib/cmake/mhc/MHCConfig.cmake lib/cmake/mhc/MHCTargets.cmake bin/mhc-opt \
         lib/MHCPlugin.so lib/libMHCCAPI.so lib/libmhc_runtime.so lib/libMHCDialect.a \
         include/mhc/Dialect/MHC/IR/MHCOps.h include/mhc/Dialect/MHC/IR/MHCOps.h.inc \
         include/mhc-c/Dialects.h include/mhc-c/Passes.h include/mhc/Runtime/mhc_runtime.h; do
  [ -e "$PREFIX/$f" ] || fail "$f is not installed"
done

echo "test-install: examples/embedding against the prefix"
cmake -G Ninja -S examples/embedding -B "$WORK/embed" -DMHC_DIR="$PREFIX/lib/cmake/mhc" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++-22 >"$WORK/configure.log" \
  || { cat "$WORK/configure.log"; fail "configuring examples/embedding"; }
ninja -C "$WORK/embed" >"$WORK/build.log" || { cat "$WORK/build.log"; fail "building examples/embedding"; }
if grep -q -e "$BUILD_ABS" -e "$ROOT/include" -e "$ROOT/lib" "$WORK/embed/build.ninja"; then
  fail "the consumer's build refers to the mhc build or source tree"
fi
"$WORK/embed/mhc-embed" test/Transforms/Inputs/gpt2-tiny.mlir | tee "$WORK/embed.out"
grep -q "4 residual block(s) rewritten, 12 parameter argument(s) added" "$WORK/embed.out" \
  || fail "mhc-embed: hyperconnect"
grep -q "post x4" "$WORK/embed.out" && grep -q "pre x4" "$WORK/embed.out" || fail "mhc-embed: fuse"
grep -q "lowering (linalg): 0 mhc op(s) left" "$WORK/embed.out" || fail "mhc-embed: lowering"
"$WORK/embed/mhc-embed" test/Transforms/Inputs/llama-tiny.mlir --lower=cpu >"$WORK/cpu.out"
grep -q "lowering (cpu): 0 mhc op(s) left; linalg.generic x0" "$WORK/cpu.out" \
  || { cat "$WORK/cpu.out"; fail "mhc-embed --lower=cpu"; }
if "$WORK/embed/mhc-embed" test/Transforms/Inputs/llama-tiny.mlir --lower=bogus 2>/dev/null; then
  fail "mhc-embed accepted --lower=bogus"
fi

echo "test-install: the C API test against the prefix"
clang-22 -std=c11 test/CAPI/mhc-capi-test.c -I"$PREFIX/include" -I"$LLVM/include" \
  -L"$PREFIX/lib" -lMHCCAPI -Wl,-rpath,"$PREFIX/lib" -o "$WORK/capi-test"
"$WORK/capi-test" 2>&1 | "$LLVM/bin/FileCheck" test/CAPI/mhc-capi-test.c

echo "test-install: stock mlir-opt with the installed plugin"
"$LLVM/bin/mlir-opt" --load-dialect-plugin="$PREFIX/lib/MHCPlugin.so" \
  --load-pass-plugin="$PREFIX/lib/MHCPlugin.so" test/Transforms/Inputs/llama-tiny.mlir \
  --pass-pipeline="builtin.module(mhc-hyperconnect{streams=2}, func.func(mhc-fuse))" \
  | grep -c "mhc.fused" | grep -qx 8 || fail "mlir-opt + plugin: expected 8 mhc.fused groups"

echo "test-install: the installed mhc-opt"
"$PREFIX/bin/mhc-opt" test/Dialect/MHC/ops.mlir >/dev/null || fail "installed mhc-opt"
echo "test-install: PASS"
