//===- BackwardParams.cpp - the params kernel of the backward -------------===//
//
// The parameter gradients from the partial sums, in a fixed order (two
// runs give bit-identical results; no float atomics):
//   blocks [0, B):     dfn[e] = sum over the token splits s (in order) of
//                      the cols kernel's partial[s][e], one element a thread;
//   with the pre-norm, blocks [B, B + D): dweight[c] = sum over the splits
//                      (in order) of the cols kernel's partial[s][c],
//                      rounded once to the weight's type;
//   blocks [B (+ D), .. + M + 3): one parameter of dbase (M) or dscale (3) each:
//                      the rows (or tokens) kernel's blocks' partials,
//                      strided over the threads (in order), then a
//                      shared-memory tree.
//
//===----------------------------------------------------------------------===//
#include "BackwardKernel.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

void gpu_kernels::emitParamsKernel(KernelBuilder &k, const BackwardPlan &p,
                                   const Schedule &partials,
                                   const Schedule &cols, const Schedule &params,
                                   Value T, Value dfnPartial,
                                   Value paramPartial, Value dfn, Value dscale,
                                   Value dbase, Value reduceS,
                                   Value dweightPartial, Value dweight) {
  int64_t M = p.M(), nC = p.n * p.C, threads = params.threads, C = p.C;
  int64_t PW = p.paramWidth(), dfnBlocks = (M * nC + threads - 1) / threads;
  int64_t dweightBlocks = dweight ? (C + threads - 1) / threads : 0;
  Value tid = gpu::ThreadIdOp::create(k.b, k.loc, gpu::Dimension::x);
  Value block = gpu::BlockIdOp::create(k.b, k.loc, gpu::Dimension::x);
  // Sums over the token splits of a [splits x width] partial, one element a
  // thread from `firstBlock` on.
  auto sumSplits = [&](Value partial, int64_t width, int64_t firstBlock,
                       function_ref<void(Value, Value)> store) {
    Value e = k.add(k.mul(k.sub(block, k.ci(firstBlock)), k.ci(threads)), tid);
    k.emitIf(k.ult(e, width), [&]() {
      Value sum = k.ld(partial, e);
      for (int64_t s = 1; s < cols.tokenSplits; ++s)
        sum = k.fadd(sum, k.ld(partial, k.add(k.ci(s * width), e)));
      store(sum, e);
    });
  };
  Value isSum = k.ult(block, dfnBlocks + dweightBlocks);
  auto ifOp = scf::IfOp::create(k.b, k.loc, TypeRange{}, isSum, true);
  OpBuilder::InsertionGuard guard(k.b);
  k.b.setInsertionPointToStart(ifOp.thenBlock());
  auto dfnSums = [&]() {
    sumSplits(dfnPartial, M * nC, 0,
              [&](Value sum, Value e) { k.st(sum, dfn, e); });
  };
  if (!dweight) {
    dfnSums();
  } else {
    Type wt = cast<MemRefType>(dweight.getType()).getElementType();
    k.emitIfElse(k.ult(block, dfnBlocks), dfnSums, [&]() {
      sumSplits(dweightPartial, C, dfnBlocks, [&](Value sum, Value e) {
        k.st(k.toAct(sum, wt), dweight, e);
      });
    });
  }
  k.b.setInsertionPointToStart(ifOp.elseBlock());
  {
    Value param = arith::SubIOp::create(k.b, k.loc, block,
                                        k.ci(dfnBlocks + dweightBlocks));
    Value blocks = arith::MaxUIOp::create(
        k.b, k.loc,
        arith::CeilDivUIOp::create(k.b, k.loc, T, k.ci(partials.tileTokens)),
        k.ci(1));
    Value sum = k.emitFor(tid, blocks, k.ci(threads), k.cf(0.0),
                          [&](Value blk, ValueRange acc) -> SmallVector<Value> {
                            return {k.fadd(acc[0],
                                           k.ld(paramPartial,
                                                k.add(k.mul(blk, k.ci(PW)),
                                                      param)))};
                          })[0];
    k.st(sum, reduceS, tid);
    k.barrier();
    for (int64_t half = threads / 2; half >= 1; half /= 2) {
      k.emitIf(k.ult(tid, half), [&]() {
        k.st(k.fadd(k.ld(reduceS, tid), k.ld(reduceS, k.add(tid, k.ci(half)))),
             reduceS, tid);
      });
      k.barrier();
    }
    k.emitIf(k.eq(tid, k.ci(0)), [&]() {
      Value total = k.ld(reduceS, k.ci(0));
      k.emitIfElse(
          k.ult(param, M), [&]() { k.st(total, dbase, param); },
          [&]() {
            k.st(total, dscale,
                 arith::SubIOp::create(k.b, k.loc, param, k.ci(M)));
          });
    });
  }
}
