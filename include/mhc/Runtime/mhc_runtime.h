/*===- mhc_runtime.h - C API of libmhc_runtime ------------------*- C -*-===//
 *
 * libmhc_runtime.so implements the mgpu* functions that MLIR's gpu-to-llvm
 * host code calls (module load, launch, streams, events, memory) on top of the
 * CUDA driver, which it dlopen()s lazily ("libcuda.so.1", or $MHC_LIBCUDA).
 * libmhc_runtime_mock.so exports the same symbols, keeps memory on the host
 * and prints every call instead of touching a GPU.
 *
 * This header is the small control surface on top of the mgpu* ABI. See
 * docs/Runtime.md for the full contract.
 *===----------------------------------------------------------------------===*/
#ifndef MHC_RUNTIME_H
#define MHC_RUNTIME_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error handling. In MHC_ERRORS_ABORT mode (the default) a failing CUDA call
 * prints "mhc_runtime: <call> failed: <CUDA_ERROR_NAME> (<description>)" and
 * calls abort(). In MHC_ERRORS_STICKY mode the first failure is printed and
 * recorded; from then on every mgpu* call is a no-op (returns null) until
 * mhcRuntimeClearError(), so the caller can inspect it and carry on.
 * The environment variable MHC_RUNTIME_ERRORS=sticky selects sticky mode at
 * load time. */
enum { MHC_ERRORS_ABORT = 0, MHC_ERRORS_STICKY = 1 };
void mhcRuntimeSetErrorMode(int mode);
/* CUresult of the first failure since the last clear (0: none). */
int mhcRuntimeGetLastError(void);
/* "<call> failed: <NAME> (<description>)", or "" when no error is pending. */
const char *mhcRuntimeGetErrorMessage(void);
void mhcRuntimeClearError(void);

/* The stream generated code runs on, per calling thread. The host code's
 * mgpuStreamCreate() returns this stream instead of creating one (and
 * mgpuStreamDestroy() never destroys anything); calls given a null stream use
 * it too. mhcRuntimeSetStream takes a CUstream, e.g.
 * torch.cuda.current_stream().cuda_stream; NULL there means CUDA's legacy
 * default stream, as in PyTorch. mhcRuntimeUseOwnStream() goes back to the
 * runtime's own per-thread non-blocking stream (the initial state).
 * mhcRuntimeGetStream() returns the stream in use. */
void mhcRuntimeSetStream(void *stream);
void mhcRuntimeUseOwnStream(void);
void *mhcRuntimeGetStream(void);

/* Stream-ordered mode (off by default): when on, mgpuStreamSynchronize() on a
 * caller-provided stream returns at once, so a generated function only
 * enqueues its work, like a PyTorch op. Only valid when the function's results
 * are read on the device (true for the mhc pipelines: every buffer is a
 * device memref the caller owns). */
void mhcRuntimeSetStreamOrdered(int on);

/* Waits for all work on the current stream (mhcRuntimeGetStream()). */
void mhcRuntimeSynchronize(void);

/* One launch of an mhc kernel with the kernel ABI of docs/GPU.md, without the
 * caller building memref descriptors: the parameters are (int64 T, then for
 * each of the nbuf buffers a 1-D descriptor {ptrs[b], ptrs[b], 0, numels[b],
 * 1}). `function` comes from mgpuModuleGetFunction; grid and block dimensions
 * and `smem` (dynamic shared memory bytes; above 48 KiB is opted in) are as
 * for mgpuLaunchKernel, and an empty grid launches nothing. `stream` is used
 * as given: NULL is CUDA's legacy default stream (PyTorch's default stream),
 * not the runtime's current stream. No host synchronisation. nbuf <= 64.
 * Returns 0, or (sticky mode) the CUresult of the failure, also readable with
 * mhcRuntimeGetLastError(); in abort mode a failure aborts. */
int mhcLaunchFlat(void *function, int64_t gridX, int64_t gridY, int64_t gridZ,
                  int64_t blockX, int64_t blockY, int64_t blockZ, int32_t smem,
                  void *stream, int64_t T, int32_t nbuf, void *const *ptrs,
                  const int64_t *numels);

/* 1 in libmhc_runtime_mock.so, 0 in libmhc_runtime.so. */
int mhcRuntimeIsMock(void);

#ifdef __cplusplus
}
#endif

#endif /* MHC_RUNTIME_H */
