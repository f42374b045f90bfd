//===- CudaRuntime.cpp - mgpu* on the CUDA driver (libmhc_runtime) --------===//
//
// The functions that MLIR 22's gpu-to-llvm host code and gpu.binary
// translation call, implemented on the CUDA driver API, which is dlopen()ed on
// first use so the library links and loads on machines without a GPU.
//
// Policy (docs/Runtime.md has the user-facing version):
//  * Everything runs in the primary context of the default device, the one
//    PyTorch and the CUDA runtime use, so pointers are shared with them.
//  * One stream per thread: mgpuStreamCreate() hands out the caller's stream
//    (mhcRuntimeSetStream) or the runtime's own; nothing is created per call.
//    Collapsing the host code's streams onto one keeps every dependency.
//  * Device allocations are stream-ordered (cuMemAllocAsync/cuMemFreeAsync
//    from the device's default pool, which keeps freed memory cached).
//  * Any failing driver call is reported with the call, the CUDA error name
//    and what it was doing; then abort() or, in sticky mode, an error the C
//    API exposes.
//
//===----------------------------------------------------------------------===//

#include "CudaDriver.h"
#include "FlatLaunch.h"
#include "mhc/Runtime/mhc_runtime.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#define MHC_EXPORT extern "C" __attribute__((visibility("default")))

using namespace mhc::cuda;

namespace {

//===----------------------------------------------------------------------===//
// Driver loading
//===----------------------------------------------------------------------===//

// Codes below 0 are ours: the driver could not be loaded / lacks a symbol.
constexpr CUresult kNoDriver = -2;
constexpr CUresult kNoSymbol = -1;

// State that must outlive static destruction is never destroyed: generated
// code unloads its module from a global destructor, and other libraries
// (PyTorch freeing buffers) may call in from theirs.
template <typename T> T &immortal() { return *new T(); }

struct LoadedDriver {
  Driver fns;
  bool loaded = false;
  std::string loadError;
};

const LoadedDriver &driver() {
  static const LoadedDriver &instance = *new LoadedDriver([] {
    LoadedDriver d;
    const char *path = getenv("MHC_LIBCUDA");
    if (!path || !*path)
      path = "libcuda.so.1";
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char *err = dlerror();
      d.loadError = std::string("dlopen(\"") + path + "\"): " +
                    (err ? err : "unknown error");
      return d;
    }
#define MHC_RESOLVE(field, symbol, type)                                       \
  d.fns.field = reinterpret_cast<type>(dlsym(handle, symbol));
    MHC_CUDA_DRIVER_FUNCTIONS(MHC_RESOLVE)
#undef MHC_RESOLVE
    d.loaded = true;
    return d;
  }());
  return instance;
}

// Calls the driver entry point `field`; kNoDriver / kNoSymbol when missing.
template <typename Fn, typename... Args>
CUresult cu(Fn Driver::*field, Args... args) {
  const LoadedDriver &d = driver();
  if (!d.loaded)
    return kNoDriver;
  Fn fn = d.fns.*field;
  if (!fn)
    return kNoSymbol;
  return fn(args...);
}

//===----------------------------------------------------------------------===//
// Errors
//===----------------------------------------------------------------------===//

std::atomic<int> errorMode{-1}; // -1: not read from the environment yet
std::atomic<int> stickyCode{0};
std::mutex errorMutex;
std::string &stickyMessage = immortal<std::string>();

int currentErrorMode() {
  int mode = errorMode.load();
  if (mode < 0) {
    const char *env = getenv("MHC_RUNTIME_ERRORS");
    mode = (env && !strcmp(env, "sticky")) ? MHC_ERRORS_STICKY
                                           : MHC_ERRORS_ABORT;
    int expected = -1;
    errorMode.compare_exchange_strong(expected, mode);
    mode = errorMode.load();
  }
  return mode;
}

// True while a sticky error is pending: every entry point then does nothing.
bool pending() { return stickyCode.load(std::memory_order_relaxed) != 0; }

// Names of the codes that mean "no usable GPU here", for drivers that cannot
// name them (the toolkit's stub libcuda.so answers every call with 34).
const char *knownErrorName(CUresult code) {
  switch (code) {
  case 34:
    return "CUDA_ERROR_STUB_LIBRARY (libcuda is the CUDA toolkit's stub, not "
           "a driver: no NVIDIA driver is installed)";
  case 35:
    return "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH (the CUDA driver and the "
           "kernel module versions differ)";
  case 100:
    return "CUDA_ERROR_NO_DEVICE (no CUDA-capable device is present)";
  case 999:
    return "CUDA_ERROR_UNKNOWN (unknown error)";
  default:
    return nullptr;
  }
}

std::string describe(CUresult code) {
  if (code == kNoDriver)
    return "CUDA driver not available (" + driver().loadError + ")";
  if (code == kNoSymbol)
    return "entry point not exported by the CUDA driver";
  const char *name = nullptr, *text = nullptr;
  if (cu(&Driver::cuGetErrorName, code, &name) != CUDA_SUCCESS || !name) {
    if (const char *known = knownErrorName(code))
      return known;
    return "CUresult " + std::to_string(code) + " (the driver cannot name it)";
  }
  if (cu(&Driver::cuGetErrorString, code, &text) != CUDA_SUCCESS || !text)
    text = "no description";
  return std::string(name) + " (" + text + ")";
}

void report(const char *call, CUresult code, const std::string &detail) {
  // Sticky mode keeps the first error; later failures are its consequences.
  if (pending())
    return;
  std::string msg = std::string(call);
  if (!detail.empty())
    msg += " [" + detail + "]";
  msg += " failed: " + describe(code);
  fprintf(stderr, "mhc_runtime: %s\n", msg.c_str());
  fflush(stderr);
  if (currentErrorMode() == MHC_ERRORS_ABORT)
    abort();
  std::lock_guard<std::mutex> lock(errorMutex);
  if (stickyCode.load() == 0) {
    stickyMessage = msg;
    // Our own negative codes map to CUDA_ERROR_NOT_INITIALIZED for callers.
    stickyCode.store(code > 0 ? code : CUDA_ERROR_NOT_INITIALIZED);
  }
}

// Checks a driver result; `detail` (a callable returning std::string) is only
// evaluated on failure.
template <typename Detail>
bool check(CUresult code, const char *call, Detail detail) {
  if (code == CUDA_SUCCESS)
    return true;
  report(call, code, detail());
  return false;
}
bool check(CUresult code, const char *call) {
  return check(code, call, [] { return std::string(); });
}

//===----------------------------------------------------------------------===//
// Contexts and streams
//===----------------------------------------------------------------------===//

constexpr int kMaxDevices = 64;
std::atomic<int> defaultDevice{0};
std::mutex contextMutex;
CUcontext primaryContexts[kMaxDevices] = {};
bool poolConfigured[kMaxDevices] = {};

CUcontext primaryContext() {
  int dev = defaultDevice.load();
  std::lock_guard<std::mutex> lock(contextMutex);
  if (primaryContexts[dev])
    return primaryContexts[dev];
  if (!check(cu(&Driver::cuInit, 0u), "cuInit"))
    return nullptr;
  CUdevice device = 0;
  if (!check(cu(&Driver::cuDeviceGet, &device, dev), "cuDeviceGet",
             [&] { return "device " + std::to_string(dev); }))
    return nullptr;
  CUcontext ctx = nullptr;
  if (!check(cu(&Driver::cuDevicePrimaryCtxRetain, &ctx, device),
             "cuDevicePrimaryCtxRetain"))
    return nullptr;
  primaryContexts[dev] = ctx;
  return ctx;
}

// Makes the default device's primary context current for one entry point,
// restoring the caller's context afterwards (no push when it already is).
class ScopedContext {
public:
  ScopedContext() {
    CUcontext want = primaryContext();
    if (!want)
      return;
    CUcontext current = nullptr;
    check(cu(&Driver::cuCtxGetCurrent, &current), "cuCtxGetCurrent");
    if (current != want)
      pushed = check(cu(&Driver::cuCtxPushCurrent, want), "cuCtxPushCurrent");
  }
  ~ScopedContext() {
    if (pushed) {
      CUcontext popped = nullptr;
      check(cu(&Driver::cuCtxPopCurrent, &popped), "cuCtxPopCurrent");
    }
  }
  ScopedContext(const ScopedContext &) = delete;
  ScopedContext &operator=(const ScopedContext &) = delete;

private:
  bool pushed = false;
};

thread_local bool callerStreamSet = false;
thread_local CUstream callerStream = nullptr; // may be 0: the legacy stream
thread_local CUstream ownStream = nullptr;
std::atomic<bool> streamOrdered{false};

// The stream this thread's generated code runs on. Needs a ScopedContext.
CUstream currentStream() {
  if (callerStreamSet)
    return callerStream;
  if (!ownStream)
    check(cu(&Driver::cuStreamCreate, &ownStream, CU_STREAM_NON_BLOCKING),
          "cuStreamCreate", [] { return "the runtime's own stream"; });
  return ownStream;
}

CUstream resolve(CUstream stream) { return stream ? stream : currentStream(); }

// Sets the default pool's release threshold to "never" once per device, so
// freed blocks stay cached and per-call allocations cost no driver round trip.
void configurePool() {
  int dev = defaultDevice.load();
  {
    std::lock_guard<std::mutex> lock(contextMutex);
    if (poolConfigured[dev])
      return;
    poolConfigured[dev] = true;
  }
  CUdevice device = 0;
  CUmemoryPool pool = nullptr;
  if (!check(cu(&Driver::cuDeviceGet, &device, dev), "cuDeviceGet") ||
      !check(cu(&Driver::cuDeviceGetDefaultMemPool, &pool, device),
             "cuDeviceGetDefaultMemPool"))
    return;
  uint64_t threshold = UINT64_MAX;
  check(cu(&Driver::cuMemPoolSetAttribute, pool,
           CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, static_cast<void *>(&threshold)),
        "cuMemPoolSetAttribute", [] { return "release threshold"; });
}

std::mutex tablesMutex;
auto &kernelNames = immortal<std::unordered_map<CUfunction, std::string>>();
auto &managedAllocations = immortal<std::unordered_set<void *>>();

std::string kernelName(CUfunction fn) {
  std::lock_guard<std::mutex> lock(tablesMutex);
  auto it = kernelNames.find(fn);
  return it == kernelNames.end() ? std::string("<unknown kernel>")
                                 : "kernel '" + it->second + "'";
}

// MHC_RUNTIME_SYNC=1: wait after every launch so that a faulting kernel is
// reported by name instead of at the next synchronization.
bool syncAfterLaunch() {
  static const bool on = [] {
    const char *env = getenv("MHC_RUNTIME_SYNC");
    return env && *env && strcmp(env, "0") != 0;
  }();
  return on;
}

bool validGrid(const char *call, CUfunction fn, const intptr_t (&dims)[6]) {
  for (intptr_t d : dims) {
    if (d < 0 || d > intptr_t(UINT32_MAX)) {
      report(call, CUDA_ERROR_INVALID_VALUE, [&] {
        return kernelName(fn) + ": launch dimension " + std::to_string(d) +
               " out of range";
      }());
      return false;
    }
  }
  return true;
}

// Kernels asking for more than the default 48 KiB of dynamic shared memory
// must opt in first.
bool allowSharedMemory(CUfunction fn, int32_t smem) {
  if (smem <= 48 * 1024)
    return true;
  return check(cu(&Driver::cuFuncSetAttribute, fn,
                  CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(smem)),
               "cuFuncSetAttribute", [&] {
                 return kernelName(fn) + ": " + std::to_string(smem) +
                        " bytes of dynamic shared memory";
               });
}

void afterLaunch(CUfunction fn, CUstream stream) {
  if (!syncAfterLaunch())
    return;
  check(cu(&Driver::cuStreamSynchronize, stream), "cuStreamSynchronize",
        [&] { return "after " + kernelName(fn); });
}

// A ranked memref descriptor as MLIR lays it out: two pointers, the offset,
// then `rank` sizes and `rank` strides.
struct MemRefDescriptor {
  char *allocated;
  char *aligned;
  int64_t offset;
  int64_t sizesAndStrides[1];
};

// Bytes spanned by a strided memref from its first element.
uint64_t memrefSpanBytes(int64_t rank, const MemRefDescriptor *desc,
                         int64_t elementBytes) {
  uint64_t last = 0;
  for (int64_t i = 0; i < rank; ++i) {
    int64_t size = desc->sizesAndStrides[i];
    int64_t stride = desc->sizesAndStrides[rank + i];
    if (size == 0)
      return 0;
    last += uint64_t(size - 1) * uint64_t(stride);
  }
  return (last + 1) * uint64_t(elementBytes);
}

} // namespace

//===----------------------------------------------------------------------===//
// C API (mhc_runtime.h)
//===----------------------------------------------------------------------===//

MHC_EXPORT void mhcRuntimeSetErrorMode(int mode) {
  errorMode.store(mode == MHC_ERRORS_STICKY ? MHC_ERRORS_STICKY
                                            : MHC_ERRORS_ABORT);
}

MHC_EXPORT int mhcRuntimeGetLastError(void) { return stickyCode.load(); }

MHC_EXPORT const char *mhcRuntimeGetErrorMessage(void) {
  // Returned pointer stays valid until the next clear.
  std::lock_guard<std::mutex> lock(errorMutex);
  return stickyCode.load() ? stickyMessage.c_str() : "";
}

MHC_EXPORT void mhcRuntimeClearError(void) {
  std::lock_guard<std::mutex> lock(errorMutex);
  stickyCode.store(0);
  stickyMessage.clear();
}

MHC_EXPORT void mhcRuntimeSetStream(void *stream) {
  callerStreamSet = true;
  callerStream = static_cast<CUstream>(stream);
}

MHC_EXPORT void mhcRuntimeUseOwnStream(void) {
  callerStreamSet = false;
  callerStream = nullptr;
}

MHC_EXPORT void *mhcRuntimeGetStream(void) {
  if (callerStreamSet)
    return callerStream;
  if (pending())
    return nullptr;
  ScopedContext ctx;
  return currentStream();
}

MHC_EXPORT void mhcRuntimeSetStreamOrdered(int on) { streamOrdered = on != 0; }

MHC_EXPORT void mhcRuntimeSynchronize(void) {
  if (pending())
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuStreamSynchronize, currentStream()),
        "cuStreamSynchronize", [] { return "mhcRuntimeSynchronize"; });
}

MHC_EXPORT int mhcRuntimeIsMock(void) { return 0; }

//===----------------------------------------------------------------------===//
// Modules and launches
//===----------------------------------------------------------------------===//

MHC_EXPORT CUmodule mgpuModuleLoad(void *data, size_t size) {
  if (pending())
    return nullptr;
  ScopedContext ctx;
  CUmodule module = nullptr;
  check(cu(&Driver::cuModuleLoadData, &module, static_cast<const void *>(data)),
        "cuModuleLoadData",
        [&] { return "module of " + std::to_string(size) + " bytes"; });
  return module;
}

// PTX (format=isa) is compiled by the driver at load time.
MHC_EXPORT CUmodule mgpuModuleLoadJIT(void *data, int optLevel) {
  if (pending())
    return nullptr;
  ScopedContext ctx;
  CUmodule module = nullptr;
  char log[4096] = {0};
  int options[] = {CU_JIT_OPTIMIZATION_LEVEL, CU_JIT_ERROR_LOG_BUFFER,
                   CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void *values[] = {reinterpret_cast<void *>(intptr_t(optLevel)), log,
                    reinterpret_cast<void *>(intptr_t(sizeof(log)))};
  check(cu(&Driver::cuModuleLoadDataEx, &module,
           static_cast<const void *>(data), 3u, options, values),
        "cuModuleLoadDataEx", [&] {
          std::string what = "PTX JIT at -O" + std::to_string(optLevel);
          return log[0] ? what + ": " + log : what;
        });
  return module;
}

// Best effort, on purpose: the generated code unloads from a global destructor,
// which runs at process exit when the driver (or the primary context, released
// by PyTorch) may already be torn down. The driver frees the module with its
// context anyway, so failures here are not reported.
MHC_EXPORT void mgpuModuleUnload(CUmodule module) {
  if (pending() || !module)
    return;
  CUcontext ctx = nullptr;
  {
    std::lock_guard<std::mutex> lock(contextMutex);
    ctx = primaryContexts[defaultDevice.load()];
  }
  CUcontext current = nullptr;
  if (!ctx || cu(&Driver::cuCtxGetCurrent, &current) != CUDA_SUCCESS)
    return;
  bool pushed = current != ctx &&
                cu(&Driver::cuCtxPushCurrent, ctx) == CUDA_SUCCESS;
  (void)cu(&Driver::cuModuleUnload, module);
  if (pushed) {
    CUcontext popped = nullptr;
    (void)cu(&Driver::cuCtxPopCurrent, &popped);
  }
}

MHC_EXPORT CUfunction mgpuModuleGetFunction(CUmodule module, const char *name) {
  if (pending())
    return nullptr;
  if (!name) {
    report("cuModuleGetFunction", CUDA_ERROR_INVALID_VALUE,
           "null kernel name");
    return nullptr;
  }
  CUfunction fn = nullptr;
  if (!check(cu(&Driver::cuModuleGetFunction, &fn, module, name),
             "cuModuleGetFunction",
             [&] { return std::string("kernel '") + name + "'"; }))
    return nullptr;
  std::lock_guard<std::mutex> lock(tablesMutex);
  kernelNames.emplace(fn, name);
  return fn;
}

MHC_EXPORT void mgpuLaunchKernel(CUfunction fn, intptr_t gridX, intptr_t gridY,
                                 intptr_t gridZ, intptr_t blockX,
                                 intptr_t blockY, intptr_t blockZ, int32_t smem,
                                 CUstream stream, void **params, void **extra,
                                 size_t /*paramsCount*/) {
  if (pending())
    return;
  const intptr_t dims[6] = {gridX, gridY, gridZ, blockX, blockY, blockZ};
  if (!validGrid("cuLaunchKernel", fn, dims))
    return;
  // An empty grid (e.g. zero tokens) is no work, not an error.
  if (gridX == 0 || gridY == 0 || gridZ == 0)
    return;
  ScopedContext ctx;
  stream = resolve(stream);
  if (!allowSharedMemory(fn, smem))
    return;
  if (!check(cu(&Driver::cuLaunchKernel, fn, unsigned(gridX), unsigned(gridY),
                unsigned(gridZ), unsigned(blockX), unsigned(blockY),
                unsigned(blockZ), unsigned(smem), stream, params, extra),
             "cuLaunchKernel", [&] {
               return kernelName(fn) + ", grid (" + std::to_string(gridX) +
                      "," + std::to_string(gridY) + "," +
                      std::to_string(gridZ) + "), block (" +
                      std::to_string(blockX) + "," + std::to_string(blockY) +
                      "," + std::to_string(blockZ) + "), " +
                      std::to_string(smem) + " B shared";
             }))
    return;
  afterLaunch(fn, stream);
}

// The torch integration's launch path (mhc.torch.kernels): one call per kernel,
// descriptors built here, the caller's stream used as given (NULL is the
// legacy default stream, as in PyTorch, so no resolve()).
MHC_EXPORT int mhcLaunchFlat(void *function, int64_t gridX, int64_t gridY,
                             int64_t gridZ, int64_t blockX, int64_t blockY,
                             int64_t blockZ, int32_t smem, void *stream,
                             int64_t T, int32_t nbuf, void *const *ptrs,
                             const int64_t *numels) {
  if (pending())
    return stickyCode.load();
  auto fn = static_cast<CUfunction>(function);
  mhc::runtime::FlatParams params;
  if (!fn || !mhc::runtime::packFlatParams(params, T, nbuf, ptrs, numels)) {
    report("mhcLaunchFlat", CUDA_ERROR_INVALID_VALUE,
           fn ? kernelName(fn) + ": " + std::to_string(nbuf) +
                    " buffers (0..64, pointer lists required)"
              : std::string("null function"));
    return stickyCode.load();
  }
  const intptr_t dims[6] = {intptr_t(gridX),  intptr_t(gridY),
                            intptr_t(gridZ),  intptr_t(blockX),
                            intptr_t(blockY), intptr_t(blockZ)};
  if (!validGrid("cuLaunchKernel", fn, dims))
    return stickyCode.load();
  if (gridX == 0 || gridY == 0 || gridZ == 0)
    return 0;
  ScopedContext ctx;
  auto cuStream = static_cast<CUstream>(stream);
  if (!allowSharedMemory(fn, smem))
    return stickyCode.load();
  if (!check(cu(&Driver::cuLaunchKernel, fn, unsigned(gridX), unsigned(gridY),
                unsigned(gridZ), unsigned(blockX), unsigned(blockY),
                unsigned(blockZ), unsigned(smem), cuStream, params.params,
                static_cast<void **>(nullptr)),
             "cuLaunchKernel", [&] {
               return kernelName(fn) + " (mhcLaunchFlat), grid (" +
                      std::to_string(gridX) + "," + std::to_string(gridY) +
                      "," + std::to_string(gridZ) + "), block (" +
                      std::to_string(blockX) + "," + std::to_string(blockY) +
                      "," + std::to_string(blockZ) + "), " +
                      std::to_string(smem) + " B shared, T " +
                      std::to_string(T);
             }))
    return stickyCode.load();
  afterLaunch(fn, cuStream);
  return stickyCode.load();
}

MHC_EXPORT void mgpuLaunchClusterKernel(
    CUfunction fn, intptr_t clusterX, intptr_t clusterY, intptr_t clusterZ,
    intptr_t gridX, intptr_t gridY, intptr_t gridZ, intptr_t blockX,
    intptr_t blockY, intptr_t blockZ, int32_t smem, CUstream stream,
    void **params, void **extra, size_t /*paramsCount*/) {
  if (pending())
    return;
  const intptr_t dims[6] = {gridX, gridY, gridZ, blockX, blockY, blockZ};
  const intptr_t cluster[6] = {clusterX, clusterY, clusterZ, 1, 1, 1};
  if (!validGrid("cuLaunchKernelEx", fn, dims) ||
      !validGrid("cuLaunchKernelEx", fn, cluster))
    return;
  if (gridX == 0 || gridY == 0 || gridZ == 0)
    return;
  ScopedContext ctx;
  stream = resolve(stream);
  if (!allowSharedMemory(fn, smem))
    return;
  LaunchAttribute attr = {};
  attr.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
  attr.value.clusterDim.x = unsigned(clusterX);
  attr.value.clusterDim.y = unsigned(clusterY);
  attr.value.clusterDim.z = unsigned(clusterZ);
  LaunchConfig config = {};
  config.gridDimX = unsigned(gridX);
  config.gridDimY = unsigned(gridY);
  config.gridDimZ = unsigned(gridZ);
  config.blockDimX = unsigned(blockX);
  config.blockDimY = unsigned(blockY);
  config.blockDimZ = unsigned(blockZ);
  config.sharedMemBytes = unsigned(smem);
  config.hStream = stream;
  config.attrs = &attr;
  config.numAttrs = 1;
  if (!check(cu(&Driver::cuLaunchKernelEx,
                static_cast<const LaunchConfig *>(&config), fn, params, extra),
             "cuLaunchKernelEx", [&] { return kernelName(fn); }))
    return;
  afterLaunch(fn, stream);
}

//===----------------------------------------------------------------------===//
// Streams and events
//===----------------------------------------------------------------------===//

MHC_EXPORT CUstream mgpuStreamCreate() {
  if (pending())
    return nullptr;
  ScopedContext ctx;
  return currentStream();
}

// Streams are handed out by mgpuStreamCreate and owned by the caller or the
// runtime, never by the generated code: nothing to destroy.
MHC_EXPORT void mgpuStreamDestroy(CUstream) {}

MHC_EXPORT void mgpuStreamSynchronize(CUstream stream) {
  if (pending())
    return;
  ScopedContext ctx;
  stream = resolve(stream);
  if (streamOrdered && callerStreamSet && stream == callerStream)
    return;
  check(cu(&Driver::cuStreamSynchronize, stream), "cuStreamSynchronize");
}

MHC_EXPORT void mgpuStreamWaitEvent(CUstream stream, CUevent event) {
  if (pending())
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuStreamWaitEvent, resolve(stream), event, 0u),
        "cuStreamWaitEvent");
}

MHC_EXPORT CUevent mgpuEventCreate() {
  if (pending())
    return nullptr;
  ScopedContext ctx;
  CUevent event = nullptr;
  check(cu(&Driver::cuEventCreate, &event, CU_EVENT_DISABLE_TIMING),
        "cuEventCreate");
  return event;
}

MHC_EXPORT void mgpuEventDestroy(CUevent event) {
  if (pending())
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuEventDestroy, event), "cuEventDestroy");
}

MHC_EXPORT void mgpuEventSynchronize(CUevent event) {
  if (pending())
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuEventSynchronize, event), "cuEventSynchronize");
}

MHC_EXPORT void mgpuEventRecord(CUevent event, CUstream stream) {
  if (pending())
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuEventRecord, event, resolve(stream)), "cuEventRecord");
}

//===----------------------------------------------------------------------===//
// Memory
//===----------------------------------------------------------------------===//

MHC_EXPORT void *mgpuMemAlloc(uint64_t sizeBytes, CUstream stream,
                              bool hostShared) {
  if (pending() || sizeBytes == 0)
    return nullptr;
  ScopedContext ctx;
  CUdeviceptr ptr = 0;
  if (hostShared) {
    if (!check(cu(&Driver::cuMemAllocManaged, &ptr, size_t(sizeBytes),
                  CU_MEM_ATTACH_GLOBAL),
               "cuMemAllocManaged",
               [&] { return std::to_string(sizeBytes) + " bytes"; }))
      return nullptr;
    std::lock_guard<std::mutex> lock(tablesMutex);
    managedAllocations.insert(reinterpret_cast<void *>(ptr));
    return reinterpret_cast<void *>(ptr);
  }
  configurePool();
  check(cu(&Driver::cuMemAllocAsync, &ptr, size_t(sizeBytes), resolve(stream)),
        "cuMemAllocAsync",
        [&] { return std::to_string(sizeBytes) + " bytes"; });
  return reinterpret_cast<void *>(ptr);
}

MHC_EXPORT void mgpuMemFree(void *ptr, CUstream stream) {
  if (pending() || !ptr)
    return;
  ScopedContext ctx;
  bool managed;
  {
    std::lock_guard<std::mutex> lock(tablesMutex);
    managed = managedAllocations.erase(ptr) != 0;
  }
  stream = resolve(stream);
  if (managed) {
    // Managed memory has no stream-ordered free: wait for its users first.
    if (check(cu(&Driver::cuStreamSynchronize, stream), "cuStreamSynchronize",
              [] { return "before freeing managed memory"; }))
      check(cu(&Driver::cuMemFree, reinterpret_cast<CUdeviceptr>(ptr)),
            "cuMemFree");
    return;
  }
  check(cu(&Driver::cuMemFreeAsync, reinterpret_cast<CUdeviceptr>(ptr), stream),
        "cuMemFreeAsync");
}

MHC_EXPORT void mgpuMemcpy(void *dst, void *src, size_t sizeBytes,
                           CUstream stream) {
  if (pending() || sizeBytes == 0)
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuMemcpyAsync, reinterpret_cast<CUdeviceptr>(dst),
           reinterpret_cast<CUdeviceptr>(src), sizeBytes, resolve(stream)),
        "cuMemcpyAsync", [&] { return std::to_string(sizeBytes) + " bytes"; });
}

MHC_EXPORT void mgpuMemset32(void *dst, unsigned value, size_t count,
                             CUstream stream) {
  if (pending() || count == 0)
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuMemsetD32Async, reinterpret_cast<CUdeviceptr>(dst), value,
           count, resolve(stream)),
        "cuMemsetD32Async");
}

MHC_EXPORT void mgpuMemset16(void *dst, unsigned short value, size_t count,
                             CUstream stream) {
  if (pending() || count == 0)
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuMemsetD16Async, reinterpret_cast<CUdeviceptr>(dst), value,
           count, resolve(stream)),
        "cuMemsetD16Async");
}

MHC_EXPORT void mgpuMemHostRegister(void *ptr, uint64_t sizeBytes) {
  if (pending() || sizeBytes == 0)
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuMemHostRegister, ptr, size_t(sizeBytes), 0u),
        "cuMemHostRegister",
        [&] { return std::to_string(sizeBytes) + " bytes"; });
}

// A memref descriptor argument must be there, with a sane rank.
static bool validDescriptor(const char *call, int64_t rank,
                            const void *descriptor) {
  if (descriptor && rank >= 0 && rank <= 64)
    return true;
  report(call, CUDA_ERROR_INVALID_VALUE,
         descriptor ? "rank " + std::to_string(rank) : "null descriptor");
  return false;
}

MHC_EXPORT void mgpuMemHostRegisterMemRef(int64_t rank, void *descriptor,
                                          int64_t elementSizeBytes) {
  if (pending() ||
      !validDescriptor("mgpuMemHostRegisterMemRef", rank, descriptor))
    return;
  auto *desc = static_cast<MemRefDescriptor *>(descriptor);
  mgpuMemHostRegister(desc->aligned + desc->offset * elementSizeBytes,
                      memrefSpanBytes(rank, desc, elementSizeBytes));
}

MHC_EXPORT void mgpuMemHostUnregister(void *ptr) {
  if (pending())
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuMemHostUnregister, ptr), "cuMemHostUnregister");
}

MHC_EXPORT void mgpuMemHostUnregisterMemRef(int64_t rank, void *descriptor,
                                            int64_t elementSizeBytes) {
  if (pending() ||
      !validDescriptor("mgpuMemHostUnregisterMemRef", rank, descriptor))
    return;
  auto *desc = static_cast<MemRefDescriptor *>(descriptor);
  if (memrefSpanBytes(rank, desc, elementSizeBytes) == 0)
    return;
  mgpuMemHostUnregister(desc->aligned + desc->offset * elementSizeBytes);
}

MHC_EXPORT void mgpuSetDefaultDevice(int32_t device) {
  if (device < 0 || device >= kMaxDevices) {
    report("mgpuSetDefaultDevice", CUDA_ERROR_INVALID_VALUE,
           "device " + std::to_string(device));
    return;
  }
  defaultDevice = device;
}

//===----------------------------------------------------------------------===//
// TMA descriptors (nvgpu.tma.create.descriptor)
//===----------------------------------------------------------------------===//

namespace {
// Kernels read tensor maps from device memory, and the generated code asks
// for one per launch without ever freeing it: identical maps share one
// device copy, and past kMaxTensorMaps distinct ones the device is
// synchronized (no kernel can still read them) and all are freed.
constexpr size_t kMaxTensorMaps = 1024;
std::mutex tensorMapMutex;
auto &tensorMaps =
    immortal<std::map<std::array<uint64_t, 16>, CUdeviceptr>>();

void *deviceTensorMap(const TensorMap &map) {
  std::array<uint64_t, 16> key;
  std::copy(std::begin(map.opaque), std::end(map.opaque), key.begin());
  std::lock_guard<std::mutex> lock(tensorMapMutex);
  auto it = tensorMaps.find(key);
  if (it != tensorMaps.end())
    return reinterpret_cast<void *>(it->second);
  ScopedContext ctx;
  if (tensorMaps.size() >= kMaxTensorMaps) {
    if (!check(cu(&Driver::cuCtxSynchronize), "cuCtxSynchronize",
               [] { return "before freeing cached tensor maps"; }))
      return nullptr;
    for (auto &[unused, ptr] : tensorMaps)
      (void)cu(&Driver::cuMemFree, ptr);
    tensorMaps.clear();
  }
  CUdeviceptr devMap = 0;
  if (!check(cu(&Driver::cuMemAlloc, &devMap, sizeof(TensorMap)),
             "cuMemAlloc", [] { return "tensor map"; }))
    return nullptr;
  if (!check(cu(&Driver::cuMemcpy, devMap,
                reinterpret_cast<CUdeviceptr>(&map), sizeof(TensorMap)),
             "cuMemcpy", [] { return "tensor map"; })) {
    (void)cu(&Driver::cuMemFree, devMap);
    return nullptr;
  }
  tensorMaps.emplace(key, devMap);
  return reinterpret_cast<void *>(devMap);
}
} // namespace

MHC_EXPORT void mgpuTensorMapEncodeTiled(
    TensorMap *tensorMap, int dataType, unsigned rank, void *globalAddress,
    const uint64_t *globalDim, const uint64_t *globalStrides,
    const unsigned *boxDim, const unsigned *elementStrides, int interleave,
    int swizzle, int l2Promotion, int oobFill) {
  if (pending())
    return;
  ScopedContext ctx;
  check(cu(&Driver::cuTensorMapEncodeTiled, tensorMap, dataType, rank,
           globalAddress, globalDim, globalStrides, boxDim, elementStrides,
           interleave, swizzle, l2Promotion, oobFill),
        "cuTensorMapEncodeTiled",
        [&] { return "rank " + std::to_string(rank); });
}

// Encodes a tensor map for a ranked memref and returns it in device memory,
// where the kernel reads it.
MHC_EXPORT void *mgpuTensorMapEncodeTiledMemref(int64_t rank, void *descriptor,
                                                int dataType, int interleave,
                                                int swizzle, int l2Promotion,
                                                int oobFill,
                                                int64_t *boxDims) {
  if (pending())
    return nullptr;
  static const int elementBytes[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2, 4, 4, 4};
  if (rank < 1 || rank > 5 || dataType < 0 || dataType > 12 || !descriptor ||
      !boxDims) {
    report("mgpuTensorMapEncodeTiledMemref", CUDA_ERROR_INVALID_VALUE,
           "rank " + std::to_string(rank) + ", data type " +
               std::to_string(dataType) +
               (descriptor && boxDims ? "" : ", null descriptor or box"));
    return nullptr;
  }
  auto *desc = static_cast<MemRefDescriptor *>(descriptor);
  const int64_t *sizes = desc->sizesAndStrides;
  const int64_t *strides = desc->sizesAndStrides + rank;
  // The driver lists dimensions innermost first and omits the innermost
  // stride (it must be one element).
  uint64_t dims[5] = {1, 1, 1, 1, 1}, byteStrides[5] = {0};
  unsigned box[5] = {1, 1, 1, 1, 1}, elementStrides[5] = {1, 1, 1, 1, 1};
  for (int64_t i = 0; i < rank; ++i) {
    dims[i] = uint64_t(sizes[rank - 1 - i]);
    box[i] = unsigned(boxDims[rank - 1 - i]);
  }
  for (int64_t i = 0; i + 1 < rank; ++i)
    byteStrides[i] = uint64_t(strides[rank - 2 - i]) * elementBytes[dataType];
  TensorMap map;
  mgpuTensorMapEncodeTiled(&map, dataType, unsigned(rank),
                           desc->aligned + desc->offset * elementBytes[dataType],
                           dims, byteStrides, box, elementStrides, interleave,
                           swizzle, l2Promotion, oobFill);
  if (pending())
    return nullptr;
  return deviceTensorMap(map);
}
