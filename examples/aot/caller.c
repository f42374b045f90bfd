/* A tiny C program calling an mhc AOT library: u = pre_apply(x, pre) on the GPU.
 *
 * Build (from the repository root, after building mhc; see docs/Runtime.md):
 *   python -m mhc.compiler gpu examples/aot/pre_apply_gpu.mlir -o out/libpre_apply.so --pipeline upstream
 *   clang-22 -O2 examples/aot/caller.c -Ilib/Runtime -Lout -l:libpre_apply.so -l:libmhc_runtime.so \
 *     -Wl,-rpath,'$ORIGIN' -o out/caller
 *   out/caller 1000 2560
 *
 * Device memory comes from the runtime itself (mgpuMemAlloc/mgpuMemcpy, the functions the
 * generated host code uses), so the program needs no CUDA headers or libraries. Linked against
 * libmhc_runtime_mock.so instead, it runs anywhere and only prints the calls.
 */
#include "mhc/Runtime/mhc_runtime.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* MLIR's ranked memref descriptors. */
typedef struct {
  void *allocated, *aligned;
  int64_t offset, sizes[2], strides[2];
} MemRef2;
typedef struct {
  void *allocated, *aligned;
  int64_t offset, sizes[3], strides[3];
} MemRef3;

/* The library's entry point (func.func @pre_apply with llvm.emit_c_interface) and the runtime
 * functions used for memory. */
void _mlir_ciface_pre_apply(MemRef3 *x, MemRef2 *pre, MemRef2 *u);
void *mgpuMemAlloc(uint64_t bytes, void *stream, bool hostShared);
void mgpuMemFree(void *ptr, void *stream);
void mgpuMemcpy(void *dst, void *src, size_t bytes, void *stream);

static uint16_t to_bf16(float f) { /* round to nearest even */
  uint32_t b;
  memcpy(&b, &f, 4);
  b += 0x7FFF + ((b >> 16) & 1);
  return (uint16_t)(b >> 16);
}
static float from_bf16(uint16_t h) {
  uint32_t b = (uint32_t)h << 16;
  float f;
  memcpy(&f, &b, 4);
  return f;
}
static uint64_t state = 88172645463325252ull;
static float uniform(void) { /* xorshift64, in [-1, 1) */
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return (float)((state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

int main(int argc, char **argv) {
  int64_t T = argc > 1 ? atoll(argv[1]) : 1000, C = argc > 2 ? atoll(argv[2]) : 2560, n = 4;
  size_t xBytes = (size_t)(T * n * C) * 2, preBytes = (size_t)(T * n) * 4,
         uBytes = (size_t)(T * C) * 2;
  uint16_t *x = malloc(xBytes), *u = malloc(uBytes);
  float *pre = malloc(preBytes);
  for (int64_t i = 0; i < T * n * C; ++i)
    x[i] = to_bf16(uniform());
  for (int64_t i = 0; i < T * n; ++i)
    pre[i] = 0.6f + 0.5f * uniform();
  memset(u, 0xFF, uBytes); /* NaN: every element must be written */

  void *dx = mgpuMemAlloc(xBytes, NULL, false), *dpre = mgpuMemAlloc(preBytes, NULL, false),
       *du = mgpuMemAlloc(uBytes, NULL, false);
  mgpuMemcpy(dx, x, xBytes, NULL);
  mgpuMemcpy(dpre, pre, preBytes, NULL);
  MemRef3 mx = {dx, dx, 0, {T, n, C}, {n * C, C, 1}};
  MemRef2 mpre = {dpre, dpre, 0, {T, n}, {n, 1}};
  MemRef2 mu = {du, du, 0, {T, C}, {C, 1}};
  _mlir_ciface_pre_apply(&mx, &mpre, &mu);
  mgpuMemcpy(u, du, uBytes, NULL);
  mhcRuntimeSynchronize();
  mgpuMemFree(dx, NULL);
  mgpuMemFree(dpre, NULL);
  mgpuMemFree(du, NULL);
  mhcRuntimeSynchronize();

  int status = 0;
  if (mhcRuntimeIsMock()) {
    printf("mock runtime: kernel not executed, result not checked\n");
  } else {
    double num = 0, den = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double ref = 0;
        for (int64_t i = 0; i < n; ++i)
          ref += (double)pre[t * n + i] * from_bf16(x[(t * n + i) * C + c]);
        double d = from_bf16(u[t * C + c]) - ref;
        num += isnan(d) ? INFINITY : d * d;
        den += ref * ref;
      }
    double rel = sqrt(num / den);
    status = rel <= 1e-2 ? 0 : 1;
    printf("pre_apply T=%lld C=%lld: relative error %.3e (%s, tolerance 1e-2)\n", (long long)T,
           (long long)C, rel, status ? "FAIL" : "ok");
  }
  free(x);
  free(u);
  free(pre);
  return status;
}
