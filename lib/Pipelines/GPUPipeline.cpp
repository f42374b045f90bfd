//===- GPUPipeline.cpp - --mhc-gpu-pipeline -------------------------------===//
//
// mhc on tensors -> (target check) -> fused groups -> schedules -> GPU
// kernels + host launches -> the other host math as kernels too -> buffers
// on the device -> NVVM -> gpu.binary (cubin / PTX / fatbin) + LLVM host
// code that calls the mgpu* runtime.
// Every mhc step is a declared pass (include/mhc/Conversion/Passes.td,
// include/mhc/Dialect/MHC/Transforms/Passes.td) that runs alone from
// mhc-opt. See docs/GPU.md for the contract with the runtime.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/Conversion/AffineToStandard/AffineToStandard.h"
#include "mlir/Conversion/ArithToLLVM/ArithToLLVM.h"
#include "mlir/Conversion/FuncToLLVM/ConvertFuncToLLVMPass.h"
#include "mlir/Conversion/GPUCommon/GPUCommonPass.h"
#include "mlir/Conversion/GPUToNVVM/GPUToNVVMPass.h"
#include "mlir/Conversion/IndexToLLVM/IndexToLLVM.h"
#include "mlir/Conversion/MathToLLVM/MathToLLVM.h"
#include "mlir/Conversion/NVGPUToNVVM/NVGPUToNVVM.h"
#include "mlir/Conversion/NVVMToLLVM/NVVMToLLVM.h"
#include "mlir/Conversion/ReconcileUnrealizedCasts/ReconcileUnrealizedCasts.h"
#include "mlir/Conversion/SCFToControlFlow/SCFToControlFlow.h"
#include "mlir/Conversion/VectorToLLVM/ConvertVectorToLLVMPass.h"
#include "mlir/Conversion/VectorToSCF/VectorToSCF.h"
#include "mlir/Dialect/Bufferization/Transforms/Passes.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/Dialect/Linalg/Passes.h"
#include "mlir/Dialect/LLVMIR/Transforms/Passes.h"
#include "mlir/Dialect/Math/Transforms/Passes.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassOptions.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

namespace {

struct GPUPipelineOptions : public PassPipelineOptions<GPUPipelineOptions> {
  PassOptions::Option<std::string> chip{
      *this, "chip",
      llvm::cl::desc("Target chip, sm_80 or newer (docs/GPU.md lists them)"),
      llvm::cl::init("sm_90")};
  PassOptions::Option<std::string> features{
      *this, "features",
      llvm::cl::desc("PTX features; empty = the chip's default (+ptx80 up to "
                     "sm_90a, +ptx86..+ptx90 for Blackwell chips)"),
      llvm::cl::init("")};
  PassOptions::Option<mhc::GPUBinaryFormat> format{
      *this, "format", llvm::cl::desc("What the gpu.binary holds"),
      llvm::cl::init(mhc::GPUBinaryFormat::Fatbin),
      llvm::cl::values(
          clEnumValN(mhc::GPUBinaryFormat::Mlir, "mlir",
                     "no binary: the gpu.module stays (NVVM dialect), for a "
                     "compiler that serializes it itself"),
          clEnumValN(mhc::GPUBinaryFormat::Llvm, "llvm",
                     "LLVM bitcode of the device code (no PTX)"),
          clEnumValN(mhc::GPUBinaryFormat::Isa, "isa", "PTX text"),
          clEnumValN(mhc::GPUBinaryFormat::Bin, "bin", "cubin"),
          clEnumValN(mhc::GPUBinaryFormat::Fatbin, "fatbin", "fat binary"))};
  PassOptions::Option<std::string> toolkit{
      *this, "toolkit",
      llvm::cl::desc("CUDA toolkit path (ptxas, libdevice)"),
      llvm::cl::init("/usr/local/cuda")};
  PassOptions::Option<int64_t> tileTokens{
      *this, "tile-tokens",
      llvm::cl::desc("Tokens per block of norm_project kernels (0 = auto)"),
      llvm::cl::init(0)};
  PassOptions::Option<bool> prepareFn{
      *this, "prepare-fn",
      llvm::cl::desc("Let projection groups prepare fn once per call in a "
                     "kernel of their own (--mhc-select-schedule)"),
      llvm::cl::init(true)};
  PassOptions::Option<bool> fuse{
      *this, "fuse", llvm::cl::desc("Run --mhc-fuse first"),
      llvm::cl::init(true)};
  PassOptions::Option<bool> foldDy{
      *this, "fold-dy",
      llvm::cl::desc("--mhc-fuse's dy fold: a sublayer's backward kernels "
                     "also compute the dy of the sublayer below"),
      llvm::cl::init(true)};
  PassOptions::Option<bool> ireeKernels{
      *this, "iree-kernels",
      llvm::cl::desc("Also give every mhc kernel an entry with IREE's CUDA "
                     "dispatch ABI (<kernel>_iree, --mhc-gpu-iree-kernels)"),
      llvm::cl::init(false)};
};

void buildMHCGPUPipeline(OpPassManager &pm, const GPUPipelineOptions &opts) {
  mhc::MHCGPUCheckTargetOptions check;
  check.chip = opts.chip;
  check.features = opts.features;
  check.format = opts.format;
  check.toolkit = opts.toolkit;
  pm.addPass(mhc::createMHCGPUCheckTarget(check));
  if (opts.fuse)
    pm.addNestedPass<func::FuncOp>(
        mhc::createMHCFuse(mhc::MHCFuseOptions{opts.foldDy}));
  mhc::MHCSelectScheduleOptions select;
  select.chip = opts.chip;
  select.tileTokens = opts.tileTokens;
  select.prepareFn = opts.prepareFn;
  pm.addPass(mhc::createMHCSelectSchedule(select));
  mhc::ConvertMHCToGPUOptions toGpu;
  toGpu.chip = opts.chip;
  pm.addPass(mhc::createConvertMHCToGPU(toGpu));
  pm.addPass(createCanonicalizerPass());
  // The rest of the host code (tensor math between mhc ops) as linalg, so
  // that it bufferizes and becomes loops; chains of elementwise ops fused
  // (one kernel and no temporary each, e.g. the casts before printing).
  // (Host functions only: the mhc kernels are final. Sizes read off a
  // producer's result would keep it from fusing: they are resolved first.)
  OpPassManager &host = pm.nest<func::FuncOp>();
  host.addPass(createConvertElementwiseToLinalgPass());
  host.addPass(memref::createResolveShapedTypeResultDimsPass());
  host.addPass(createLinalgElementwiseOpFusionPass());
  host.addPass(createCanonicalizerPass());

  bufferization::OneShotBufferizePassOptions buf;
  buf.bufferizeFunctionBoundaries = true;
  buf.functionBoundaryTypeConversion =
      bufferization::LayoutMapOption::IdentityLayoutMap;
  buf.unknownTypeConversion = bufferization::LayoutMapOption::IdentityLayoutMap;
  pm.addPass(bufferization::createOneShotBufferizePass(buf));
  // Those loops become GPU kernels too: no host code touches device memory.
  pm.addNestedPass<func::FuncOp>(createConvertLinalgToParallelLoopsPass());
  pm.addPass(mhc::createMHCGPUHostKernels());
  pm.addPass(createGpuKernelOutliningPass());
  pm.addPass(mhc::createMHCGPUHostMemory());

  // Down to NVVM + LLVM (the shape of upstream's gpu-lower-to-nvvm-pipeline,
  // with the toolkit path given so that libdevice is linked).
  pm.addPass(createConvertNVGPUToNVVMPass());
  pm.addPass(createConvertVectorToSCFPass());
  pm.addPass(createSCFToControlFlowPass());
  pm.addPass(createConvertNVVMToLLVMPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  GpuNVVMAttachTargetOptions target;
  target.chip = opts.chip;
  target.features = opts.features.empty()
                        ? mhc::defaultPTXFeatures(opts.chip)
                        : opts.features.getValue();
  target.optLevel = 3;
  pm.addPass(createGpuNVVMAttachTarget(target));
  pm.addPass(createLowerAffinePass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertIndexToLLVMPass());
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());

  // x**k (math.fpowi, e.g. GELU's x^3) has no NVVM lowering: multiplies.
  math::MathExpandOpsPassOptions expandPowers;
  expandPowers.opMnemonics = {"fpowi"};
  pm.addNestedPass<gpu::GPUModuleOp>(
      math::createMathExpandOpsPass(expandPowers));
  ConvertGpuOpsToNVVMOpsOptions toNvvm;
  pm.addNestedPass<gpu::GPUModuleOp>(createConvertGpuOpsToNVVMOps(toNvvm));
  pm.addNestedPass<gpu::GPUModuleOp>(LLVM::createNVVMOptimizeForTargetPass());
  pm.addNestedPass<gpu::GPUModuleOp>(createCanonicalizerPass());
  pm.addNestedPass<gpu::GPUModuleOp>(createCSEPass());
  pm.addNestedPass<gpu::GPUModuleOp>(createReconcileUnrealizedCastsPass());
  if (opts.ireeKernels)
    pm.addNestedPass<gpu::GPUModuleOp>(mhc::createMHCGPUIREEKernels());

  GpuToLLVMConversionPassOptions toLlvm;
  pm.addPass(createGpuToLLVMConversionPass(toLlvm));
  if (opts.format != mhc::GPUBinaryFormat::Mlir) {
    GpuModuleToBinaryPassOptions bin;
    bin.compilationTarget = mhc::stringifyGPUBinaryFormat(opts.format).str();
    bin.toolkitPath = opts.toolkit;
    pm.addPass(createGpuModuleToBinaryPass(bin));
  }
  pm.addPass(createConvertMathToLLVMPass());
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
}

} // namespace

void mlir::mhc::registerMHCGPUPipeline() {
  PassPipelineRegistration<GPUPipelineOptions>(
      "mhc-gpu-pipeline",
      "mhc on tensors to fused NVIDIA kernels in a gpu.binary (NVVM, "
      "options chip/features/format/toolkit) plus LLVM host code that calls "
      "the mgpu* runtime",
      buildMHCGPUPipeline);
}
