//===- Fuse.cpp ----------------------------------------------------------===//
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCFUSE
#include "mhc/Dialect/MHC/Transforms/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;

namespace {
struct MHCFusePass : mhc::impl::MHCFuseBase<MHCFusePass> {
  using MHCFuseBase::MHCFuseBase;
  void runOnOperation() override {
    // TODO(in progress): placeholder until the pass lands.
    getOperation()->emitError("MHCFuse is not implemented yet");
    signalPassFailure();
  }
};
} // namespace
