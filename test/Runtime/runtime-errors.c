// Every error path of the runtime libraries reports one line naming the call,
// what it was doing and the CUDA error, and (sticky mode) leaves the process
// running with the error readable through the C API -- never a crash, a
// silent no-op or a memory error. libmhc_runtime.so runs against no driver,
// the toolkit's stub (cuInit -> 34), a driver without a device (cuInit ->
// 100) and a fake driver that fails like the real one; the mock checks
// handles, sizes and bounds itself.
//
// RUN: %clang -shared -fPIC %S/Inputs/fake_libcuda.c -o %t.libcuda.so
// RUN: %clang_exe %s -I%mhc_src_root/include -L%mhc_lib_dir -l:libmhc_runtime.so -Wl,-rpath,%mhc_lib_dir -o %t.cuda
// RUN: %clang_exe %s -DMOCK -I%mhc_src_root/include -L%mhc_lib_dir -l:libmhc_runtime_mock.so -Wl,-rpath,%mhc_lib_dir -o %t.mock
//
// RUN: env MHC_LIBCUDA=%t.nonexistent.so %t.cuda init 2>&1 | FileCheck %s --check-prefix=NODRIVER
// NODRIVER: mhc_runtime: cuInit failed: CUDA driver not available (dlopen("{{.*}}nonexistent.so"): {{.*}})
// NODRIVER: error 3: cuInit failed: CUDA driver not available
//
// RUN: env MHC_LIBCUDA=%t.libcuda.so FAKE_CUDA_INIT=34 %t.cuda init 2>&1 | FileCheck %s --check-prefix=STUB
// STUB: error 34: cuInit failed: CUDA_ERROR_STUB_LIBRARY (libcuda is the CUDA toolkit's stub, not a driver: no NVIDIA driver is installed)
//
// RUN: env MHC_LIBCUDA=%t.libcuda.so FAKE_CUDA_INIT=100 %t.cuda init 2>&1 | FileCheck %s --check-prefix=NODEVICE
// NODEVICE: error 100: cuInit failed: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is present)
//
// RUN: env MHC_LIBCUDA=%t.libcuda.so %t.cuda driver 2>/dev/null | FileCheck %s --check-prefix=CUDA
// RUN: env MHC_MOCK_QUIET=1 %t.mock mock 2>/dev/null | FileCheck %s --check-prefix=MOCK
//
// The default mode reports, then aborts.
// RUN: env MHC_LIBCUDA=%t.libcuda.so not --crash %t.cuda abort 2>&1 | FileCheck %s --check-prefix=ABORT
// ABORT: mhc_runtime: cuModuleGetFunction [null kernel name] failed: CUDA_ERROR_INVALID_VALUE
// ABORT-NOT: not reached

#include "mhc/Runtime/mhc_runtime.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

// The mgpu* entry points, as the generated host code declares them.
void *mgpuModuleLoad(void *data, size_t size);
void mgpuModuleUnload(void *module);
void *mgpuModuleGetFunction(void *module, const char *name);
void mgpuLaunchKernel(void *fn, intptr_t gx, intptr_t gy, intptr_t gz,
                      intptr_t bx, intptr_t by, intptr_t bz, int32_t smem,
                      void *stream, void **params, void **extra,
                      size_t nparams);
void *mgpuStreamCreate(void);
void mgpuStreamSynchronize(void *stream);
void mgpuStreamWaitEvent(void *stream, void *event);
void *mgpuEventCreate(void);
void mgpuEventRecord(void *event, void *stream);
void *mgpuMemAlloc(uint64_t bytes, void *stream, _Bool hostShared);
void mgpuMemFree(void *ptr, void *stream);
void mgpuMemcpy(void *dst, void *src, size_t bytes, void *stream);
void mgpuMemset32(void *dst, unsigned value, size_t count, void *stream);
void mgpuMemset16(void *dst, unsigned short value, size_t count, void *stream);
void mgpuMemHostRegisterMemRef(int64_t rank, void *desc, int64_t elementBytes);
void mgpuSetDefaultDevice(int32_t device);
void *mgpuTensorMapEncodeTiledMemref(int64_t rank, void *desc, int dataType,
                                     int interleave, int swizzle,
                                     int l2Promotion, int oobFill,
                                     int64_t *boxDims);
#ifdef MOCK
long mhcMockLiveBuffers(void);
#endif

// Prints the pending error (or "no error") and clears it.
static void expect(const char *what) {
  int code = mhcRuntimeGetLastError();
  if (code)
    printf("%s: error %d: %s\n", what, code, mhcRuntimeGetErrorMessage());
  else
    printf("%s: no error\n", what);
  mhcRuntimeClearError();
}

static char module[] = "FAKE module image";
static char host[256];

static void driverErrors(void) {
  void *m = mgpuModuleLoad("junk", 4);
  expect("bad image");
  // CUDA: bad image: error 200: cuModuleLoadData [module of 4 bytes] failed: CUDA_ERROR_INVALID_IMAGE
  m = mgpuModuleLoad(module, sizeof(module));
  expect("module");
  // CUDA: module: no error
  mgpuModuleGetFunction(m, NULL);
  expect("null name");
  // CUDA: null name: error 1: cuModuleGetFunction [null kernel name] failed: CUDA_ERROR_INVALID_VALUE
  mgpuModuleGetFunction(m, "missing");
  expect("unknown kernel");
  // CUDA: unknown kernel: error 500: cuModuleGetFunction [kernel 'missing'] failed: CUDA_ERROR_NOT_FOUND
  mgpuModuleGetFunction((void *)host, "k");
  expect("bad module handle");
  // CUDA: bad module handle: error 400: cuModuleGetFunction [kernel 'k'] failed: CUDA_ERROR_INVALID_HANDLE
  void *k = mgpuModuleGetFunction(m, "k");
  mgpuLaunchKernel((void *)host, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL, 0);
  expect("bad function handle");
  // CUDA: bad function handle: error 400: cuLaunchKernel [<unknown kernel>, grid (1,1,1), block (32,1,1), 0 B shared] failed: CUDA_ERROR_INVALID_HANDLE
  mgpuLaunchKernel(k, -1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL, 0);
  expect("negative grid");
  // CUDA: negative grid: error 1: cuLaunchKernel [kernel 'k': launch dimension -1 out of range] failed: CUDA_ERROR_INVALID_VALUE
  mgpuLaunchKernel(k, 1, 1, 1, 2048, 1, 1, 0, NULL, NULL, NULL, 0);
  expect("block too large");
  // CUDA: block too large: error 1: cuLaunchKernel [kernel 'k', grid (1,1,1), block (2048,1,1), 0 B shared] failed: CUDA_ERROR_INVALID_VALUE
  mgpuLaunchKernel(k, 0, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL, 0);
  expect("empty grid");
  // CUDA: empty grid: no error
  mgpuMemAlloc((uint64_t)1 << 50, NULL, 0);
  expect("out of memory");
  // CUDA: out of memory: error 2: cuMemAllocAsync [1125899906842624 bytes] failed: CUDA_ERROR_OUT_OF_MEMORY
  mgpuMemFree(host, NULL);
  expect("bad free");
  // CUDA: bad free: error 1: cuMemFreeAsync failed: CUDA_ERROR_INVALID_VALUE
  void *d = mgpuMemAlloc(64, NULL, 0);
  mgpuMemcpy(d, host, 128, NULL);
  expect("copy overrun");
  // CUDA: copy overrun: error 1: cuMemcpyAsync [128 bytes] failed: CUDA_ERROR_INVALID_VALUE
  mgpuMemset32(d, 7, 17, NULL);
  expect("fill overrun");
  // CUDA: fill overrun: error 1: cuMemsetD32Async failed: CUDA_ERROR_INVALID_VALUE
  mgpuMemFree(d, NULL);
  expect("free");
  // CUDA: free: no error
  mgpuMemHostRegisterMemRef(1, NULL, 4);
  expect("null descriptor");
  // CUDA: null descriptor: error 1: mgpuMemHostRegisterMemRef [null descriptor] failed: CUDA_ERROR_INVALID_VALUE
  mgpuTensorMapEncodeTiledMemref(2, NULL, 0, 0, 0, 0, 0, NULL);
  expect("null tensor map descriptor");
  // CUDA: null tensor map descriptor: error 1: mgpuTensorMapEncodeTiledMemref [rank 2, data type 0, null descriptor or box] failed: CUDA_ERROR_INVALID_VALUE
  mhcLaunchFlat(NULL, 1, 1, 1, 32, 1, 1, 0, NULL, 0, 0, NULL, NULL);
  expect("flat launch of null");
  // CUDA: flat launch of null: error 1: mhcLaunchFlat [null function] failed: CUDA_ERROR_INVALID_VALUE
  mhcLaunchFlat(k, 1, 1, 1, 32, 1, 1, 0, NULL, 0, 65, NULL, NULL);
  expect("flat launch of 65 buffers");
  // CUDA: flat launch of 65 buffers: error 1: mhcLaunchFlat [kernel 'k': 65 buffers (0..64, pointer lists required)] failed: CUDA_ERROR_INVALID_VALUE
  mgpuSetDefaultDevice(99);
  expect("device 99");
  // CUDA: device 99: error 1: mgpuSetDefaultDevice [device 99] failed: CUDA_ERROR_INVALID_VALUE
  mgpuEventCreate();
  expect("missing entry point");
  // CUDA: missing entry point: error 3: cuEventCreate failed: entry point not exported by the CUDA driver
  // Sticky: after an error, calls do nothing until it is cleared.
  mgpuModuleGetFunction(m, NULL);
  void *later = mgpuMemAlloc(16, NULL, 0);
  printf("after an error: %s\n", later ? "allocated" : "null");
  // CUDA: after an error: null
  expect("first error kept");
  // CUDA: first error kept: error 1: cuModuleGetFunction [null kernel name] failed
  mgpuModuleUnload(m);
  expect("unload");
  // CUDA: unload: no error
}

#ifdef MOCK
static void mockErrors(void) {
  void *m = mgpuModuleLoad(NULL, 0);
  expect("empty module");
  // MOCK: empty module: error 1: cuModuleLoadData [empty module] failed: CUDA_ERROR_INVALID_VALUE (mock runtime)
  m = mgpuModuleLoad(module, sizeof(module));
  mgpuModuleGetFunction(m, NULL);
  expect("null name");
  // MOCK: null name: error 1: cuModuleGetFunction [null kernel name] failed
  mgpuModuleGetFunction(host, "k");
  expect("bad module handle");
  // MOCK: bad module handle: error 1: cuModuleGetFunction [kernel 'k' in an unknown module] failed
  void *k = mgpuModuleGetFunction(m, "k");
  mgpuLaunchKernel(host, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL, 0);
  expect("bad function handle");
  // MOCK: bad function handle: error 1: mgpuLaunchKernel [null or unknown function] failed
  mgpuLaunchKernel(k, 1, 1, 1, 0, 1, 1, 0, NULL, NULL, NULL, 0);
  expect("empty block");
  // MOCK: empty block: error 1: mgpuLaunchKernel [kernel 'k': bad launch configuration] failed
  mgpuLaunchKernel(k, 1, 1, 1, 32, 1, 1, 0, host, NULL, NULL, 0);
  expect("bad stream handle");
  // MOCK: bad stream handle: error 1: mgpuLaunchKernel [unknown stream handle] failed
  void *s = mgpuStreamCreate();
  mgpuStreamWaitEvent(s, host);
  expect("bad event handle");
  // MOCK: bad event handle: error 1: cuStreamWaitEvent [unknown event handle] failed
  mgpuEventRecord(NULL, s);
  expect("null event");
  // MOCK: null event: error 1: cuEventRecord [null event] failed
  mgpuMemAlloc(UINT64_MAX - 10, NULL, 0);
  expect("size near 2^64");
  // MOCK: size near 2^64: error 2: cuMemAllocAsync [18446744073709551605 bytes] failed: CUDA_ERROR_OUT_OF_MEMORY (mock runtime)
  mgpuMemAlloc((uint64_t)1 << 50, NULL, 0);
  expect("out of memory");
  // MOCK: out of memory: error 2: cuMemAllocAsync [1125899906842624 bytes] failed: CUDA_ERROR_OUT_OF_MEMORY
  mgpuMemFree(host, NULL);
  expect("bad free");
  // MOCK: bad free: error 1: cuMemFreeAsync [pointer not from mgpuMemAlloc] failed
  char *d = mgpuMemAlloc(64, NULL, 0);
  mgpuMemcpy(d, host, 128, NULL);
  expect("copy overrun");
  // MOCK: copy overrun: error 1: cuMemcpyAsync [128 bytes at buf0 overrun buf0 (64 bytes)] failed
  mgpuMemcpy(host, d + 32, 64, NULL);
  expect("copy from past the end");
  // MOCK: copy from past the end: error 1: cuMemcpyAsync [64 bytes at buf0+32 overrun buf0 (64 bytes)] failed
  mgpuMemcpy(NULL, d, 8, NULL);
  expect("copy to null");
  // MOCK: copy to null: error 1: cuMemcpyAsync [null pointer] failed
  mgpuMemset32(d + 8, 7, 15, NULL);
  expect("fill32 overrun");
  // MOCK: fill32 overrun: error 1: cuMemsetD32Async [60 bytes at buf0+8 overrun buf0 (64 bytes)] failed
  mgpuMemset16(d, 7, (size_t)1 << 62, NULL);
  expect("fill16 overrun");
  // MOCK: fill16 overrun: error 1: cuMemsetD16Async [9223372036854775808 bytes at buf0 overrun buf0 (64 bytes)] failed
  mgpuMemset32(d, 7, 16, NULL);
  mgpuMemcpy(host, d, 64, NULL);
  expect("in bounds");
  // MOCK: in bounds: no error
  mgpuTensorMapEncodeTiledMemref(2, NULL, 0, 0, 0, 0, 0, NULL);
  expect("null tensor map descriptor");
  // MOCK: null tensor map descriptor: error 1: mgpuTensorMapEncodeTiledMemref [rank 2 (1..5), descriptor and box dims required] failed
  // The same tensor map twice is one buffer, not a leak per call.
  struct {
    void *allocated, *aligned;
    int64_t offset, sizes[2], strides[2];
  } desc = {d, d, 0, {4, 4}, {4, 1}};
  int64_t box[2] = {4, 4};
  long before = mhcMockLiveBuffers();
  void *t1 = mgpuTensorMapEncodeTiledMemref(2, &desc, 7, 0, 0, 0, 0, box);
  void *t2 = mgpuTensorMapEncodeTiledMemref(2, &desc, 7, 0, 0, 0, 0, box);
  printf("tensor maps: %s, %ld new buffer\n", t1 == t2 ? "shared" : "distinct",
         mhcMockLiveBuffers() - before);
  // MOCK: tensor maps: shared, 1 new buffer
  mgpuMemFree(d, NULL);
  expect("free");
  // MOCK: free: no error
}
#endif

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  if (!strcmp(mode, "abort")) {
    void *m = mgpuModuleLoad(module, sizeof(module));
    mgpuModuleGetFunction(m, NULL);
    printf("not reached\n");
    return 0;
  }
  mhcRuntimeSetErrorMode(MHC_ERRORS_STICKY);
  if (!strcmp(mode, "init")) {
    mgpuStreamCreate();
    expect("init");
  } else if (!strcmp(mode, "driver")) {
    driverErrors();
  } else if (!strcmp(mode, "mock")) {
#ifdef MOCK
    mockErrors();
#endif
  }
  return 0;
}
