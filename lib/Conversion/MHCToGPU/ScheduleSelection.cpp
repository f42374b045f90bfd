//===- ScheduleSelection.cpp - --mhc-select-schedule ----------------------===//
//
// Writes each kernel root's schedule into the IR (#mhc.schedule), so that
// it can be read, tested and overridden before --convert-mhc-to-gpu obeys
// it. The choice itself belongs to the kernel family of the group.
//
//===----------------------------------------------------------------------===//
#include "KernelGroup.h"
#include "mhc/Conversion/Passes.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCSELECTSCHEDULE
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

namespace {
struct MHCSelectSchedulePass
    : mhc::impl::MHCSelectScheduleBase<MHCSelectSchedulePass> {
  using MHCSelectScheduleBase::MHCSelectScheduleBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (failed(parseGPUTarget(chip, /*features=*/"", "mhc-select-schedule",
                              [&] { return mlir::emitError(module.getLoc()); })))
      return signalPassFailure();
    for (Operation *root : collectKernelRoots(module)) {
      if (root->hasAttr(kScheduleAttrName))
        continue; // chosen before, or by hand
      KernelGroup group = KernelGroup::collect(root);
      const KernelFamily *family = findKernelFamily(group);
      if (!family)
        return signalPassFailure();
      FailureOr<GroupSchedule> schedule =
          family->chooseSchedule(group, scheduleOptionsFor(root, tileTokens, prepareFn));
      if (failed(schedule))
        return signalPassFailure();
      writeSchedule(root, *schedule);
    }
  }
};
} // namespace
