//===- HostMemory.cpp - --mhc-gpu-host-memory -----------------------------===//
//
// The GPU path's host code after bufferization keeps its buffers on the
// device: see the pass description in include/mhc/Conversion/Passes.td.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCGPUHOSTMEMORY
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;

namespace {

/// Host buffers live on the device: every memref.alloc outside gpu.module
/// becomes gpu.alloc, freed with gpu.dealloc after its last use unless the
/// function returns it (then the caller owns it).
struct MHCGPUHostMemoryPass
    : mhc::impl::MHCGPUHostMemoryBase<MHCGPUHostMemoryPass> {
  using MHCGPUHostMemoryBase::MHCGPUHostMemoryBase;

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
      if (f.isExternal()) // a declaration has no body to rewrite
        return WalkResult::advance();
      SmallVector<memref::AllocOp> allocs;
      f.walk([&](memref::AllocOp a) { allocs.push_back(a); });
      for (memref::AllocOp a : allocs) {
        if (a->getBlock() != &f.getBody().front())
          return a.emitError("mhc-gpu-host-memory: allocation in nested control "
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
          return last->emitError("mhc-gpu-host-memory: unexpected use of a "
                                 "device buffer in the return");
        b.setInsertionPointAfter(last);
        gpu::DeallocOp::create(b, g.getLoc(), Type(), ValueRange{},
                               g.getMemref());
      }
      threadStream(f);
      // A host-side copy would dereference device pointers.
      WalkResult inner = f.walk([&](memref::CopyOp c) -> WalkResult {
        return c.emitError("mhc-gpu-host-memory: bufferization produced a host "
                           "copy of a device buffer; not supported");
      });
      return inner;
    });
    if (r.wasInterrupted())
      signalPassFailure();
  }
};

} // namespace
