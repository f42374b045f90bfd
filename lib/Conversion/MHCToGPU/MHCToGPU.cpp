//===- MHCToGPU.cpp -----------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/IR/MHCOps.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_CONVERTMHCTOGPU
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;

namespace {
struct ConvertMHCToGPUPass : mhc::impl::ConvertMHCToGPUBase<ConvertMHCToGPUPass> {
  using ConvertMHCToGPUBase::ConvertMHCToGPUBase;
  void runOnOperation() override {
    // TODO(in progress): placeholder until the lowering lands.
    getOperation()->emitError("ConvertMHCToGPU is not implemented yet");
    signalPassFailure();
  }
};
} // namespace
