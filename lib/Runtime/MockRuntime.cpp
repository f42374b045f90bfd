//===- MockRuntime.cpp - mgpu* without a GPU (libmhc_runtime_mock) --------===//
//
// Same symbols as libmhc_runtime.so. Nothing runs on a device: "device"
// memory is host memory (so memcpy/memset really move data), kernels are not
// executed, and every call is logged as one line
//     mhc-mock: <call>(<arguments>) [-> <result>]
// on stdout (unless MHC_MOCK_QUIET is set) and in a buffer that
// mhcMockGetLog() returns. Handles are printed as stable names (module0,
// stream0, event0, buf0, ...) so that tests can FileCheck the sequence.
//
// Misuse that a real driver would reject (freeing an unknown pointer,
// launching a null function, an empty block) is reported like the real
// runtime reports a CUDA error: abort, or a sticky error in sticky mode.
//
//===----------------------------------------------------------------------===//

#include "FlatLaunch.h"
#include "mhc/Runtime/mhc_runtime.h"

#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#define MHC_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr int kInvalidValue = 1; // CUDA_ERROR_INVALID_VALUE
constexpr int kOutOfMemory = 2;  // CUDA_ERROR_OUT_OF_MEMORY

// The mock's state lives in objects that are never destroyed: generated code
// unloads its module from a global destructor, and other libraries may call
// in from theirs, after this library's own static destructors would have run.
template <typename T> T &immortal() { return *new T(); }

std::recursive_mutex &mutex = immortal<std::recursive_mutex>();
std::string &logBuffer = immortal<std::string>();
int errorMode = -1;
int stickyCode = 0;
std::string &stickyMessage = immortal<std::string>();

bool quiet() {
  static const bool q = getenv("MHC_MOCK_QUIET") != nullptr;
  return q;
}

void log(const char *fmt, ...) {
  char line[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(line, sizeof(line), fmt, args);
  va_end(args);
  std::lock_guard<std::recursive_mutex> lock(mutex);
  logBuffer += "mhc-mock: ";
  logBuffer += line;
  logBuffer += "\n";
  if (!quiet()) {
    printf("mhc-mock: %s\n", line);
    fflush(stdout);
  }
}

int mode() {
  if (errorMode < 0) {
    const char *env = getenv("MHC_RUNTIME_ERRORS");
    errorMode = (env && !strcmp(env, "sticky")) ? MHC_ERRORS_STICKY
                                                : MHC_ERRORS_ABORT;
  }
  return errorMode;
}

void fail(const char *call, const std::string &what,
          int code = kInvalidValue) {
  std::string msg = std::string(call) + " [" + what + "] failed: " +
                    (code == kOutOfMemory ? "CUDA_ERROR_OUT_OF_MEMORY"
                                          : "CUDA_ERROR_INVALID_VALUE") +
                    " (mock runtime)";
  fprintf(stderr, "mhc_runtime: %s\n", msg.c_str());
  fflush(stderr);
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (mode() == MHC_ERRORS_ABORT)
    abort();
  if (!stickyCode) {
    stickyCode = code;
    stickyMessage = msg;
  }
}

bool pending() {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  return stickyCode != 0;
}

// Names for opaque handles, in order of creation.
struct Handles {
  std::map<const void *, std::string> names;
  int next = 0;
  const char *prefix;
  explicit Handles(const char *p) : prefix(p) {}
  const void *make() {
    // A unique, never dereferenced address.
    const void *h = new char(0);
    names[h] = prefix + std::to_string(next++);
    return h;
  }
  std::string name(const void *h) const {
    if (!h)
      return "null";
    auto it = names.find(h);
    return it == names.end() ? std::string("?") : it->second;
  }
};

Handles &modules = *new Handles("module");
Handles &streams = *new Handles("stream");
Handles &events = *new Handles("event");
// handle -> kernel name
auto &functions = immortal<std::map<const void *, std::string>>();

// Mock device buffers: start address -> (size, name).
struct Buffer {
  size_t size;
  std::string name;
  bool hostShared;
};
auto &buffers = immortal<std::map<const char *, Buffer>>();
int nextBuffer = 0;
long launchCount = 0;

// The buffer holding `p`, if any.
const std::pair<const char *const, Buffer> *bufferOf(const void *p) {
  const char *c = static_cast<const char *>(p);
  auto it = buffers.upper_bound(c);
  if (it == buffers.begin())
    return nullptr;
  --it;
  return c >= it->first && c < it->first + it->second.size ? &*it : nullptr;
}

// "buf3", "buf3+16" for an interior pointer, or "host" for anything else.
std::string where(const void *p) {
  if (auto *b = bufferOf(p)) {
    size_t off = size_t(static_cast<const char *>(p) - b->first);
    return off ? b->second.name + "+" + std::to_string(off) : b->second.name;
  }
  return p ? "host" : "null";
}

// A copy or fill of `bytes` at `p` must stay inside the buffer it starts in
// (a device would fault or corrupt its neighbour); pointers outside every
// buffer are host memory, which the mock cannot check.
bool inBounds(const char *call, const void *p, size_t bytes) {
  if (!p && bytes) {
    fail(call, "null pointer");
    return false;
  }
  auto *b = bufferOf(p);
  if (!b)
    return true;
  size_t off = size_t(static_cast<const char *>(p) - b->first);
  if (bytes > b->second.size - off) {
    fail(call, std::to_string(bytes) + " bytes at " + where(p) +
                   " overrun " + b->second.name + " (" +
                   std::to_string(b->second.size) + " bytes)");
    return false;
  }
  return true;
}

thread_local bool callerStreamSet = false;
thread_local void *callerStream = nullptr;
thread_local const void *ownStream = nullptr;
bool streamOrdered = false;

const void *currentStream() {
  if (callerStreamSet)
    return callerStream;
  if (!ownStream)
    ownStream = streams.make();
  return ownStream;
}

std::string streamName(const void *s) {
  if (!s)
    s = currentStream();
  if (callerStreamSet && s == callerStream)
    return "caller-stream";
  return streams.name(s);
}

// A stream or event handle the mock never handed out is reported like the
// driver's CUDA_ERROR_INVALID_HANDLE would be.
bool knownStream(const char *call, const void *s) {
  if (!s || (callerStreamSet && s == callerStream) || streams.names.count(s))
    return true;
  fail(call, "unknown stream handle");
  return false;
}
bool knownEvent(const char *call, const void *e) {
  if (events.names.count(e))
    return true;
  fail(call, e ? "unknown event handle" : "null event");
  return false;
}

} // namespace

//===----------------------------------------------------------------------===//
// C API
//===----------------------------------------------------------------------===//

MHC_EXPORT void mhcRuntimeSetErrorMode(int m) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  errorMode = m == MHC_ERRORS_STICKY ? MHC_ERRORS_STICKY : MHC_ERRORS_ABORT;
}
MHC_EXPORT int mhcRuntimeGetLastError(void) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  return stickyCode;
}
MHC_EXPORT const char *mhcRuntimeGetErrorMessage(void) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  return stickyCode ? stickyMessage.c_str() : "";
}
MHC_EXPORT void mhcRuntimeClearError(void) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  stickyCode = 0;
  stickyMessage.clear();
}
MHC_EXPORT void mhcRuntimeSetStream(void *stream) {
  callerStreamSet = true;
  callerStream = stream;
  log("mhcRuntimeSetStream(caller-stream)");
}
MHC_EXPORT void mhcRuntimeUseOwnStream(void) {
  callerStreamSet = false;
  callerStream = nullptr;
}
MHC_EXPORT void *mhcRuntimeGetStream(void) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  return const_cast<void *>(currentStream());
}
MHC_EXPORT void mhcRuntimeSetStreamOrdered(int on) { streamOrdered = on != 0; }
MHC_EXPORT void mhcRuntimeSynchronize(void) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  log("mhcRuntimeSynchronize(%s)", streamName(nullptr).c_str());
}
MHC_EXPORT int mhcRuntimeIsMock(void) { return 1; }

// Mock-only inspection.
MHC_EXPORT const char *mhcMockGetLog(void) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  return logBuffer.c_str();
}
MHC_EXPORT void mhcMockClearLog(void) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  logBuffer.clear();
}
MHC_EXPORT long mhcMockLaunchCount(void) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  return launchCount;
}
MHC_EXPORT long mhcMockLiveBuffers(void) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  return long(buffers.size());
}

//===----------------------------------------------------------------------===//
// mgpu*
//===----------------------------------------------------------------------===//

MHC_EXPORT void *mgpuModuleLoad(void *data, size_t size) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return nullptr;
  if (!data || size == 0) {
    fail("cuModuleLoadData", "empty module");
    return nullptr;
  }
  const void *m = modules.make();
  log("mgpuModuleLoad(%zu bytes) -> %s", size, modules.name(m).c_str());
  return const_cast<void *>(m);
}

MHC_EXPORT void *mgpuModuleLoadJIT(void *data, int optLevel) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return nullptr;
  if (!data) {
    fail("cuModuleLoadDataEx", "empty module");
    return nullptr;
  }
  const void *m = modules.make();
  log("mgpuModuleLoadJIT(PTX of %zu chars, O%d) -> %s",
      strlen(static_cast<const char *>(data)), optLevel,
      modules.name(m).c_str());
  return const_cast<void *>(m);
}

MHC_EXPORT void mgpuModuleUnload(void *module) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  log("mgpuModuleUnload(%s)", modules.name(module).c_str());
}

MHC_EXPORT void *mgpuModuleGetFunction(void *module, const char *name) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return nullptr;
  if (!name) {
    fail("cuModuleGetFunction", "null kernel name");
    return nullptr;
  }
  if (!module || !modules.names.count(module)) {
    fail("cuModuleGetFunction",
         std::string("kernel '") + name + "' in an unknown module");
    return nullptr;
  }
  const void *f = new char(0);
  functions[f] = name;
  log("mgpuModuleGetFunction(%s, %s)", modules.name(module).c_str(), name);
  return const_cast<void *>(f);
}

static void launch(const char *call, void *fn, const intptr_t *cluster,
                   intptr_t gx, intptr_t gy, intptr_t gz, intptr_t bx,
                   intptr_t by, intptr_t bz, int32_t smem, void *stream,
                   void **params, size_t nparams,
                   const std::string &detail = std::string()) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  auto it = functions.find(fn);
  if (it == functions.end()) {
    fail(call, "null or unknown function");
    return;
  }
  // mhcLaunchFlat takes the caller's stream as given (e.g. PyTorch's).
  if (strcmp(call, "mhcLaunchFlat") != 0 && !knownStream(call, stream))
    return;
  if (bx <= 0 || by <= 0 || bz <= 0 || gx < 0 || gy < 0 || gz < 0 ||
      (nparams && !params)) {
    fail(call, "kernel '" + it->second + "': bad launch configuration");
    return;
  }
  std::string clusterText;
  if (cluster)
    clusterText = ", cluster (" + std::to_string(cluster[0]) + "," +
                  std::to_string(cluster[1]) + "," +
                  std::to_string(cluster[2]) + ")";
  if (gx == 0 || gy == 0 || gz == 0) {
    log("%s(%s, empty grid: skipped)", call, it->second.c_str());
    return;
  }
  ++launchCount;
  log("%s(%s, grid (%ld,%ld,%ld), block (%ld,%ld,%ld)%s, smem %d, %s, %zu "
      "params)%s",
      call, it->second.c_str(), long(gx), long(gy), long(gz), long(bx),
      long(by), long(bz), clusterText.c_str(), smem,
      streamName(stream).c_str(), nparams, detail.c_str());
}

MHC_EXPORT void mgpuLaunchKernel(void *fn, intptr_t gx, intptr_t gy,
                                 intptr_t gz, intptr_t bx, intptr_t by,
                                 intptr_t bz, int32_t smem, void *stream,
                                 void **params, void ** /*extra*/,
                                 size_t nparams) {
  launch("mgpuLaunchKernel", fn, nullptr, gx, gy, gz, bx, by, bz, smem, stream,
         params, nparams);
}

// Packs the parameters exactly as the CUDA runtime does and logs what a kernel
// would receive, read back through the void* array:
//   mhcLaunchFlat(<kernel>, grid (..), block (..), smem S, <stream>, P params)
//     T=<T> buffers [0x<ptr>:<numel>, ...]
// (one line; a descriptor that is not {p, p, 0, numel, 1} is logged as BAD).
MHC_EXPORT int mhcLaunchFlat(void *function, int64_t gx, int64_t gy,
                             int64_t gz, int64_t bx, int64_t by, int64_t bz,
                             int32_t smem, void *stream, int64_t T,
                             int32_t nbuf, void *const *ptrs,
                             const int64_t *numels) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return stickyCode;
  mhc::runtime::FlatParams packed;
  if (!mhc::runtime::packFlatParams(packed, T, nbuf, ptrs, numels)) {
    fail("mhcLaunchFlat", std::to_string(nbuf) +
                              " buffers (0..64, pointer lists required)");
    return stickyCode;
  }
  std::string detail =
      " T=" + std::to_string(*static_cast<int64_t *>(packed.params[0])) +
      " buffers [";
  for (int32_t b = 0; b < nbuf; ++b) {
    void *const *p = &packed.params[1 + 5 * b];
    void *allocated = *static_cast<void **>(p[0]);
    void *aligned = *static_cast<void **>(p[1]);
    int64_t offset = *static_cast<int64_t *>(p[2]);
    int64_t size = *static_cast<int64_t *>(p[3]);
    int64_t stride = *static_cast<int64_t *>(p[4]);
    char text[64];
    snprintf(text, sizeof(text), "%s0x%llx:%lld%s", b ? ", " : "",
             (unsigned long long)(uintptr_t)aligned, (long long)size,
             (allocated == aligned && offset == 0 && stride == 1) ? ""
                                                                   : " BAD");
    detail += text;
  }
  detail += "]";
  launch("mhcLaunchFlat", function, nullptr, intptr_t(gx), intptr_t(gy),
         intptr_t(gz), intptr_t(bx), intptr_t(by), intptr_t(bz), smem, stream,
         packed.params, size_t(packed.count), detail);
  return stickyCode;
}

MHC_EXPORT void mgpuLaunchClusterKernel(void *fn, intptr_t cx, intptr_t cy,
                                        intptr_t cz, intptr_t gx, intptr_t gy,
                                        intptr_t gz, intptr_t bx, intptr_t by,
                                        intptr_t bz, int32_t smem, void *stream,
                                        void **params, void ** /*extra*/,
                                        size_t /*nparams*/) {
  const intptr_t cluster[3] = {cx, cy, cz};
  launch("mgpuLaunchClusterKernel", fn, cluster, gx, gy, gz, bx, by, bz, smem,
         stream, params, 0);
}

MHC_EXPORT void *mgpuStreamCreate() {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return nullptr;
  const void *s = currentStream();
  log("mgpuStreamCreate() -> %s", streamName(s).c_str());
  return const_cast<void *>(s);
}

MHC_EXPORT void mgpuStreamDestroy(void *stream) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  log("mgpuStreamDestroy(%s)", streamName(stream).c_str());
}

MHC_EXPORT void mgpuStreamSynchronize(void *stream) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  if (!knownStream("cuStreamSynchronize", stream))
    return;
  bool skipped = streamOrdered && callerStreamSet &&
                 (!stream || stream == callerStream);
  log("mgpuStreamSynchronize(%s)%s", streamName(stream).c_str(),
      skipped ? " skipped (stream-ordered)" : "");
}

MHC_EXPORT void mgpuStreamWaitEvent(void *stream, void *event) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  if (!knownStream("cuStreamWaitEvent", stream) ||
      !knownEvent("cuStreamWaitEvent", event))
    return;
  log("mgpuStreamWaitEvent(%s, %s)", streamName(stream).c_str(),
      events.name(event).c_str());
}

MHC_EXPORT void *mgpuEventCreate() {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return nullptr;
  const void *e = events.make();
  log("mgpuEventCreate() -> %s", events.name(e).c_str());
  return const_cast<void *>(e);
}

MHC_EXPORT void mgpuEventDestroy(void *event) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  if (!knownEvent("cuEventDestroy", event))
    return;
  log("mgpuEventDestroy(%s)", events.name(event).c_str());
}

MHC_EXPORT void mgpuEventSynchronize(void *event) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  if (!knownEvent("cuEventSynchronize", event))
    return;
  log("mgpuEventSynchronize(%s)", events.name(event).c_str());
}

MHC_EXPORT void mgpuEventRecord(void *event, void *stream) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  if (!knownEvent("cuEventRecord", event) ||
      !knownStream("cuEventRecord", stream))
    return;
  log("mgpuEventRecord(%s, %s)", events.name(event).c_str(),
      streamName(stream).c_str());
}

MHC_EXPORT void *mgpuMemAlloc(uint64_t sizeBytes, void *stream,
                              bool hostShared) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return nullptr;
  if (!knownStream("cuMemAllocAsync", stream))
    return nullptr;
  if (sizeBytes == 0) {
    log("mgpuMemAlloc(0 bytes, %s) -> null", streamName(stream).c_str());
    return nullptr;
  }
  // 64-byte aligned like device allocations; poisoned so that reading memory
  // nothing wrote shows up in tests. The mock "device" has 1 TiB: larger
  // requests fail like the driver's (and sizes near 2^64 cannot wrap).
  constexpr uint64_t kDeviceBytes = uint64_t(1) << 40;
  char *p = nullptr;
  if (sizeBytes <= kDeviceBytes)
    p = static_cast<char *>(aligned_alloc(64, (sizeBytes + 63) & ~uint64_t(63)));
  if (!p) {
    fail("cuMemAllocAsync", std::to_string(sizeBytes) + " bytes",
         kOutOfMemory);
    return nullptr;
  }
  size_t rounded = (size_t(sizeBytes) + 63) & ~size_t(63);
  memset(p, 0xA5, rounded);
  std::string name = "buf" + std::to_string(nextBuffer++);
  buffers[p] = Buffer{size_t(sizeBytes), name, hostShared};
  log("mgpuMemAlloc(%llu bytes, %s%s) -> %s", (unsigned long long)sizeBytes,
      streamName(stream).c_str(), hostShared ? ", host_shared" : "",
      name.c_str());
  return p;
}

MHC_EXPORT void mgpuMemFree(void *ptr, void *stream) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending() || !ptr)
    return;
  if (!knownStream("cuMemFreeAsync", stream))
    return;
  auto it = buffers.find(static_cast<const char *>(ptr));
  if (it == buffers.end()) {
    fail("cuMemFreeAsync", "pointer not from mgpuMemAlloc");
    return;
  }
  log("mgpuMemFree(%s, %s)", it->second.name.c_str(),
      streamName(stream).c_str());
  free(ptr);
  buffers.erase(it);
}

MHC_EXPORT void mgpuMemcpy(void *dst, void *src, size_t sizeBytes,
                           void *stream) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  if (!knownStream("cuMemcpyAsync", stream))
    return;
  log("mgpuMemcpy(%s <- %s, %zu bytes, %s)", where(dst).c_str(),
      where(src).c_str(), sizeBytes, streamName(stream).c_str());
  if (sizeBytes && inBounds("cuMemcpyAsync", dst, sizeBytes) &&
      inBounds("cuMemcpyAsync", src, sizeBytes))
    memmove(dst, src, sizeBytes);
}

MHC_EXPORT void mgpuMemset32(void *dst, unsigned value, size_t count,
                             void *stream) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  if (!knownStream("cuMemsetD32Async", stream))
    return;
  log("mgpuMemset32(%s, 0x%08x, %zu, %s)", where(dst).c_str(), value, count,
      streamName(stream).c_str());
  if (count > SIZE_MAX / 4 || !inBounds("cuMemsetD32Async", dst, count * 4))
    return;
  auto *d = static_cast<uint32_t *>(dst);
  for (size_t i = 0; i < count; ++i)
    d[i] = value;
}

MHC_EXPORT void mgpuMemset16(void *dst, unsigned short value, size_t count,
                             void *stream) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return;
  if (!knownStream("cuMemsetD16Async", stream))
    return;
  log("mgpuMemset16(%s, 0x%04x, %zu, %s)", where(dst).c_str(), value, count,
      streamName(stream).c_str());
  if (count > SIZE_MAX / 2 || !inBounds("cuMemsetD16Async", dst, count * 2))
    return;
  auto *d = static_cast<uint16_t *>(dst);
  for (size_t i = 0; i < count; ++i)
    d[i] = value;
}

MHC_EXPORT void mgpuMemHostRegister(void *ptr, uint64_t sizeBytes) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  log("mgpuMemHostRegister(%s, %llu bytes)", where(ptr).c_str(),
      (unsigned long long)sizeBytes);
}
MHC_EXPORT void mgpuMemHostRegisterMemRef(int64_t rank, void *, int64_t elt) {
  log("mgpuMemHostRegisterMemRef(rank %ld, %ld-byte elements)", long(rank),
      long(elt));
}
MHC_EXPORT void mgpuMemHostUnregister(void *ptr) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  log("mgpuMemHostUnregister(%s)", where(ptr).c_str());
}
MHC_EXPORT void mgpuMemHostUnregisterMemRef(int64_t rank, void *, int64_t elt) {
  log("mgpuMemHostUnregisterMemRef(rank %ld, %ld-byte elements)", long(rank),
      long(elt));
}
MHC_EXPORT void mgpuSetDefaultDevice(int32_t device) {
  log("mgpuSetDefaultDevice(%d)", device);
}

MHC_EXPORT void mgpuTensorMapEncodeTiled(void *, int dataType, unsigned rank,
                                         void *address, const uint64_t *,
                                         const uint64_t *, const unsigned *,
                                         const unsigned *, int, int, int, int) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  log("mgpuTensorMapEncodeTiled(%s, type %d, rank %u)", where(address).c_str(),
      dataType, rank);
}
// One 128-byte "device" tensor map per distinct request, kept for the
// process (as the CUDA runtime caches them, instead of leaking one per call).
MHC_EXPORT void *mgpuTensorMapEncodeTiledMemref(int64_t rank, void *descriptor,
                                                int dataType, int, int, int,
                                                int, int64_t *boxDims) {
  std::lock_guard<std::recursive_mutex> lock(mutex);
  if (pending())
    return nullptr;
  log("mgpuTensorMapEncodeTiledMemref(rank %ld, type %d)", long(rank),
      dataType);
  if (rank < 1 || rank > 5 || !descriptor || !boxDims) {
    fail("mgpuTensorMapEncodeTiledMemref",
         "rank " + std::to_string(rank) + " (1..5), descriptor and box dims "
         "required");
    return nullptr;
  }
  static auto &maps = immortal<std::map<std::string, void *>>();
  // The request: the memref's aligned pointer, sizes and strides, the data
  // type and the box.
  const auto *desc = static_cast<const int64_t *>(descriptor);
  std::string key = std::to_string(dataType);
  for (int64_t i = 1; i < 3 + 2 * rank; ++i)
    key += "," + std::to_string(desc[i]);
  for (int64_t i = 0; i < rank; ++i)
    key += "," + std::to_string(boxDims[i]);
  void *&map = maps[key];
  if (!map)
    map = mgpuMemAlloc(128, nullptr, false);
  return map;
}
