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

/* 1 in libmhc_runtime_mock.so, 0 in libmhc_runtime.so. */
int mhcRuntimeIsMock(void);

#ifdef __cplusplus
}
#endif

#endif /* MHC_RUNTIME_H */
