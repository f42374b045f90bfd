//===- MHCToGPU.cpp - --convert-mhc-to-gpu --------------------------------===//
//
// Every mhc.fused group and every remaining mhc op becomes GPU kernels in
// the gpu.module @mhc_kernels plus their launches on the host side. Which
// kernels, how they are built and scheduled is the business of the kernel
// family that accepts the group (KernelFamilies.cpp lists them; the file
// layout is in docs/GPU.md). The schedule comes from the root's
// `mhc.schedule` attribute (--mhc-select-schedule), else the family's
// default.
//
//===----------------------------------------------------------------------===//
#include "KernelGroup.h"
#include "mhc/Conversion/Passes.h"
#include "mhc/Utils/ExpandShapeRepair.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/IR/SymbolTable.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_CONVERTMHCTOGPU
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

namespace {
struct ConvertMHCToGPUPass
    : mhc::impl::ConvertMHCToGPUBase<ConvertMHCToGPUPass> {
  using ConvertMHCToGPUBase::ConvertMHCToGPUBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (failed(parseGPUTarget(chip, /*features=*/"", "convert-mhc-to-gpu",
                              [&] { return mlir::emitError(module.getLoc()); })))
      return signalPassFailure();
    // The GPU pipeline canonicalizes next: keep it off MLIR 22's crash.
    repairExpandShapes(module);
    SmallVector<Operation *> roots = collectKernelRoots(module);
    if (roots.empty())
      return;
    if (failed(checkRootsNotNested(module, roots, getArgument())))
      return signalPassFailure();

    OpBuilder b(module.getBodyRegion());
    b.setInsertionPointToEnd(module.getBody());
    auto kernels =
        gpu::GPUModuleOp::create(b, module.getLoc(), "mhc_kernels");
    module->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                    b.getUnitAttr());
    SymbolTable::setSymbolVisibility(kernels,
                                     SymbolTable::Visibility::Private);
    int64_t index = 0;
    for (Operation *root : roots) {
      KernelGroup group = KernelGroup::collect(root);
      const KernelFamily *family = findKernelFamily(group);
      if (!family)
        return signalPassFailure();
      std::optional<GroupSchedule> schedule = readSchedule(root);
      if (!schedule) {
        FailureOr<GroupSchedule> chosen =
            family->chooseSchedule(group, scheduleOptionsFor(root));
        if (failed(chosen))
          return signalPassFailure();
        schedule = *chosen;
      }
      std::string name = "mhc_" + group.kind() + "_" + std::to_string(index++);
      if (failed(family->lower(group, *schedule, kernels, name)))
        return signalPassFailure();
    }
  }
};
} // namespace
