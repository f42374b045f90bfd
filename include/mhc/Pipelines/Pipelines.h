//===- Pipelines.h - registered mhc pipelines -------------------*- C++ -*-===//
#ifndef MHC_PIPELINES_PIPELINES_H
#define MHC_PIPELINES_PIPELINES_H

namespace mlir::mhc {

/// --mhc-cpu-pipeline: mhc + func/arith/tensor/linalg/bufferization on tensors
/// down to the LLVM dialect (the portable reference path).
void registerMHCCPUPipeline();

/// --mhc-gpu-pipeline: mhc down to NVVM cubins in a gpu.binary plus LLVM host
/// code calling the mgpu* runtime.
void registerMHCGPUPipeline();

/// Registers both pipelines once: MLIR aborts on a second registration of a
/// pipeline name, and embedders (the mlir-opt plugin, the C API) may call this
/// from more than one entry point.
inline void registerMHCPipelines() {
  static const bool registered = [] {
    registerMHCCPUPipeline();
    registerMHCGPUPipeline();
    return true;
  }();
  (void)registered;
}

} // namespace mlir::mhc

#endif // MHC_PIPELINES_PIPELINES_H
