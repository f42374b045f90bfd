//===- HyperConnect.cpp ----------------------------------------------------------===//
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCHYPERCONNECT
#include "mhc/Dialect/MHC/Transforms/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;

namespace {
struct MHCHyperConnectPass : mhc::impl::MHCHyperConnectBase<MHCHyperConnectPass> {
  using MHCHyperConnectBase::MHCHyperConnectBase;
  void runOnOperation() override {
    // TODO(in progress): placeholder until the pass lands.
    getOperation()->emitError("MHCHyperConnect is not implemented yet");
    signalPassFailure();
  }
};
} // namespace
