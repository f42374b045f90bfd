//===- HostKernels.cpp - --mhc-gpu-host-kernels ---------------------------===//
//
// The GPU path's host functions hold more than mhc launches: the tensor math
// between mhc ops (a model's matmuls and norms, a test's tanh, the casts
// before printing). After bufferization and linalg-to-parallel-loops that
// math is loops over device buffers; this pass moves it onto the GPU, so no
// host code touches device memory. See the pass description in
// include/mhc/Conversion/Passes.td.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/IRMapping.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCGPUHOSTKERNELS
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;

namespace {

/// Threads per block of the kernels made here: plain elementwise/loop code,
/// one iteration of the parallel loop per thread.
constexpr int64_t kThreadsPerBlock = 256;

/// True when `op` (or an op nested in it) reads or writes a memref element.
static bool accessesElements(Operation *op) {
  WalkResult r = op->walk([](Operation *inner) {
    if (isa<memref::LoadOp, memref::StoreOp>(inner))
      return WalkResult::interrupt();
    return WalkResult::advance();
  });
  return r.wasInterrupted();
}

/// memref.copy as a parallel loop of loads and stores (any layouts), so that
/// it becomes a kernel like the rest; a rank-0 copy is one load and store.
static void expandCopy(memref::CopyOp copy) {
  OpBuilder b(copy);
  Location loc = copy.getLoc();
  Value src = copy.getSource(), dst = copy.getTarget();
  auto type = cast<MemRefType>(src.getType());
  if (type.getRank() == 0) {
    Value v = memref::LoadOp::create(b, loc, src, ValueRange{});
    memref::StoreOp::create(b, loc, v, dst, ValueRange{});
    copy.erase();
    return;
  }
  SmallVector<Value> lbs, ubs, steps;
  Value zero = arith::ConstantIndexOp::create(b, loc, 0);
  Value one = arith::ConstantIndexOp::create(b, loc, 1);
  for (int64_t d = 0; d < type.getRank(); ++d) {
    lbs.push_back(zero);
    ubs.push_back(memref::DimOp::create(b, loc, src, d));
    steps.push_back(one);
  }
  scf::ParallelOp::create(
      b, loc, lbs, ubs, steps,
      [&](OpBuilder &nb, Location nloc, ValueRange ivs) {
        Value v = memref::LoadOp::create(nb, nloc, src, ivs);
        memref::StoreOp::create(nb, nloc, v, dst, ivs);
      });
  copy.erase();
}

/// A gpu.launch of `blocks` x kThreadsPerBlock threads at `op`, whose body
/// `build` fills (given the linear thread id); `op` is then erased.
static void launchAt(Operation *op, Value blocks,
                     function_ref<void(OpBuilder &, Location, Value)> build) {
  OpBuilder b(op);
  Location loc = op->getLoc();
  Value one = arith::ConstantIndexOp::create(b, loc, 1);
  Value threads = arith::ConstantIndexOp::create(b, loc, kThreadsPerBlock);
  auto launch = gpu::LaunchOp::create(b, loc, blocks, one, one, threads, one,
                                      one);
  OpBuilder body = OpBuilder::atBlockBegin(&launch.getBody().front());
  Value linear = arith::AddIOp::create(
      body, loc,
      arith::MulIOp::create(body, loc, launch.getBlockIds().x, threads),
      launch.getThreadIds().x);
  build(body, loc, linear);
  gpu::TerminatorOp::create(body, loc);
  op->erase();
}

/// A top-level scf.parallel as one kernel over its flattened iteration
/// space: thread i runs iteration i (the last loop dimension varies
/// fastest, so neighbouring threads touch neighbouring elements).
static LogicalResult launchParallel(scf::ParallelOp loop) {
  if (loop.getNumResults() != 0)
    return loop.emitError("mhc-gpu-host-kernels: a parallel loop with "
                          "reductions is not supported on the host");
  OpBuilder b(loop);
  Location loc = loop.getLoc();
  SmallVector<Value> counts;
  Value total = arith::ConstantIndexOp::create(b, loc, 1);
  for (auto [lb, ub, step] : llvm::zip(loop.getLowerBound(),
                                       loop.getUpperBound(), loop.getStep())) {
    Value span = arith::SubIOp::create(b, loc, ub, lb);
    Value count = arith::CeilDivUIOp::create(b, loc, span, step);
    // A negative span (ub < lb) runs no iteration.
    Value empty = arith::CmpIOp::create(b, loc, arith::CmpIPredicate::slt, ub,
                                        lb);
    Value zero = arith::ConstantIndexOp::create(b, loc, 0);
    count = arith::SelectOp::create(b, loc, empty, zero, count);
    counts.push_back(count);
    total = arith::MulIOp::create(b, loc, total, count);
  }
  Value threads = arith::ConstantIndexOp::create(b, loc, kThreadsPerBlock);
  Value one = arith::ConstantIndexOp::create(b, loc, 1);
  // At least one block: a grid of zero blocks is not a valid launch.
  Value blocks = arith::MaxUIOp::create(
      b, loc, arith::CeilDivUIOp::create(b, loc, total, threads), one);
  launchAt(loop, blocks, [&](OpBuilder &body, Location l, Value linear) {
    Value inRange = arith::CmpIOp::create(body, l, arith::CmpIPredicate::ult,
                                          linear, total);
    auto guard = scf::IfOp::create(body, l, inRange, /*withElse=*/false);
    OpBuilder in = guard.getThenBodyBuilder();
    IRMapping map;
    Value rest = linear;
    for (int64_t d = static_cast<int64_t>(counts.size()) - 1; d >= 0; --d) {
      Value idx = d == 0 ? rest
                         : arith::RemUIOp::create(in, l, rest, counts[d])
                               .getResult();
      if (d > 0)
        rest = arith::DivUIOp::create(in, l, rest, counts[d]);
      Value iv = arith::AddIOp::create(
          in, l, loop.getLowerBound()[d],
          arith::MulIOp::create(in, l, idx, loop.getStep()[d]));
      map.map(loop.getInductionVars()[d], iv);
    }
    for (Operation &op : loop.getBody()->without_terminator())
      in.clone(op, map);
  });
  return success();
}

/// Any other top-level op that touches device memory runs as a one-thread
/// kernel (e.g. a full reduction's sequential loop, a rank-0 fill).
static LogicalResult launchSerial(Operation *op) {
  for (Value r : op->getResults())
    if (!r.use_empty())
      return op->emitError(
                 "mhc-gpu-host-kernels: host code reads an element of a "
                 "device buffer (")
             << op->getName()
             << "); the GPU pipeline keeps every buffer on the device";
  OpBuilder b(op);
  Value one = arith::ConstantIndexOp::create(b, op->getLoc(), 1);
  launchAt(op, one, [&](OpBuilder &body, Location l, Value linear) {
    Value zero = arith::ConstantIndexOp::create(body, l, 0);
    Value first = arith::CmpIOp::create(body, l, arith::CmpIPredicate::eq,
                                        linear, zero);
    auto guard = scf::IfOp::create(body, l, first, /*withElse=*/false);
    guard.getThenBodyBuilder().clone(*op);
  });
  return success();
}

struct MHCGPUHostKernelsPass
    : mhc::impl::MHCGPUHostKernelsBase<MHCGPUHostKernelsPass> {
  using MHCGPUHostKernelsBase::MHCGPUHostKernelsBase;

  LogicalResult runOnFunction(func::FuncOp f) {
    Block &entry = f.getBody().front();
    // Element accesses below the entry block (in host control flow around
    // launches) cannot be made kernels one op at a time.
    for (Block &block : llvm::drop_begin(f.getBody().getBlocks()))
      for (Operation &op : block)
        if (accessesElements(&op) || isa<memref::CopyOp>(op))
          return op.emitError("mhc-gpu-host-kernels: device memory accessed "
                              "outside the function's entry block");
    SmallVector<memref::CopyOp> copies;
    for (Operation &op : entry)
      if (auto copy = dyn_cast<memref::CopyOp>(op))
        copies.push_back(copy);
    for (memref::CopyOp copy : copies)
      expandCopy(copy);
    SmallVector<Operation *> work;
    for (Operation &op : entry)
      if (!isa<gpu::LaunchOp>(op) && accessesElements(&op))
        work.push_back(&op);
    for (Operation *op : work) {
      LogicalResult done = isa<scf::ParallelOp>(op)
                               ? launchParallel(cast<scf::ParallelOp>(op))
                               : launchSerial(op);
      if (failed(done))
        return failure();
    }
    return success();
  }

  void runOnOperation() override {
    bool ok = true;
    for (auto f : getOperation().getOps<func::FuncOp>())
      if (!f.isExternal())
        ok &= succeeded(runOnFunction(f));
    if (!ok)
      signalPassFailure();
  }
};

} // namespace
