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
  /// each return synchronizes and destroys it. Only synchronous ops are
  /// threaded; a function that already orders its GPU work with async tokens
  /// (hand-written GPU host code) is left as it is, unless it also holds
  /// synchronous ones, whose order against its streams is unknown.
  static LogicalResult threadStream(func::FuncOp f) {
    Block &body = f.getBody().front();
    auto isSync = [](Operation &op) {
      auto async = dyn_cast<gpu::AsyncOpInterface>(op);
      return async && !async.getAsyncToken() &&
             async.getAsyncDependencies().empty() &&
             isa<gpu::AllocOp, gpu::LaunchFuncOp, gpu::DeallocOp>(op);
    };
    Operation *firstSync = nullptr, *firstAsync = nullptr;
    f.walk([&](Operation *op) {
      if (isSync(*op) && !firstSync)
        firstSync = op;
      if (!firstAsync && (isa<gpu::WaitOp>(op) ||
                          llvm::any_of(op->getResultTypes(), [](Type t) {
                            return isa<gpu::AsyncTokenType>(t);
                          })))
        firstAsync = op;
    });
    if (!firstSync)
      return success();
    if (firstSync->getBlock() != &body)
      return firstSync->emitError("mhc-gpu-host-memory: a GPU allocation or "
                                  "launch in nested control flow is not "
                                  "supported");
    if (firstAsync)
      return firstAsync->emitError(
          "mhc-gpu-host-memory: this function orders GPU work with async "
          "tokens and also holds mhc kernels or buffers; mixing the two is "
          "not supported");
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
    return success();
  }
  /// How a buffer is used, through its views (collapse_shape, cast, ...):
  /// by a kernel launch, by host code (`hostUser`, the first such op),
  /// passed to a function of this module or returned; `last` is its last
  /// user in `body`.
  struct BufferUses {
    bool launched = false, passed = false, returned = false;
    Operation *hostUser = nullptr;
    Operation *last = nullptr;
  };
  /// A call of a function with a body in this module (its arguments are
  /// device buffers); declarations are host code (e.g. printMemrefF32).
  static bool isDefinedCall(Operation *op, SymbolTableCollection &symbols) {
    auto call = dyn_cast<func::CallOp>(op);
    if (!call)
      return false;
    auto callee = symbols.lookupNearestSymbolFrom<func::FuncOp>(
        call, call.getCalleeAttr());
    return callee && !callee.isExternal();
  }

  static BufferUses findUses(memref::AllocOp alloc, Block &body,
                             SymbolTableCollection &symbols) {
    BufferUses uses;
    uses.last = alloc;
    SmallVector<Value> worklist{alloc.getMemref()};
    while (!worklist.empty()) {
      Value v = worklist.pop_back_val();
      for (Operation *user : v.getUsers()) {
        if (isa<ViewLikeOpInterface>(user) ||
            isa<memref::CastOp, memref::CollapseShapeOp,
                memref::ExpandShapeOp>(user))
          llvm::append_range(worklist, user->getResults());
        else if (isa<func::ReturnOp>(user))
          uses.returned = true;
        else if (isa<gpu::LaunchFuncOp>(user))
          uses.launched = true;
        else if (isDefinedCall(user, symbols))
          uses.passed = true;
        else if (!isa<memref::DimOp>(user) && !uses.hostUser)
          uses.hostUser = user;
        Operation *anc = body.findAncestorOpInBlock(*user);
        if (anc && uses.last->isBeforeInBlock(anc))
          uses.last = anc;
      }
    }
    return uses;
  }

  void runOnOperation() override {
    SymbolTableCollection symbols;
    WalkResult r = getOperation().walk([&](func::FuncOp f) -> WalkResult {
      if (f.isExternal()) // a declaration has no body to rewrite
        return WalkResult::advance();
      SmallVector<memref::AllocOp> allocs;
      f.walk([&](memref::AllocOp a) { allocs.push_back(a); });
      Block &body = f.getBody().front();
      for (memref::AllocOp a : allocs) {
        BufferUses uses = findUses(a, body, symbols);
        // A kernel's buffer is device memory, and so is one only passed
        // across function boundaries (mhc functions take and return device
        // buffers); one that host code touches stays in host memory
        // (hand-written host code around GPU work), unless a kernel uses it
        // too: then it cannot be placed.
        bool onDevice = uses.launched ||
                        (!uses.hostUser && (uses.passed || uses.returned));
        if (!onDevice)
          continue;
        if (isa_and_nonnull<memref::CopyOp>(uses.hostUser))
          return uses.hostUser->emitError(
              "mhc-gpu-host-memory: bufferization produced a host copy of a "
              "device buffer; not supported");
        if (uses.hostUser)
          return uses.hostUser->emitError(
              "mhc-gpu-host-memory: host code uses a buffer that GPU code "
              "reads or writes (kernels and mhc functions take device "
              "memory); not supported");
        if (a->getBlock() != &body)
          return a.emitError("mhc-gpu-host-memory: allocation in nested control "
                             "flow is not supported");
        OpBuilder b(a);
        auto g = gpu::AllocOp::create(b, a.getLoc(), a.getType(), Type(),
                                      ValueRange{}, a.getDynamicSizes(),
                                      a.getSymbolOperands(), UnitAttr());
        a.replaceAllUsesWith(g.getMemref());
        a.erase();
        if (uses.returned)
          continue;
        if (isa<func::ReturnOp>(uses.last))
          return uses.last->emitError("mhc-gpu-host-memory: unexpected use of "
                                      "a device buffer in the return");
        b.setInsertionPointAfter(uses.last);
        gpu::DeallocOp::create(b, g.getLoc(), Type(), ValueRange{},
                               g.getMemref());
      }
      if (failed(threadStream(f)))
        return WalkResult::interrupt();
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
