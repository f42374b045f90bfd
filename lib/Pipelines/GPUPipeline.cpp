//===- GPUPipeline.cpp - --mhc-gpu-pipeline -------------------------------===//
//
// mhc on tensors -> fused groups -> GPU kernels + host launches -> buffers ->
// NVVM -> gpu.binary (cubin / PTX / fatbin) + LLVM host code that calls the
// mgpu* runtime. See docs/GPU.md for the contract with the runtime.
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
#include "mlir/Dialect/LLVMIR/Transforms/Passes.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassOptions.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"
#include "llvm/Support/FileSystem.h"

using namespace mlir;

namespace {

struct GPUPipelineOptions : public PassPipelineOptions<GPUPipelineOptions> {
  PassOptions::Option<std::string> chip{
      *this, "chip", llvm::cl::desc("Target chip, sm_80 or newer"),
      llvm::cl::init("sm_90")};
  PassOptions::Option<std::string> features{
      *this, "features", llvm::cl::desc("PTX features (sm_90 needs +ptx80)"),
      llvm::cl::init("+ptx80")};
  PassOptions::Option<std::string> format{
      *this, "format",
      llvm::cl::desc("gpu.binary format: isa (PTX text), bin (cubin) or "
                     "fatbin"),
      llvm::cl::init("fatbin")};
  PassOptions::Option<std::string> toolkit{
      *this, "toolkit",
      llvm::cl::desc("CUDA toolkit path (ptxas, libdevice)"),
      llvm::cl::init("/usr/local/cuda")};
  PassOptions::Option<int64_t> tileTokens{
      *this, "tile-tokens",
      llvm::cl::desc("Tokens per block of norm_project kernels (0 = auto)"),
      llvm::cl::init(0)};
  PassOptions::Option<bool> fuse{
      *this, "fuse", llvm::cl::desc("Run --mhc-fuse first"),
      llvm::cl::init(true)};
};

/// Rejects bad options with a located error (gpu-module-to-binary alone
/// would print an error for a bad format and still exit 0).
struct ValidateOptionsPass
    : PassWrapper<ValidateOptionsPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(ValidateOptionsPass)
  std::string chip, format, toolkit;
  ValidateOptionsPass(std::string chip, std::string format, std::string toolkit)
      : chip(std::move(chip)), format(std::move(format)),
        toolkit(std::move(toolkit)) {}
  StringRef getArgument() const final { return "mhc-gpu-validate-options"; }
  void runOnOperation() override {
    ModuleOp m = getOperation();
    StringRef c = chip;
    unsigned sm = 0;
    if (!c.consume_front("sm_") || c.consumeInteger(10, sm) ||
        !(c.empty() || c == "a") || sm < 80) {
      m.emitError() << "mhc-gpu-pipeline: bad chip '" << chip
                    << "', expected sm_XX with XX >= 80 (e.g. sm_90)";
      return signalPassFailure();
    }
    if (format != "isa" && format != "bin" && format != "fatbin") {
      m.emitError() << "mhc-gpu-pipeline: bad format '" << format
                    << "', expected isa, bin or fatbin";
      return signalPassFailure();
    }
    // Without libdevice the kernels' expf/rsqrtf calls stay unresolved and
    // gpu-module-to-binary fails with exit code 0.
    std::string libdevice = toolkit + "/nvvm/libdevice/libdevice.10.bc";
    if (!llvm::sys::fs::exists(libdevice)) {
      m.emitError() << "mhc-gpu-pipeline: no libdevice at '" << libdevice
                    << "'; pass toolkit=<CUDA path>";
      return signalPassFailure();
    }
  }
};

/// Host buffers live on the device: every memref.alloc outside gpu.module
/// becomes gpu.alloc, freed with gpu.dealloc after its last use unless the
/// function returns it (then the caller owns it).
struct HostDeviceMemoryPass
    : PassWrapper<HostDeviceMemoryPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(HostDeviceMemoryPass)
  StringRef getArgument() const final { return "mhc-gpu-host-memory"; }

  /// Puts every allocation, launch and free of `f` on one stream, in
  /// program order: `gpu.wait async` at entry creates it, `gpu.wait` before
  /// each return synchronizes and destroys it.
  static void threadStream(func::FuncOp f) {
    Block &body = f.getBody().front();
    bool any = false;
    for (Operation &op : body)
      any |= isa<gpu::AllocOp, gpu::LaunchFuncOp, gpu::DeallocOp>(op);
    if (!any)
      return;
    Location loc = f.getLoc();
    Type tokType = gpu::AsyncTokenType::get(f.getContext());
    OpBuilder b = OpBuilder::atBlockBegin(&body);
    Value tok = gpu::WaitOp::create(b, loc, tokType, ValueRange{}).getAsyncToken();
    for (Operation &op : llvm::make_early_inc_range(body)) {
      b.setInsertionPoint(&op);
      if (auto a = dyn_cast<gpu::AllocOp>(op)) {
        auto n = gpu::AllocOp::create(b, a.getLoc(), a.getType(), tokType,
                                      ValueRange{tok}, a.getDynamicSizes(),
                                      a.getSymbolOperands(), UnitAttr());
        a.getMemref().replaceAllUsesWith(n.getMemref());
        tok = n.getAsyncToken();
        a.erase();
      } else if (auto l = dyn_cast<gpu::LaunchFuncOp>(op)) {
        auto n = gpu::LaunchFuncOp::create(
            b, l.getLoc(), l.getKernelAttr(), l.getGridSizeOperandValues(),
            l.getBlockSizeOperandValues(), l.getDynamicSharedMemorySize(),
            l.getKernelOperands(), tokType, ValueRange{tok});
        tok = n.getAsyncToken();
        l.erase();
      } else if (auto d = dyn_cast<gpu::DeallocOp>(op)) {
        auto n = gpu::DeallocOp::create(b, d.getLoc(), tokType,
                                        ValueRange{tok}, d.getMemref());
        tok = n.getAsyncToken();
        d.erase();
      } else if (isa<func::ReturnOp>(op)) {
        gpu::WaitOp::create(b, loc, Type(), ValueRange{tok});
      }
    }
  }
  void runOnOperation() override {
    WalkResult r = getOperation().walk([&](func::FuncOp f) -> WalkResult {
      SmallVector<memref::AllocOp> allocs;
      f.walk([&](memref::AllocOp a) { allocs.push_back(a); });
      for (memref::AllocOp a : allocs) {
        if (a->getBlock() != &f.getBody().front())
          return a.emitError("mhc-gpu-pipeline: allocation in nested control "
                             "flow is not supported");
        OpBuilder b(a);
        auto g = gpu::AllocOp::create(b, a.getLoc(), a.getType(), Type(),
                                      ValueRange{}, a.getDynamicSizes(),
                                      a.getSymbolOperands(), UnitAttr());
        a.replaceAllUsesWith(g.getMemref());
        a.erase();
        // Follow view-like users (collapse_shape, cast) to find the last use
        // and whether the buffer escapes through the return.
        Block &body = f.getBody().front();
        SmallVector<Value> worklist{g.getMemref()};
        Operation *last = g;
        bool returned = false;
        while (!worklist.empty()) {
          Value v = worklist.pop_back_val();
          for (Operation *user : v.getUsers()) {
            if (isa<func::ReturnOp>(user))
              returned = true;
            if (isa<ViewLikeOpInterface>(user) ||
                isa<memref::CastOp, memref::CollapseShapeOp,
                    memref::ExpandShapeOp>(user))
              for (Value res : user->getResults())
                worklist.push_back(res);
            Operation *anc = body.findAncestorOpInBlock(*user);
            if (anc && last->isBeforeInBlock(anc))
              last = anc;
          }
        }
        if (returned)
          continue;
        if (isa<func::ReturnOp>(last))
          return last->emitError("mhc-gpu-pipeline: unexpected use of a "
                                 "device buffer in the return");
        b.setInsertionPointAfter(last);
        gpu::DeallocOp::create(b, g.getLoc(), Type(), ValueRange{},
                               g.getMemref());
      }
      threadStream(f);
      // A host-side copy would dereference device pointers.
      WalkResult inner = f.walk([&](memref::CopyOp c) -> WalkResult {
        return c.emitError("mhc-gpu-pipeline: bufferization produced a host "
                           "copy of a device buffer; not supported");
      });
      return inner;
    });
    if (r.wasInterrupted())
      signalPassFailure();
  }
};

void buildMHCGPUPipeline(OpPassManager &pm, const GPUPipelineOptions &opts) {
  pm.addPass(std::make_unique<ValidateOptionsPass>(opts.chip, opts.format,
                                                   opts.toolkit));
  if (opts.fuse)
    pm.addNestedPass<func::FuncOp>(mhc::createMHCFuse());
  mhc::ConvertMHCToGPUOptions toGpu;
  toGpu.chip = opts.chip;
  toGpu.tileTokens = opts.tileTokens;
  pm.addPass(mhc::createConvertMHCToGPU(toGpu));
  pm.addPass(createCanonicalizerPass());

  bufferization::OneShotBufferizePassOptions buf;
  buf.bufferizeFunctionBoundaries = true;
  buf.functionBoundaryTypeConversion =
      bufferization::LayoutMapOption::IdentityLayoutMap;
  buf.unknownTypeConversion = bufferization::LayoutMapOption::IdentityLayoutMap;
  pm.addPass(bufferization::createOneShotBufferizePass(buf));
  pm.addPass(std::make_unique<HostDeviceMemoryPass>());

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
  target.features = opts.features;
  target.optLevel = 3;
  pm.addPass(createGpuNVVMAttachTarget(target));
  pm.addPass(createLowerAffinePass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertIndexToLLVMPass());
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());

  ConvertGpuOpsToNVVMOpsOptions toNvvm;
  pm.addNestedPass<gpu::GPUModuleOp>(createConvertGpuOpsToNVVMOps(toNvvm));
  pm.addNestedPass<gpu::GPUModuleOp>(LLVM::createNVVMOptimizeForTargetPass());
  pm.addNestedPass<gpu::GPUModuleOp>(createCanonicalizerPass());
  pm.addNestedPass<gpu::GPUModuleOp>(createCSEPass());
  pm.addNestedPass<gpu::GPUModuleOp>(createReconcileUnrealizedCastsPass());

  GpuToLLVMConversionPassOptions toLlvm;
  pm.addPass(createGpuToLLVMConversionPass(toLlvm));
  GpuModuleToBinaryPassOptions bin;
  bin.compilationTarget = opts.format;
  bin.toolkitPath = opts.toolkit;
  pm.addPass(createGpuModuleToBinaryPass(bin));
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
