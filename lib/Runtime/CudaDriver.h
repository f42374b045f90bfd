//===- CudaDriver.h - the slice of the CUDA driver API we use ----*- C++ -*-===//
//
// Own declarations of the few driver types, constants and entry points the
// runtime needs, so that it builds without the CUDA toolkit and loads without
// a driver. The entry points are resolved from libcuda.so.1 with dlsym on
// first use; the values below are the driver ABI (cuda.h, CUDA 12/13).
//
//===----------------------------------------------------------------------===//
#ifndef MHC_RUNTIME_CUDADRIVER_H
#define MHC_RUNTIME_CUDADRIVER_H

#include <cstddef>
#include <cstdint>

namespace mhc::cuda {

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = struct CUctx_st *;
using CUmodule = struct CUmod_st *;
using CUfunction = struct CUfunc_st *;
using CUstream = struct CUstream_st *;
using CUevent = struct CUevent_st *;
using CUmemoryPool = struct CUmemPoolHandle_st *;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr CUresult CUDA_ERROR_INVALID_VALUE = 1;
constexpr CUresult CUDA_ERROR_NOT_INITIALIZED = 3;
constexpr unsigned CU_STREAM_NON_BLOCKING = 0x1;
constexpr unsigned CU_EVENT_DISABLE_TIMING = 0x2;
constexpr unsigned CU_MEM_ATTACH_GLOBAL = 0x1;
constexpr int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
constexpr int CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4;
constexpr int CU_JIT_ERROR_LOG_BUFFER = 5;
constexpr int CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6;
constexpr int CU_JIT_OPTIMIZATION_LEVEL = 7;
constexpr int CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4;

// CUlaunchAttribute: a 4-byte id padded to 8, then a 64-byte value union.
struct LaunchAttribute {
  int id;
  char pad[4];
  union {
    char bytes[64];
    struct {
      unsigned x, y, z;
    } clusterDim;
  } value;
};
static_assert(sizeof(LaunchAttribute) == 72, "CUlaunchAttribute layout");

struct LaunchConfig {
  unsigned gridDimX, gridDimY, gridDimZ;
  unsigned blockDimX, blockDimY, blockDimZ;
  unsigned sharedMemBytes;
  CUstream hStream;
  LaunchAttribute *attrs;
  unsigned numAttrs;
};

// CUtensorMap is an opaque, 64-byte aligned 128-byte blob.
struct alignas(64) TensorMap {
  uint64_t opaque[16];
};

// One function pointer per driver entry point; the string is the exported
// (versioned) symbol name.
#define MHC_CUDA_DRIVER_FUNCTIONS(X)                                           \
  X(cuInit, "cuInit", CUresult (*)(unsigned))                                  \
  X(cuGetErrorName, "cuGetErrorName", CUresult (*)(CUresult, const char **))   \
  X(cuGetErrorString, "cuGetErrorString",                                      \
    CUresult (*)(CUresult, const char **))                                     \
  X(cuDeviceGet, "cuDeviceGet", CUresult (*)(CUdevice *, int))                 \
  X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain",                      \
    CUresult (*)(CUcontext *, CUdevice))                                       \
  X(cuDeviceGetDefaultMemPool, "cuDeviceGetDefaultMemPool",                    \
    CUresult (*)(CUmemoryPool *, CUdevice))                                    \
  X(cuMemPoolSetAttribute, "cuMemPoolSetAttribute",                            \
    CUresult (*)(CUmemoryPool, int, void *))                                   \
  X(cuCtxGetCurrent, "cuCtxGetCurrent", CUresult (*)(CUcontext *))             \
  X(cuCtxPushCurrent, "cuCtxPushCurrent_v2", CUresult (*)(CUcontext))          \
  X(cuCtxPopCurrent, "cuCtxPopCurrent_v2", CUresult (*)(CUcontext *))          \
  X(cuCtxSynchronize, "cuCtxSynchronize", CUresult (*)())                      \
  X(cuModuleLoadData, "cuModuleLoadData",                                      \
    CUresult (*)(CUmodule *, const void *))                                    \
  X(cuModuleLoadDataEx, "cuModuleLoadDataEx",                                  \
    CUresult (*)(CUmodule *, const void *, unsigned, int *, void **))          \
  X(cuModuleUnload, "cuModuleUnload", CUresult (*)(CUmodule))                  \
  X(cuModuleGetFunction, "cuModuleGetFunction",                                \
    CUresult (*)(CUfunction *, CUmodule, const char *))                        \
  X(cuFuncSetAttribute, "cuFuncSetAttribute",                                  \
    CUresult (*)(CUfunction, int, int))                                        \
  X(cuLaunchKernel, "cuLaunchKernel",                                          \
    CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned,           \
                 unsigned, unsigned, unsigned, CUstream, void **, void **))    \
  X(cuLaunchKernelEx, "cuLaunchKernelEx",                                      \
    CUresult (*)(const LaunchConfig *, CUfunction, void **, void **))          \
  X(cuStreamCreate, "cuStreamCreate", CUresult (*)(CUstream *, unsigned))      \
  X(cuStreamDestroy, "cuStreamDestroy_v2", CUresult (*)(CUstream))             \
  X(cuStreamSynchronize, "cuStreamSynchronize", CUresult (*)(CUstream))        \
  X(cuStreamWaitEvent, "cuStreamWaitEvent",                                    \
    CUresult (*)(CUstream, CUevent, unsigned))                                 \
  X(cuEventCreate, "cuEventCreate", CUresult (*)(CUevent *, unsigned))         \
  X(cuEventDestroy, "cuEventDestroy_v2", CUresult (*)(CUevent))                \
  X(cuEventRecord, "cuEventRecord", CUresult (*)(CUevent, CUstream))           \
  X(cuEventSynchronize, "cuEventSynchronize", CUresult (*)(CUevent))           \
  X(cuMemAllocAsync, "cuMemAllocAsync",                                        \
    CUresult (*)(CUdeviceptr *, size_t, CUstream))                             \
  X(cuMemFreeAsync, "cuMemFreeAsync", CUresult (*)(CUdeviceptr, CUstream))     \
  X(cuMemAllocManaged, "cuMemAllocManaged",                                    \
    CUresult (*)(CUdeviceptr *, size_t, unsigned))                             \
  X(cuMemAlloc, "cuMemAlloc_v2", CUresult (*)(CUdeviceptr *, size_t))          \
  X(cuMemFree, "cuMemFree_v2", CUresult (*)(CUdeviceptr))                      \
  X(cuMemcpy, "cuMemcpy", CUresult (*)(CUdeviceptr, CUdeviceptr, size_t))      \
  X(cuMemcpyAsync, "cuMemcpyAsync",                                            \
    CUresult (*)(CUdeviceptr, CUdeviceptr, size_t, CUstream))                  \
  X(cuMemsetD32Async, "cuMemsetD32Async",                                      \
    CUresult (*)(CUdeviceptr, unsigned, size_t, CUstream))                     \
  X(cuMemsetD16Async, "cuMemsetD16Async",                                      \
    CUresult (*)(CUdeviceptr, unsigned short, size_t, CUstream))               \
  X(cuMemHostRegister, "cuMemHostRegister_v2",                                 \
    CUresult (*)(void *, size_t, unsigned))                                    \
  X(cuMemHostUnregister, "cuMemHostUnregister", CUresult (*)(void *))          \
  X(cuTensorMapEncodeTiled, "cuTensorMapEncodeTiled",                          \
    CUresult (*)(TensorMap *, int, unsigned, void *, const uint64_t *,         \
                 const uint64_t *, const unsigned *, const unsigned *, int,    \
                 int, int, int))

template <typename T> using Id = T; // lets "R (*)(A...)" declare a member

struct Driver {
#define MHC_DECLARE(field, symbol, type) Id<type> field = nullptr;
  MHC_CUDA_DRIVER_FUNCTIONS(MHC_DECLARE)
#undef MHC_DECLARE
};

} // namespace mhc::cuda

#endif // MHC_RUNTIME_CUDADRIVER_H
