//===- BackwardRows.cpp - the rows kernel of the backward -----------------===//
//
// A block owns a tile of tokens; each token row is walked by chunkColumns /
// vec consecutive lanes, one 16-byte vector per lane and chunk (~256
// contiguous bytes per row and chunk). Per lane and chunk: dy = sum_j
// post[j] dout[j] is stored, and the row sums
//   dpost[j] = sum_c y dout[j],  dcomb[i][j] = sum_c x[i] dout[j]   (post_res)
//   dpre[i]  = sum_c du x[i] (pre_apply) sum x^2 (norm_project)
// accumulate in f32 registers; a shuffle tree then adds the lanes of a row.
// The token pass (BackwardTokenStage.cpp) turns them into the record the
// cols kernel reads and into per-block partial sums of dbase and dscale:
// here after the tile's rows, or (RowsPart::Rows / Tokens) in a kernel of
// its own that reads the sums back from memory.
//
//===----------------------------------------------------------------------===//
#include "BackwardKernel.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

/// The f32 lanes of an activation vector.
static SmallVector<Value> lanes(KernelBuilder &k, Value raw) {
  Value v = k.toF32(raw);
  SmallVector<Value> out;
  for (int64_t e = 0; e < k.acts.vec; ++e)
    out.push_back(vector::ExtractOp::create(k.b, k.loc, v, e));
  return out;
}

/// acc + sum_e a[e] * b[e], one FMA chain.
static Value dot(KernelBuilder &k, ArrayRef<Value> a, ArrayRef<Value> b,
                 Value acc) {
  for (auto [x, y] : llvm::zip(a, b))
    acc = k.fma(x, y, acc);
  return acc;
}

void RowsKernelBuilder::loadCoefficients(Value dest, int64_t group, Value given,
                                         function_ref<Value(Value)> finish) {
  // dest[t][i] = finish(mix[group * n + i] * scale[group] + base[group * n +
  // i]) per token of the tile, as split_mixes computes it (or given [T x n]).
  int64_t n = p.n, M = p.M();
  Value scaleOf = given ? Value() : ld(arg(p.scale), ci(group));
  emitIf(ult(tid, s.tileTokens), [&]() {
    Value token = add(tile0, tid);
    Value ok = ult(token, T);
    for (int64_t i = 0; i < n; ++i) {
      Value v = f32OrZero(ok, [&]() {
        if (given)
          return ld(given, add(mul(token, ci(n)), ci(i)));
        Value m = ld(arg(p.mix), add(mul(token, ci(M)), ci(group * n + i)));
        Value a = fadd(fmul(m, scaleOf), ld(arg(p.base), ci(group * n + i)));
        return finish(a);
      });
      st(v, dest, add(mul(tid, ci(n)), ci(i)));
    }
  });
  barrier();
}

void RowsKernelBuilder::loadPost() {
  // post = post_mult * sigmoid(a) (or given), what dy needs during the row
  // walk.
  loadCoefficients(postS, 1, arg(p.postIn),
                   [&](Value a) { return fmul(sigmoid(a), cf(p.postMult)); });
}

void RowsKernelBuilder::loadPre() {
  // pre = sigmoid(a) + pre_eps: the row walk makes u = sum_i pre[i] x[i]
  // again for the pre-norm's gradient (docs/PreNorm.md).
  loadCoefficients(preRowS, 0, Value(),
                   [&](Value a) { return fadd(sigmoid(a), cf(p.preEps)); });
}

void RowsKernelBuilder::emitRowLoop() {
  int64_t n = p.n, C = p.C, CC = s.chunkColumns, vec = acts.vec;
  int64_t NVC = CC / vec;
  // post_res_grad's sums need y (not in pre_backward, which gets them).
  bool post = static_cast<bool>(p.y);
  bool preNorm = p.preNorm(); // du = rms_norm_grad(u, weight, g), u again
  bool pre = static_cast<bool>(p.du) || preNorm;
  bool norm = static_cast<bool>(p.npg);
  Value t = div(tid, NVC);
  Value token = add(tile0, t);
  Value ok = ult(token, T);
  Value colInChunk = mul(rem(tid, NVC), ci(vec));
  SmallVector<Value> postOf, preOf;
  if (post)
    for (int64_t j = 0; j < n; ++j)
      postOf.push_back(ld(postS, add(mul(t, ci(n)), ci(j))));
  if (preNorm)
    for (int64_t i = 0; i < n; ++i)
      preOf.push_back(ld(preRowS, add(mul(t, ci(n)), ci(i))));

  // The accumulators, in rowSum order, of the sums this group needs.
  SmallVector<int64_t> slots;
  if (post)
    for (int64_t q = 0; q < n + n * n; ++q)
      slots.push_back(p.rowSumDpost() + q);
  if (pre)
    for (int64_t i = 0; i < n; ++i)
      slots.push_back(p.rowSumDpre() + i);
  if (norm)
    slots.push_back(p.rowSumSq());
  // The pre-norm's sums besides (dpre's slots then hold sum_c w g x_i):
  // B_i = sum_c u x_i, S = sum_c w g u, sum u^2 and sum (2^-96 u)^2.
  int64_t normB = slots.size(), normS = normB + n, normU2 = normS + 1,
          normU2s = normS + 2;
  SmallVector<Value> inits(slots.size() + (preNorm ? n + 3 : 0), cf(0.0));
  auto slotOf = [&](int64_t rowSum) {
    return llvm::find(slots, rowSum) - slots.begin();
  };

  Value xArg = arg(p.x), rowBase = mul(token, ci(n));
  // The chunk walk, with guards on every vector or, `inRange` (the row's
  // token is below T, C is whole chunks, every pointer aligned), none: one
  // branch per row instead of one per vector and chunk.
  auto walk = [&](bool inRange) {
    auto load = [&](Value mem, Value base, Value c) {
      return inRange ? loadActInRange(mem, base, c, /*raw=*/true)
                     : loadAct(mem, base, c, ok, /*raw=*/true);
    };
    return emitFor(
        ci(0), ci((C + CC - 1) / CC), ci(1), inits,
        [&](Value chunk, ValueRange carried) -> SmallVector<Value> {
          SmallVector<Value> acc(carried.begin(), carried.end());
          Value c = add(mul(chunk, ci(CC)), colInChunk);
          // All loads of the chunk first, then the arithmetic.
          SmallVector<Value> xs, douts;
          Value yRaw, duRaw;
          for (int64_t i = 0; i < n; ++i)
            xs.push_back(load(xArg, mul(add(rowBase, ci(i)), ci(C)), c));
          if (post) {
            for (int64_t j = 0; j < n; ++j)
              douts.push_back(
                  load(arg(p.dout), mul(add(rowBase, ci(j)), ci(C)), c));
            yRaw = load(arg(p.y), mul(token, ci(C)), c);
          }
          Value wRaw;
          if (preNorm) {
            duRaw = load(arg(p.g), mul(token, ci(C)), c); // g, the norm's dout
            wRaw = load(arg(p.normWeight), ci(0), c);
          } else if (pre) {
            duRaw = load(arg(p.du), mul(token, ci(C)), c);
          }

          SmallVector<SmallVector<Value>> X, D;
          for (Value v : xs)
            X.push_back(lanes(*this, v));
          for (Value v : douts)
            D.push_back(lanes(*this, v));
          if (post) {
            if (Value dyOut = arg(p.dyOut)) {
              Value dy = fmul(splat(postOf[0], vecF32()), toF32(douts[0]));
              for (int64_t j = 1; j < n; ++j)
                dy = fma(splat(postOf[j], vecF32()), toF32(douts[j]), dy);
              if (inRange)
                storeActInRange(dy, dyOut, mul(token, ci(C)), c);
              else
                storeAct(dy, dyOut, mul(token, ci(C)), c, ok);
            }
            SmallVector<Value> Y = lanes(*this, yRaw);
            for (int64_t j = 0; j < n; ++j) {
              int64_t q = slotOf(p.rowSumDpost() + j);
              acc[q] = dot(*this, Y, D[j], acc[q]);
            }
            for (int64_t i = 0; i < n; ++i)
              for (int64_t j = 0; j < n; ++j) {
                int64_t q = slotOf(p.rowSumDcomb() + i * n + j);
                acc[q] = dot(*this, X[i], D[j], acc[q]);
              }
          }
          if (pre && !preNorm) {
            SmallVector<Value> U = lanes(*this, duRaw);
            for (int64_t i = 0; i < n; ++i) {
              int64_t q = slotOf(p.rowSumDpre() + i);
              acc[q] = dot(*this, U, X[i], acc[q]);
            }
          }
          if (preNorm) {
            // wg = weight * g; u as the forward stored it (the same fma
            // chain over the streams, one rounding).
            SmallVector<Value> G = lanes(*this, duRaw), Wt = lanes(*this, wRaw);
            SmallVector<Value> WG, Ub, Us;
            Value scale = cf(0x1p-96);
            for (int64_t e = 0; e < vec; ++e) {
              WG.push_back(fmul(Wt[e], G[e]));
              Value v = fmul(preOf[0], X[0][e]);
              for (int64_t i = 1; i < n; ++i)
                v = fma(preOf[i], X[i][e], v);
              Ub.push_back(roundAct(v));
              Us.push_back(fmul(Ub.back(), scale));
            }
            for (int64_t i = 0; i < n; ++i) {
              int64_t q = slotOf(p.rowSumDpre() + i);
              acc[q] = dot(*this, WG, X[i], acc[q]);
              acc[normB + i] = dot(*this, Ub, X[i], acc[normB + i]);
            }
            acc[normS] = dot(*this, WG, Ub, acc[normS]);
            acc[normU2] = dot(*this, Ub, Ub, acc[normU2]);
            acc[normU2s] = dot(*this, Us, Us, acc[normU2s]);
          }
          if (norm) {
            int64_t q = slotOf(p.rowSumSq());
            for (int64_t i = 0; i < n; ++i)
              acc[q] = dot(*this, X[i], X[i], acc[q]);
          }
          return acc;
        });
  };
  SmallVector<Value> sums;
  if (aligned && C % CC == 0)
    sums = emitIfElse(
        SmallVector<Type>(inits.size(), f32), band(aligned, ok),
        [&]() { return walk(/*inRange=*/true); },
        [&]() { return walk(/*inRange=*/false); });
  else
    sums = walk(/*inRange=*/false);

  // The NVC lanes of a row are consecutive lanes of one warp.
  Value first = eq(rem(tid, NVC), ci(0));
  SmallVector<Value> reduced;
  for (Value v : sums)
    reduced.push_back(warpSum(v, NVC));
  if (preNorm) {
    // r = rsqrt(sum u^2 / C + eps), overflow-free as the forward's; k =
    // r^3 S / C; dpre_i = sum_c du x_i = r sum_c w g x_i - k sum_c u x_i.
    Value r = normFactorOfSums(reduced[normU2], reduced[normU2s], C, p.rmsEps);
    Value k = fdiv(fmul(fmul(fmul(r, r), r), reduced[normS]), cf(double(C)));
    for (int64_t i = 0; i < n; ++i) {
      int64_t q = slotOf(p.rowSumDpre() + i);
      reduced[q] = fsub(fmul(r, reduced[q]), fmul(k, reduced[normB + i]));
    }
    reduced.resize(slots.size());
    slots.push_back(p.rowSumR());
    reduced.push_back(r);
    slots.push_back(p.rowSumK());
    reduced.push_back(k);
  }
  if (part == RowsPart::Rows) { // for the token kernel
    int64_t W = p.storedRowSums(), firstSum = p.firstStoredRowSum();
    emitIf(band(first, ok), [&]() {
      for (auto [slot, v] : llvm::zip(slots, reduced))
        st(v, rowSumsMem, add(mul(token, ci(W)), ci(slot - firstSum)));
    });
    return;
  }
  emitIf(first, [&]() {
    for (auto [slot, v] : llvm::zip(slots, reduced))
      st(v, sumsS, add(mul(t, ci(p.rowSums())), ci(slot)));
  });
  barrier();
}

void RowsKernelBuilder::loadRowSums() {
  // Element q of the tile's T x W sums is row sum firstSum + q % W of token
  // q / W: consecutive threads read consecutive floats.
  int64_t W = p.storedRowSums(), firstSum = p.firstStoredRowSum();
  int64_t TT = s.tileTokens;
  emitFor(tid, ci(TT * W), ci(s.threads), {}, [&](Value q, ValueRange) {
    Value t = div(q, W);
    Value token = add(tile0, t);
    Value v = f32OrZero(ult(token, T), [&]() {
      return ld(rowSumsMem, add(mul(tile0, ci(W)), q));
    });
    st(v, sumsS, add(mul(t, ci(p.rowSums())), add(ci(firstSum), rem(q, W))));
    return SmallVector<Value>{};
  });
  barrier();
}

void RowsKernelBuilder::emitParamPartials() {
  int64_t PW = p.paramWidth(), TT = s.tileTokens;
  Value block = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  emitFor(tid, ci(PW), ci(s.threads), {}, [&](Value q, ValueRange) {
    Value sum = ld(paramS, q);
    for (int64_t t = 1; t < TT; ++t)
      sum = fadd(sum, ld(paramS, add(ci(t * PW), q)));
    st(sum, paramPartial, add(mul(block, ci(PW)), q));
    return SmallVector<Value>{};
  });
}

void RowsKernelBuilder::emitBody() {
  if (part == RowsPart::Tokens) {
    loadRowSums();
    emitTokenPass();
    return;
  }
  if (p.y)
    loadPost();
  if (p.preNorm())
    loadPre();
  emitRowLoop();
  if (part == RowsPart::Rows)
    return;
  if (p.hasTokenPass()) {
    emitTokenPass();
    return;
  }
  // post_backward: dpost and dcomb go to memory for the pre_backward group.
  int64_t n = p.n;
  emitIf(ult(tid, s.tileTokens), [&]() {
    Value token = add(tile0, tid);
    emitIf(ult(token, T), [&]() {
      Value row = mul(tid, ci(p.rowSums()));
      if (Value out = arg(p.dpostOut))
        for (int64_t j = 0; j < n; ++j)
          st(ld(sumsS, add(row, ci(p.rowSumDpost() + j))), out,
             add(mul(token, ci(n)), ci(j)));
      if (Value out = arg(p.dcombOut))
        for (int64_t e = 0; e < n * n; ++e)
          st(ld(sumsS, add(row, ci(p.rowSumDcomb() + e))), out,
             add(mul(token, ci(n * n)), ci(e)));
    });
  });
}

void RowsKernelBuilder::emitTokenPass() {
  int64_t n = p.n;
  if (tokenLanes()) {
    // n lanes a token (the tile's tokens fill whole warps); the lanes of
    // tokens past T leave the warp's syncs (`mask`: the live prefix).
    emitIf(ult(tid, s.tileTokens * n), [&]() {
      Value t = div(tid, n), line = rem(tid, n);
      Value token = add(tile0, t);
      Value warpToken0 = add(tile0, mul(div(tid, 32), ci(32 / n)));
      Value liveTokens = arith::SubIOp::create(
          b, loc, arith::MaxUIOp::create(b, loc, T, warpToken0), warpToken0);
      Value liveLanes = arith::MinUIOp::create(b, loc, mul(liveTokens, ci(n)),
                                               ci(32));
      Type i64 = b.getI64Type();
      Value one = arith::ConstantIntOp::create(b, loc, i64, 1);
      Value bits = arith::ShLIOp::create(
          b, loc, one, arith::IndexCastOp::create(b, loc, i64, liveLanes));
      Value mask = arith::TruncIOp::create(
          b, loc, b.getI32Type(), arith::SubIOp::create(b, loc, bits, one));
      emitIfElse(
          ult(token, T),
          [&]() { emitTokenBackwardLanes(t, token, line, mask); },
          [&]() { // tokens past T add nothing to the parameter gradients
            emitIf(eq(line, ci(0)), [&]() {
              for (int64_t q = 0; q < p.paramWidth(); ++q)
                st(cf(0.0), paramS, add(mul(t, ci(p.paramWidth())), ci(q)));
            });
          });
    });
    barrier();
    emitParamPartials();
    return;
  }
  emitIf(ult(tid, s.tileTokens), [&]() {
    Value token = add(tile0, tid);
    emitIfElse(
        ult(token, T), [&]() { emitTokenBackward(tid, token); },
        [&]() { // tokens past T add nothing to the parameter gradients
          for (int64_t q = 0; q < p.paramWidth(); ++q)
            st(cf(0.0), paramS, add(mul(tid, ci(p.paramWidth())), ci(q)));
        });
  });
  barrier();
  emitParamPartials();
}
