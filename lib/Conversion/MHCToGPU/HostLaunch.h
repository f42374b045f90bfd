//===- HostLaunch.h - the host side of a kernel group ------------*- C++ -*-===//
//
// What replaces a kernel group on the host: the token count T (the product
// of the leading dims), every tensor as a flat 1-D memref (kernel ABI: index
// T, then one memref<?xT> per input and per output), a memref.alloc per
// output, gpu.launch_func, and bufferization.to_tensor of the outputs in
// place of the group's results.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_LIB_CONVERSION_MHCTOGPU_HOSTLAUNCH_H
#define MHC_LIB_CONVERSION_MHCTOGPU_HOSTLAUNCH_H

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/IR/Builders.h"

namespace mlir::mhc::gpu_kernels {

class HostLaunch {
public:
  /// Host code is inserted before `root`.
  explicit HostLaunch(Operation *root);

  /// T = the product of the leading dims of `src`, all but its `trailing`
  /// last dims. Call first.
  void countTokens(Value src, unsigned trailing);
  Value tokens() const { return T; }

  /// A contiguous input tensor as a flat memref<?xT>.
  Value inputBuffer(Value tensor);
  /// A fresh buffer for `result` (its dynamic dims must be token dims), as a
  /// flat memref<?xT>; null after a diagnostic at `root` otherwise.
  Value outputBuffer(Value result);
  /// A scratch buffer of `numElements` elements (memref<?xT>), for values
  /// that pass from one kernel of a group to the next.
  Value scratchBuffer(Type elem, Value numElements);
  /// max(ceil(T / tileTokens), 1) blocks: with T = 0 one block runs and
  /// writes nothing (a grid of 0 blocks would be a launch error).
  Value tileGrid(int64_t tileTokens);
  void launch(gpu::GPUFuncOp kernel, Value gridX, int64_t threads,
              ValueRange args, int64_t gridY = 1);
  /// Replaces `replaced[i]` by the tensor of the i-th output buffer and
  /// erases the root.
  void finish(ArrayRef<Value> replaced);

private:
  Operation *root;
  OpBuilder b;
  Location loc;
  Value T;
  SmallVector<Value> leadDims, allocs;
};

} // namespace mlir::mhc::gpu_kernels

#endif // MHC_LIB_CONVERSION_MHCTOGPU_HOSTLAUNCH_H
