//===- CPUPipeline.cpp - --mhc-cpu-pipeline -------------------------------===//
//
// The portable reference path: mhc (and any func/arith/math/tensor/linalg/
// bufferization IR on tensors, e.g. torch-mlir's linalg-on-tensors output)
// down to the LLVM dialect, ready for mlir-runner or mlir-translate. Every
// stage is an upstream pass except the first; the order is the one upstream's
// CPU integration tests use.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Arith/Transforms/Passes.h"
#include "mlir/Dialect/Bufferization/Pipelines/Passes.h"
#include "mlir/Dialect/Bufferization/Transforms/Passes.h"
#include "mlir/Dialect/Linalg/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

static void buildMHCCPUPipeline(OpPassManager &pm) {
  // 1. mhc -> linalg on tensors, then tensor-level cleanups. Elementwise
  //    fusion merges chains of elementwise generics (the rounding after
  //    post_res's mix, torch-mlir's activation chains) so fewer temporaries
  //    are allocated.
  pm.addPass(mhc::createConvertMHCToLinalg());
  // Elementwise arith/math on whole tensors (common in hand-written tests and
  // exported models) becomes linalg.generic so that it bufferizes.
  pm.addPass(createConvertElementwiseToLinalgPass());
  // No CSE before bufferization: it would merge identical
  // bufferization.to_buffer ops, and a memref from an earlier to_buffer must
  // not be read after later ops reuse its buffer.
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createLinalgElementwiseOpFusionPass());
  pm.addPass(createCanonicalizerPass());

  // 2. Tensors -> buffers. Function boundaries get plain (identity-layout)
  //    memrefs so that callers such as mlir-runner's printMemrefF32 see
  //    ordinary descriptors; the ownership-based deallocation pipeline frees
  //    every temporary.
  pm.addPass(bufferization::createEmptyTensorToAllocTensorPass());
  bufferization::OneShotBufferizePassOptions bufferize;
  bufferize.bufferizeFunctionBoundaries = true;
  // Sinkhorn's scf.for yields a freshly computed matrix each iteration.
  bufferize.allowReturnAllocsFromLoops = true;
  bufferize.functionBoundaryTypeConversion =
      bufferization::LayoutMapOption::IdentityLayoutMap;
  pm.addPass(bufferization::createOneShotBufferizePass(bufferize));
  bufferization::buildBufferDeallocationPipeline(pm);
  pm.addPass(createConvertBufferizationToMemRefPass());

  // 3. Structured ops -> loops -> branches.
  pm.addPass(createConvertLinalgToLoopsPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createLowerAffinePass());
  pm.addPass(createSCFToControlFlowPass());

  // 4. Scalars. bf16 <-> f32 conversions become integer bit manipulation so
  //    the JIT never needs compiler-rt's __truncsfbf2 (f16 uses the F16C
  //    instructions or libgcc's __truncsfhf2/__extendhfsf2). Integer powers
  //    become helper functions, math ops with an LLVM intrinsic become it, the
  //    rest (erf, ...) libm calls.
  arith::ArithExpandOpsPassOptions expand;
  expand.includeBf16 = true;
  pm.addPass(arith::createArithExpandOpsPass(expand));
  pm.addPass(
      createConvertMathToFuncs()); // math.fpowi/ipowi (torch-mlir's x**k)
  pm.addPass(createConvertMathToLLVMPass());
  pm.addPass(createConvertMathToLibmPass());

  // 5. Everything -> LLVM dialect.
  pm.addPass(createFinalizeMemRefToLLVMConversionPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(createConvertControlFlowToLLVMPass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertIndexToLLVMPass());
  pm.addPass(createUBToLLVMConversionPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
  pm.addPass(createCanonicalizerPass());
}

void mlir::mhc::registerMHCCPUPipeline() {
  PassPipelineRegistration<>(
      "mhc-cpu-pipeline",
      "Lower mhc and func/arith/math/tensor/linalg/bufferization IR on "
      "tensors to the LLVM dialect for the CPU (the portable reference path): "
      "convert-mhc-to-linalg, convert-elementwise-to-linalg, canonicalize, "
      "linalg elementwise fusion, "
      "one-shot bufferization with identity-layout function boundaries, "
      "ownership-based buffer deallocation, linalg to loops, scf to cf, "
      "arith expansion including bf16, math to funcs/LLVM/libm, then memref, "
      "func, "
      "cf, arith, index and ub to LLVM. The output runs under "
      "`mlir-runner -e main --entry-point-result=void "
      "--shared-libs=libmlir_runner_utils.so,libmlir_c_runner_utils.so`.",
      buildMHCCPUPipeline);
}
