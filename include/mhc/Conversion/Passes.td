//===- Passes.td - mhc lowerings ---------------------------*- tablegen -*-===//
#ifndef MHC_CONVERSION_PASSES_TD
#define MHC_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def ConvertMHCToLinalg : Pass<"convert-mhc-to-linalg"> {
  let summary = "Lower mhc ops to tensor-level linalg, arith and math";
  let description = [{
    The portable reference lowering: every mhc op becomes linalg.generic ops
    on tensors with f32 accumulation, rounding back to the activation type
    (bf16/f16) once per output element. Handles any number of static or
    dynamic leading dims. The result bufferizes and lowers with upstream
    passes (see --mhc-cpu-pipeline).
  }];
  let dependentDialects = ["::mlir::arith::ArithDialect",
                           "::mlir::linalg::LinalgDialect",
                           "::mlir::math::MathDialect",
                           "::mlir::tensor::TensorDialect"];
}

def ConvertMHCToGPU : Pass<"convert-mhc-to-gpu", "ModuleOp"> {
  let summary = "Lower mhc ops and mhc.fused groups to GPU kernels and host launches";
  let description = [{
    Turns every `mhc.fused` group (and any remaining mhc op) into a
    `gpu.func` kernel in a `gpu.module`, scheduled for NVIDIA GPUs: 16-byte
    vector loads and stores, f32 accumulation, warp-shuffle and block
    reductions, the Sinkhorn iterations in registers. The host side becomes
    `gpu.launch_func` on memrefs.
  }];
  let dependentDialects = ["::mlir::gpu::GPUDialect",
                           "::mlir::arith::ArithDialect",
                           "::mlir::math::MathDialect",
                           "::mlir::memref::MemRefDialect",
                           "::mlir::scf::SCFDialect",
                           "::mlir::vector::VectorDialect",
                           "::mlir::bufferization::BufferizationDialect"];
  let options = [
    Option<"chip", "chip", "std::string", /*default=*/"\"sm_90\"",
           "Target chip (sm_XX); used to pick the kernel schedule">,
  ];
}

#endif // MHC_CONVERSION_PASSES_TD
