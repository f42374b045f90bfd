//===- ProjectionStage.cpp - norm_project on the tensor cores -------------===//
//
// After each chunk's tile is in shared memory the 4 warps split its k16
// steps (warp w: steps w, w + W, ...), each covering the whole token tile:
// nvvm.mma.sync m16n8k16 bf16 with f32 accumulation (nvgpu.mma.sync cannot
// lower bf16 in MLIR 22), A fragments by ldmatrix from the tile, B = fn
// split into a bf16 head and the bf16 rounding of the remainder for ~16
// bits of fn, from global memory (L1/L2: fn is read once per tile of
// tokens, not per token): prepared, i.e. split and laid out in fragment
// order once per call by the fn prepare kernel (also here; one 16-byte load
// per fragment), or, under a schedule without that kernel, read and split
// by every tile. At the end: the sums of squares are reduced per token
// row, the warps' partial products are summed in shared memory, and
// mix = dot * rsqrt(sumsq / K + eps) (overflow-free, see finishProjection).
//
//===----------------------------------------------------------------------===//
#include "ForwardKernel.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

/// fn[m][kcol], fn[m][kcol + 1] of this thread's B fragment (zeros outside
/// M rows / C columns); `vec`: fn's base pointer is 8-byte aligned.
Value ForwardKernelBuilder::loadFnPair(Value m, Value stream, Value col,
                                       bool vec) {
  Value fn = arg(p.np.getFn());
  int64_t K = p.n * p.C;
  auto v2 = VectorType::get({2}, f32);
  Value ok = nullptr;
  if (p.M() % 8 != 0)
    ok = ult(m, p.M());
  if (p.C % p.s.chunkColumns != 0) {
    Value okc = ult(col, ci(p.C));
    ok = ok ? band(ok, okc) : okc;
  }
  Value at = add(mul(m, ci(K)), add(mul(stream, ci(p.C)), col));
  if (ok)
    at = select(ok, at, ci(0));
  // Two scalar loads; the second is masked past the row end for odd C.
  auto scalarPair = [&]() -> Value {
    Value e1;
    if (p.C % 2 == 0) {
      e1 = ld(fn, add(at, ci(1)));
    } else {
      Value okNext = ult(add(col, ci(1)), ci(p.C));
      Value at1 = select(okNext, add(at, ci(1)), at);
      e1 = select(okNext, ld(fn, at1), cf(0.0));
    }
    return f32Pair(ld(fn, at), e1);
  };
  // The pair is 8-byte aligned when fn is (`vec`) and C is even: one load.
  Value v = vec && p.C % 2 == 0
                ? vector::LoadOp::create(b, loc, v2, fn, ValueRange{at}, false,
                                         llvm::MaybeAlign(8))
                      .getResult()
                : scalarPair();
  if (ok)
    v = select(ok, v, arith::ConstantOp::create(b, loc, b.getZeroAttr(v2)));
  return v;
}

/// The B fragment of lane `ln` for k16 step `step` of the chunk at column
/// `c0` and n8 tile `nt` (mix m = nt*8 + ln/4, k columns 2q..2q+1 and
/// 2q+8..2q+9 of the step, q = ln % 4), read from fn and split: the words
/// head0, rest0, head1, rest1.
SmallVector<Value> ForwardKernelBuilder::splitFnFragment(Value c0, Value step,
                                                         Value nt, Value ln,
                                                         bool vec) {
  int64_t CC = p.s.chunkColumns;
  Value kk = mul(step, ci(16)); // k inside the chunk
  Value stream = div(kk, CC);   // a k16 step stays in one stream
  Value col = add(add(c0, rem(kk, CC)), mul(rem(ln, 4), ci(2)));
  Value m = add(div(ln, 4), mul(nt, ci(8)));
  auto [h0, l0] = splitBf16(loadFnPair(m, stream, col, vec));
  auto [h1, l1] = splitBf16(loadFnPair(m, stream, add(col, ci(8)), vec));
  return {h0, l0, h1, l1};
}

/// The fn prepare kernel: one thread per lane and fragment writes the
/// fragment's 4 words where the projection's 16-byte load reads them
/// (ForwardPlan::preparedFnWords).
void ForwardKernelBuilder::emitPrepareFn(int64_t threads) {
  int64_t steps = p.KCH() / 16, NT = p.NT();
  Value block = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value item = add(mul(block, ci(threads)), tid);
  emitIf(ult(item, p.preparedFnWords() / 4), [&]() {
    Value ln = rem(item, 32), fragment = div(item, 32);
    Value nt = rem(fragment, NT), chunkStep = div(fragment, NT);
    Value step = rem(chunkStep, steps), chunk = div(chunkStep, steps);
    SmallVector<Value> words = splitFnFragment(
        mul(chunk, ci(p.s.chunkColumns)), step, nt, ln, /*vec=*/false);
    Value v = vector::FromElementsOp::create(
        b, loc, VectorType::get({4}, i32), words);
    vector::StoreOp::create(b, loc, v, fnPrepared,
                            ValueRange{mul(item, ci(4))}, false,
                            llvm::MaybeAlign(16));
  });
}

/// The tensor-core part of one chunk. The B loads of kGroup steps are
/// issued together so that their latency overlaps; `vecFn` selects 8-byte
/// loads of fn where it is read itself (no prepared fn).
SmallVector<Value> ForwardKernelBuilder::emitMma(Value c0,
                                                 SmallVector<Value> acc,
                                                 bool vecFn) {
  int64_t CC = p.s.chunkColumns, NT = p.NT(), MT = p.MT();
  int64_t steps = p.KCH() / 16, W = p.warps();
  auto fragType = VectorType::get({4, 2}, b.getBF16Type());
  // Registers: kGroup * NT B fragments of 4 i32 in flight.
  int64_t kGroup = std::max<int64_t>(1, 12 / NT);
  auto loadB = [&](Value s) {
    SmallVector<Value> frag; // per nt: hi0, lo0, hi1, lo1
    if (!fnPrepared) {
      for (int64_t nt = 0; nt < NT; ++nt)
        frag.append(splitFnFragment(c0, s, ci(nt), lane, vecFn));
      return frag;
    }
    Value step = add(mul(div(c0, CC), ci(steps)), s); // of the whole K
    for (int64_t nt = 0; nt < NT; ++nt) {
      Value at = mul(add(mul(add(mul(step, ci(NT)), ci(nt)), ci(32)), lane),
                     ci(4));
      Value words = vector::LoadOp::create(
          b, loc, VectorType::get({4}, i32), fnPrepared, ValueRange{at},
          false, llvm::MaybeAlign(16));
      for (int64_t e = 0; e < 4; ++e)
        frag.push_back(vector::ExtractOp::create(b, loc, words, e));
    }
    return frag;
  };
  auto ldA = [&](Value tile, Value kk, int64_t mt) {
    Value row = add(rem(lane, 16), ci(mt * 16));
    Value at = add(mul(row, ci(p.ldA())), add(kk, mul(div(lane, 16), ci(8))));
    Value f = nvgpu::LdMatrixOp::create(b, loc, fragType, tile, ValueRange{at},
                                        false, 4);
    SmallVector<Value> regs;
    for (int64_t r = 0; r < 4; ++r)
      regs.push_back(asI32(vector::ExtractOp::create(b, loc, f, r)));
    return regs;
  };
  auto compute = [&](Value s, ArrayRef<Value> frag,
                     SmallVector<Value> a2) -> SmallVector<Value> {
    Value kk = mul(s, ci(16));
    for (int64_t mt = 0; mt < MT; ++mt) {
      SmallVector<Value> aHi = ldA(aTile, kk, mt);
      SmallVector<Value> aLo;
      if (aTileLo)
        aLo = ldA(aTileLo, kk, mt);
      for (int64_t nt = 0; nt < NT; ++nt) {
        MutableArrayRef<Value> c(a2.data() + (mt * NT + nt) * 4, 4);
        ArrayRef<Value> f = frag.slice(nt * 4, 4);
        // Small terms first: the tensor cores truncate when accumulating.
        mmaBf16(c, aHi, f[1], f[3]);
        if (aTileLo)
          mmaBf16(c, aLo, f[0], f[2]);
        mmaBf16(c, aHi, f[0], f[2]);
      }
    }
    return a2;
  };
  int64_t full = steps / W; // steps every warp has
  for (int64_t j0 = 0; j0 < full; j0 += kGroup) {
    int64_t j1 = std::min(full, j0 + kGroup);
    SmallVector<SmallVector<Value>> frags;
    for (int64_t j = j0; j < j1; ++j)
      frags.push_back(loadB(add(warp, ci(j * W))));
    for (int64_t j = j0; j < j1; ++j)
      acc = compute(add(warp, ci(j * W)), frags[j - j0], acc);
  }
  if (steps % W != 0) { // the last steps belong to the first warps
    Value s = add(warp, ci(full * W));
    SmallVector<Type> types(acc.size(), f32);
    acc = emitIfElse(
        types, ult(s, steps), [&]() { return compute(s, loadB(s), acc); },
        [&]() { return acc; });
  }
  return acc;
}

void ForwardKernelBuilder::finishProjection(ArrayRef<Value> acc,
                                            ArrayRef<Value> ss,
                                            int64_t itemsPerThread,
                                            bool ragged) {
  int64_t NVC = p.s.chunkColumns / acts.vec, threads = p.s.threads;
  int64_t items = p.s.tileTokens * NVC, M = p.M(), NT = p.NT();
  // Sums of squares: the NVC threads of one token row are consecutive lanes
  // (NVC is a power of two <= 32); a shuffle tree adds them.
  for (int64_t r = 0; r < itemsPerThread; ++r) {
    Value v = warpSum(ss[r], NVC);
    Value item = add(tid, ci(r * threads));
    Value first = eq(rem(item, NVC), ci(0));
    if (ragged)
      first = band(first, ult(item, items));
    emitIf(first, [&]() { st(v, ssTok, div(item, NVC)); });
  }
  // Block reduction of the warps' partial products (each warp holds the
  // whole tile for its k16 steps), one warp at a time.
  Value g = div(lane, 4), tq = rem(lane, 4);
  for (int64_t w = 0; w < p.warps(); ++w) {
    emitIf(eq(warp, ci(w)), [&]() {
      for (int64_t mt = 0; mt < p.MT(); ++mt)
        for (int64_t nt = 0; nt < NT; ++nt)
          for (int64_t e = 0; e < 4; ++e) {
            Value row = add(g, ci(mt * 16 + (e / 2) * 8));
            Value col = add(mul(tq, ci(2)), ci(nt * 8 + e % 2));
            Value v = acc[(mt * NT + nt) * 4 + e];
            auto body = [&]() {
              Value i = add(mul(row, ci(M)), col);
              st(w ? fadd(ld(red, i), v) : v, red, i);
            };
            if ((nt + 1) * 8 <= M)
              body();
            else
              emitIf(ult(col, M), body);
          }
    });
    barrier();
  }
  // r = rsqrt(sumsq / K + eps), once per token, into ssTok, overflow-free
  // (normFactor): where the f32 sum overflowed, one thread re-reads the
  // token's row as stored (x, or post_res's x_next); a row that is not in
  // memory gives NaN.
  float eps = p.np.getEps().convertToFloat();
  int64_t K = p.n * p.C;
  Value row = p.pr ? outputArg(p.pr.getResult()) : arg(p.np.getX());
  emitFor(tid, ci(p.s.tileTokens), ci(threads), {}, [&](Value t, ValueRange) {
    Value r = normFactor(ld(ssTok, t), row, [&] { return add(tile0, t); }, K,
                         eps);
    st(r, ssTok, t);
    return SmallVector<Value>{};
  });
  barrier();
  // mix = dot * r.
  Value mixOut = outputArg(p.np.getMix());
  emitFor(tid, ci(p.s.tileTokens * M), ci(threads), {},
          [&](Value i, ValueRange) {
            Value t = div(i, M);
            Value v = fmul(ld(red, i), ld(ssTok, t));
            st(v, red, i);
            if (mixOut)
              emitIf(ult(add(tile0, t), T),
                     [&]() { st(v, mixOut, add(mul(tile0, ci(M)), i)); });
            return SmallVector<Value>{};
          });
  barrier();
}
