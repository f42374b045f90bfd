/* A stand-in for libcuda.so.1 for the runtime's error tests (no GPU needed):
 * just enough of the driver API for libmhc_runtime.so to reach each of its
 * error paths, with the driver's error codes.
 *   FAKE_CUDA_INIT=<code>  cuInit returns <code> (34: the toolkit's stub
 *                          library, 100: no device); the names of such codes
 *                          are unknown to it, as they are to the stub.
 * Memory is host memory; device pointers are checked against the live
 * allocations (bad frees, out-of-bounds copies), and allocations above 1 TiB
 * fail with CUDA_ERROR_OUT_OF_MEMORY. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

enum {
  SUCCESS = 0,
  INVALID_VALUE = 1,
  OUT_OF_MEMORY = 2,
  NOT_INITIALIZED = 3,
  INVALID_IMAGE = 200,
  INVALID_HANDLE = 400,
  NOT_FOUND = 500,
};

static int initialized;
static char context, module, function, stream;

#define MAX_ALLOCS 64
static struct {
  char *base;
  size_t size;
} allocs[MAX_ALLOCS];

CUresult cuInit(unsigned flags) {
  (void)flags;
  const char *code = getenv("FAKE_CUDA_INIT");
  if (code && atoi(code))
    return atoi(code);
  initialized = 1;
  return SUCCESS;
}

CUresult cuGetErrorName(CUresult code, const char **name) {
  switch (code) {
  case INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; return SUCCESS;
  case OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return SUCCESS;
  case NOT_INITIALIZED: *name = "CUDA_ERROR_NOT_INITIALIZED"; return SUCCESS;
  case INVALID_IMAGE: *name = "CUDA_ERROR_INVALID_IMAGE"; return SUCCESS;
  case INVALID_HANDLE: *name = "CUDA_ERROR_INVALID_HANDLE"; return SUCCESS;
  case NOT_FOUND: *name = "CUDA_ERROR_NOT_FOUND"; return SUCCESS;
  default: *name = 0; return INVALID_VALUE;
  }
}

CUresult cuGetErrorString(CUresult code, const char **text) {
  const char *name;
  if (cuGetErrorName(code, &name) != SUCCESS)
    return INVALID_VALUE;
  *text = "fake driver";
  return SUCCESS;
}

#define NEED_INIT                                                              \
  if (!initialized)                                                            \
    return NOT_INITIALIZED;

CUresult cuDeviceGet(int *device, int ordinal) {
  NEED_INIT
  if (ordinal != 0)
    return INVALID_VALUE;
  *device = 0;
  return SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(void **ctx, int device) {
  (void)device;
  *ctx = &context;
  return SUCCESS;
}
CUresult cuCtxGetCurrent(void **ctx) {
  *ctx = &context;
  return SUCCESS;
}
CUresult cuCtxSynchronize(void) { return SUCCESS; }
CUresult cuStreamCreate(void **s, unsigned flags) {
  (void)flags;
  *s = &stream;
  return SUCCESS;
}
CUresult cuStreamSynchronize(void *s) {
  return s == &stream || !s ? SUCCESS : INVALID_HANDLE;
}
CUresult cuDeviceGetDefaultMemPool(void **pool, int device) {
  (void)device;
  *pool = &context;
  return SUCCESS;
}
CUresult cuMemPoolSetAttribute(void *pool, int attr, void *value) {
  (void)pool, (void)attr, (void)value;
  return SUCCESS;
}

/* A module is any image that starts with "FAKE"; it has one kernel, "k". */
CUresult cuModuleLoadData(void **m, const void *image) {
  if (!image || memcmp(image, "FAKE", 4) != 0)
    return INVALID_IMAGE;
  *m = &module;
  return SUCCESS;
}
CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
  if (m != &module)
    return INVALID_HANDLE;
  if (!name || strcmp(name, "k") != 0)
    return NOT_FOUND;
  *f = &function;
  return SUCCESS;
}
CUresult cuModuleUnload(void *m) { return m == &module ? SUCCESS : INVALID_HANDLE; }
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz,
                        unsigned bx, unsigned by, unsigned bz, unsigned smem,
                        void *s, void **params, void **extra) {
  (void)gx, (void)gy, (void)gz, (void)smem, (void)params, (void)extra;
  if (f != &function || (s && s != &stream))
    return INVALID_HANDLE;
  if (bx * by * bz > 1024)
    return INVALID_VALUE;
  return SUCCESS;
}

CUresult cuMemAllocAsync(CUdeviceptr *p, size_t size, void *s) {
  (void)s;
  if (size > ((size_t)1 << 40))
    return OUT_OF_MEMORY;
  for (int i = 0; i < MAX_ALLOCS; ++i)
    if (!allocs[i].base) {
      allocs[i].base = malloc(size);
      allocs[i].size = size;
      *p = (CUdeviceptr)(uintptr_t)allocs[i].base;
      return SUCCESS;
    }
  return OUT_OF_MEMORY;
}
CUresult cuMemFreeAsync(CUdeviceptr p, void *s) {
  (void)s;
  for (int i = 0; i < MAX_ALLOCS; ++i)
    if (allocs[i].base && (CUdeviceptr)(uintptr_t)allocs[i].base == p) {
      free(allocs[i].base);
      allocs[i].base = 0;
      return SUCCESS;
    }
  return INVALID_VALUE;
}
/* Device ranges must lie inside one allocation; other pointers are host
 * memory, which the fake does not check. */
static int inBounds(CUdeviceptr p, size_t size) {
  for (int i = 0; i < MAX_ALLOCS; ++i) {
    CUdeviceptr base = (CUdeviceptr)(uintptr_t)allocs[i].base;
    if (allocs[i].base && p >= base && p < base + allocs[i].size)
      return size <= allocs[i].size - (size_t)(p - base);
  }
  return 1;
}
CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t size, void *s) {
  (void)s;
  if (!inBounds(dst, size) || !inBounds(src, size))
    return INVALID_VALUE;
  memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, size);
  return SUCCESS;
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, void *s) {
  (void)s;
  if (!inBounds(dst, n * 4))
    return INVALID_VALUE;
  for (size_t i = 0; i < n; ++i)
    ((unsigned *)(uintptr_t)dst)[i] = v;
  return SUCCESS;
}
