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
    reductions, the Sinkhorn iterations in registers, the norm_project
    product on tensor cores (bf16 mma.sync m16n8k16 from a shared tile,
    fn split into bf16 hi + lo for ~f32 accuracy) over a tile of tokens so
    that fn is read once per tile, C walked in ~256-byte chunks per row. The
    host side becomes `bufferization.to_buffer` + `memref.alloc` +
    `gpu.launch_func` (kernel ABI: index T, then one 1-D memref per input
    and per output) + `bufferization.to_tensor`. See docs/GPU.md.
  }];
  let dependentDialects = ["::mlir::gpu::GPUDialect",
                           "::mlir::arith::ArithDialect",
                           "::mlir::math::MathDialect",
                           "::mlir::memref::MemRefDialect",
                           "::mlir::scf::SCFDialect",
                           "::mlir::vector::VectorDialect",
                           "::mlir::nvgpu::NVGPUDialect",
                           "::mlir::NVVM::NVVMDialect",
                           "::mlir::LLVM::LLVMDialect",
                           "::mlir::tensor::TensorDialect",
                           "::mlir::bufferization::BufferizationDialect"];
  let options = [
    Option<"chip", "chip", "std::string", /*default=*/"\"sm_90\"",
           "Target chip (sm_XX, sm_80 or newer: the projection uses bf16 "
           "mma.sync); a bad value is an error">,
    Option<"tileTokens", "tile-tokens", "int64_t", /*default=*/"0",
           "Tokens per block of the norm_project kernels: 0 = auto (32 for "
           "n <= 4, else 16), or 16 / 32 / 64 (a tuning knob; 64 needs more "
           "than the 48 KB of shared memory for most shapes and is then an "
           "error)">,
  ];
}

#endif // MHC_CONVERSION_PASSES_TD
