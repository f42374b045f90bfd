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
#include "mlir/IR/SymbolTable.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCGPUHOSTMEMORY
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;

namespace {

/// Host buffers live on the device: every memref.alloc outside gpu.module
/// becomes gpu.alloc and every constant global is copied to a gpu.alloc
/// before use; each is freed with gpu.dealloc after its last use unless the
/// function returns it (then the caller owns it). Host functions that are
/// only declared (printMemrefF32, ...) receive host copies.
struct MHCGPUHostMemoryPass
    : mhc::impl::MHCGPUHostMemoryBase<MHCGPUHostMemoryPass> {
  using MHCGPUHostMemoryBase::MHCGPUHostMemoryBase;

  /// The dynamic sizes of `m` (one memref.dim per dynamic dim).
  static SmallVector<Value> dynamicSizes(OpBuilder &b, Location loc, Value m) {
    auto type = cast<MemRefType>(m.getType());
    SmallVector<Value> sizes;
    for (int64_t d = 0; d < type.getRank(); ++d)
      if (type.isDynamicDim(d))
        sizes.push_back(memref::DimOp::create(b, loc, m, d));
    return sizes;
  }

  /// Ops that give another view of the same buffer.
  static bool isView(Operation *op) {
    return isa<ViewLikeOpInterface>(op) ||
           isa<memref::CastOp, memref::CollapseShapeOp, memref::ExpandShapeOp>(
               op);
  }

  /// Every user of `buffer` and of its views (the views included), depth
  /// first.
  static SmallVector<Operation *> usersThroughViews(Value buffer) {
    SmallVector<Operation *> users;
    SmallVector<Value> worklist{buffer};
    while (!worklist.empty()) {
      Value v = worklist.pop_back_val();
      for (Operation *user : v.getUsers()) {
        users.push_back(user);
        if (isView(user))
          llvm::append_range(worklist, user->getResults());
      }
    }
    return users;
  }

  /// memref.alloc -> gpu.alloc. Its memref.deallocs go (freeAfterLastUse
  /// frees it on the stream); a host load or store of it is an error, since
  /// --mhc-gpu-host-kernels has made every host access a kernel.
  static FailureOr<Value> allocOnDevice(memref::AllocOp a) {
    SmallVector<Operation *> deallocs;
    for (Operation *user : usersThroughViews(a.getMemref())) {
      if (isa<memref::DeallocOp>(user))
        deallocs.push_back(user);
      else if (isa<memref::LoadOp, memref::StoreOp>(user))
        return user->emitError("mhc-gpu-host-memory: host code reads or "
                               "writes a buffer that lives on the device; "
                               "not supported");
    }
    for (Operation *d : deallocs)
      d->erase();
    OpBuilder b(a);
    auto g = gpu::AllocOp::create(b, a.getLoc(), a.getType(), Type(),
                                  ValueRange{}, a.getDynamicSizes(),
                                  a.getSymbolOperands(), UnitAttr());
    a.replaceAllUsesWith(g.getMemref());
    a.erase();
    return g.getMemref();
  }

  /// A constant global read by host code -> a device copy made at that
  /// point (kernels cannot read host globals).
  static Value copyGlobalToDevice(memref::GetGlobalOp g) {
    OpBuilder b(g);
    b.setInsertionPointAfter(g);
    auto dev = gpu::AllocOp::create(b, g.getLoc(), g.getType(), Type(),
                                    ValueRange{}, ValueRange{}, ValueRange{},
                                    UnitAttr());
    auto copy = gpu::MemcpyOp::create(b, g.getLoc(), Type(), ValueRange{},
                                      dev.getMemref(), g.getResult());
    g.getResult().replaceAllUsesExcept(dev.getMemref(), copy);
    return dev.getMemref();
  }

  /// Whether `v` (through views and casts) is device memory: a gpu.alloc,
  /// or what a function of this module returned (those return device
  /// buffers). Arguments and other values are left as they are.
  static bool isDeviceBuffer(Value v) {
    while (Operation *def = v.getDefiningOp()) {
      if (isa<gpu::AllocOp>(def))
        return true;
      if (auto call = dyn_cast<func::CallOp>(def)) {
        auto callee = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
            call, call.getCalleeAttr());
        return callee && !callee.isExternal();
      }
      if (!isView(def))
        return false;
      v = def->getOperand(0);
    }
    return false;
  }

  /// A call of a declared (host) function: each memref argument that is a
  /// device buffer is replaced by a host copy, freed after the call. The
  /// callee reads it; what it writes does not come back.
  static LogicalResult passHostCopies(func::CallOp call) {
    OpBuilder b(call);
    Location loc = call.getLoc();
    SmallVector<Value> copies;
    for (OpOperand &operand : call->getOpOperands()) {
      Value arg = operand.get();
      if (!isa<BaseMemRefType>(arg.getType()) || !isDeviceBuffer(arg))
        continue;
      Value ranked = arg;
      if (isa<UnrankedMemRefType>(arg.getType())) {
        auto cast = arg.getDefiningOp<memref::CastOp>();
        if (!cast || !isa<MemRefType>(cast.getSource().getType()))
          return call.emitError("mhc-gpu-host-memory: an unranked memref "
                                "passed to a host function must be a "
                                "memref.cast of a ranked buffer");
        ranked = cast.getSource();
      }
      auto type = cast<MemRefType>(ranked.getType());
      if (!type.getLayout().isIdentity())
        return call.emitError("mhc-gpu-host-memory: a strided view of a "
                              "device buffer passed to host function @")
               << call.getCallee() << "; not supported";
      auto host = memref::AllocOp::create(b, loc, type,
                                          dynamicSizes(b, loc, ranked));
      gpu::MemcpyOp::create(b, loc, Type(), ValueRange{}, host, ranked);
      Value replacement = host;
      if (arg != ranked)
        replacement = memref::CastOp::create(b, loc, arg.getType(), host);
      Operation *oldCast = arg != ranked ? arg.getDefiningOp() : nullptr;
      operand.set(replacement);
      if (oldCast && oldCast->use_empty())
        oldCast->erase();
      copies.push_back(host);
    }
    b.setInsertionPointAfter(call);
    for (Value host : copies)
      memref::DeallocOp::create(b, loc, host);
    return success();
  }

  /// Frees `buffer` after its last use in `body` (following views), unless
  /// it is returned.
  static LogicalResult freeAfterLastUse(Block &body, Value buffer) {
    Operation *def = buffer.getDefiningOp();
    Operation *last = def;
    bool returned = false;
    for (Operation *user : usersThroughViews(buffer)) {
      if (isa<func::ReturnOp>(user))
        returned = true;
      Operation *anc = body.findAncestorOpInBlock(*user);
      if (anc && last->isBeforeInBlock(anc))
        last = anc;
    }
    if (returned)
      return success();
    if (isa<func::ReturnOp>(last))
      return last->emitError("mhc-gpu-host-memory: unexpected use of a "
                             "device buffer in the return");
    OpBuilder b(def);
    b.setInsertionPointAfter(last);
    gpu::DeallocOp::create(b, def->getLoc(), Type(), ValueRange{}, buffer);
    return success();
  }

  /// Puts every allocation, copy, launch and free of `f` on one stream, in
  /// program order: `gpu.wait async` at entry creates it, `gpu.wait` before
  /// each return synchronizes and destroys it. A call waits for the stream
  /// first (the callee, host or compiled, may read what it produced) and a
  /// new stream starts after it. A function that already orders its GPU
  /// work with async tokens (hand-written GPU host code) is left as it is,
  /// unless it also holds synchronous GPU ops, whose order against its
  /// streams is unknown.
  static LogicalResult threadStream(func::FuncOp f) {
    Block &body = f.getBody().front();
    Operation *firstSync = nullptr, *firstAsync = nullptr;
    f.walk([&](Operation *op) {
      auto async = dyn_cast<gpu::AsyncOpInterface>(op);
      bool sync = async && !async.getAsyncToken() &&
                  async.getAsyncDependencies().empty() &&
                  isa<gpu::AllocOp, gpu::MemcpyOp, gpu::LaunchFuncOp,
                      gpu::DeallocOp>(op);
      if (sync && !firstSync)
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
      return firstSync->emitError("mhc-gpu-host-memory: a GPU allocation, "
                                  "copy or launch in nested control flow is "
                                  "not supported");
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
      } else if (auto c = dyn_cast<gpu::MemcpyOp>(op)) {
        auto n = gpu::MemcpyOp::create(b, c.getLoc(), tokType, ValueRange{tok},
                                       c.getDst(), c.getSrc());
        tok = n.getAsyncToken();
        c.erase();
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
      } else if (isa<func::CallOp>(op)) {
        gpu::WaitOp::create(b, op.getLoc(), Type(), ValueRange{tok});
        b.setInsertionPointAfter(&op);
        tok = gpu::WaitOp::create(b, op.getLoc(), tokType, ValueRange{})
                  .getAsyncToken();
      } else if (isa<func::ReturnOp>(op)) {
        gpu::WaitOp::create(b, loc, Type(), ValueRange{tok});
      }
    }
    return success();
  }

  LogicalResult runOnFunction(func::FuncOp f) {
    Block &body = f.getBody().front();
    SmallVector<memref::AllocOp> allocs;
    SmallVector<memref::GetGlobalOp> globals;
    f.walk([&](memref::AllocOp a) { allocs.push_back(a); });
    f.walk([&](memref::GetGlobalOp g) { globals.push_back(g); });
    SmallVector<Value> deviceBuffers;
    for (memref::AllocOp a : allocs) {
      if (a->getBlock() != &body)
        return a.emitError("mhc-gpu-host-memory: allocation in nested control "
                           "flow is not supported");
      FailureOr<Value> buffer = allocOnDevice(a);
      if (failed(buffer))
        return failure();
      deviceBuffers.push_back(*buffer);
    }
    for (memref::GetGlobalOp g : globals) {
      if (g->getBlock() != &body)
        return g.emitError("mhc-gpu-host-memory: a global read in nested "
                           "control flow is not supported");
      deviceBuffers.push_back(copyGlobalToDevice(g));
    }
    SmallVector<func::CallOp> hostCalls;
    for (auto call : body.getOps<func::CallOp>()) {
      auto callee = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
          call, call.getCalleeAttr());
      if (callee && callee.isExternal())
        hostCalls.push_back(call);
    }
    for (func::CallOp call : hostCalls)
      if (failed(passHostCopies(call)))
        return failure();
    for (Value buffer : deviceBuffers)
      if (failed(freeAfterLastUse(body, buffer)))
        return failure();
    if (failed(threadStream(f)))
      return failure();
    // A host-side copy would dereference device pointers.
    WalkResult copies = f.walk([&](memref::CopyOp c) -> WalkResult {
      return c.emitError("mhc-gpu-host-memory: bufferization produced a host "
                         "copy of a device buffer; not supported");
    });
    return failure(copies.wasInterrupted());
  }

  void runOnOperation() override {
    bool ok = true;
    getOperation().walk([&](func::FuncOp f) {
      if (!f.isExternal()) // a declaration has no body to rewrite
        ok &= succeeded(runOnFunction(f));
    });
    if (!ok)
      signalPassFailure();
  }
};

} // namespace
