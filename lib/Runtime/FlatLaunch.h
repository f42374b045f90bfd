//===- FlatLaunch.h - kernel parameters of mhcLaunchFlat --------*- C++ -*-===//
//
// Builds the parameter array of one mhc kernel launch from flat buffer lists,
// following the kernel ABI of docs/GPU.md: (i64 T, then per buffer a 1-D
// memref descriptor: ptr allocated, ptr aligned, i64 offset = 0, i64 size =
// numel, i64 stride = 1). Shared by the CUDA runtime and the mock, so the
// mock's record of a launch is the packing the real launch uses.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_RUNTIME_FLATLAUNCH_H
#define MHC_RUNTIME_FLATLAUNCH_H

#include <cstdint>

namespace mhc::runtime {

// More than any mhc kernel takes (the widest has ~12 buffers).
constexpr int kMaxFlatBuffers = 64;

struct FlatDescriptor {
  void *allocated;
  void *aligned;
  int64_t offset;
  int64_t size;
  int64_t stride;
};

// The values and the void* array cuLaunchKernel reads them through; lives on
// the caller's stack for the duration of the launch call (the driver copies
// the parameter values when the launch is enqueued).
struct FlatParams {
  int64_t tokens;
  FlatDescriptor buffers[kMaxFlatBuffers];
  void *params[1 + 5 * kMaxFlatBuffers];
  int count = 0; // entries of params in use
};

// Fills `out`; false when nbuf is out of range or a pointer list is missing.
inline bool packFlatParams(FlatParams &out, int64_t T, int32_t nbuf,
                           void *const *ptrs, const int64_t *numels) {
  if (nbuf < 0 || nbuf > kMaxFlatBuffers || (nbuf > 0 && (!ptrs || !numels)))
    return false;
  out.tokens = T;
  out.params[0] = &out.tokens;
  int k = 1;
  for (int32_t b = 0; b < nbuf; ++b) {
    FlatDescriptor &d = out.buffers[b];
    d = FlatDescriptor{ptrs[b], ptrs[b], 0, numels[b], 1};
    out.params[k++] = &d.allocated;
    out.params[k++] = &d.aligned;
    out.params[k++] = &d.offset;
    out.params[k++] = &d.size;
    out.params[k++] = &d.stride;
  }
  out.count = k;
  return true;
}

} // namespace mhc::runtime

#endif // MHC_RUNTIME_FLATLAUNCH_H
