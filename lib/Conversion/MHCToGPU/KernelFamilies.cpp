//===- KernelFamilies.cpp - the registry of GPU kernel families -----------===//
//
// The one registration point of the GPU lowering: a new kind of kernel is a
// KernelFamily in a file of its own (see KernelGroup.h) plus a line here.
//
//===----------------------------------------------------------------------===//
#include "BackwardKernel.h"
#include "ForwardKernel.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

ArrayRef<const KernelFamily *> gpu_kernels::kernelFamilies() {
  static const KernelFamily *const families[] = {
      &forwardKernelFamily(),  // ForwardKernel.cpp: pre, post, single ops
      &backwardKernelFamily(), // BackwardKernel.cpp: the gradient groups
  };
  return families;
}
