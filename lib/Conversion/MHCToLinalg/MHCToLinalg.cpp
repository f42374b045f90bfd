//===- MHCToLinalg.cpp -----------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/IR/MHCOps.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_CONVERTMHCTOLINALG
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;

namespace {
struct ConvertMHCToLinalgPass : mhc::impl::ConvertMHCToLinalgBase<ConvertMHCToLinalgPass> {
  using ConvertMHCToLinalgBase::ConvertMHCToLinalgBase;
  void runOnOperation() override {
    // TODO(in progress): placeholder until the lowering lands.
    getOperation()->emitError("ConvertMHCToLinalg is not implemented yet");
    signalPassFailure();
  }
};
} // namespace
