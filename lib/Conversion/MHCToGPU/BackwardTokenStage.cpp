//===- BackwardTokenStage.cpp - split_mixes + Sinkhorn backward per token -===//
//
// After the row sums are in shared memory, per token (loops unrolled for the
// static n):
//
//   a = mix * scale + base; pre, post, logits recomputed (split_mixes);
//   Sinkhorn forward from the logits, keeping each normalisation's divisor
//   (2R - 1 vectors of n, private memory: the iterates themselves are not
//   stored); comb goes to the record;
//   the normalisations walked backwards: for Y = X / d along an axis,
//   dX = (dY - sum_axis(dY * Y)) / d, and X = Y * d recovers the previous
//   iterate; then the softmax: dL = P0 (g - sum_j g P0) with P0 recomputed;
//   da from dpre, dpost (sigmoid slopes) and dL; dmix = da * scale;
//   norm_project: r = rsqrt(sum x^2 / K + eps), dm = dmix r and
//   2 dS = -(sum_m dmix mix) r^2 / K (m = mix / r: the saved mix is
//   norm_project(x, fn), which --mhc-fuse checks; for a token whose sum of
//   squares overflowed, multiplied by r twice: r^2 would underflow).
//
// Writes the record [dm | comb | pre | 2 dS] and the token's row of the
// block's dbase / dscale partial sums.
//
// The Sinkhorn walk is the long dependent chain (19 iterations, each an
// exact division per line and step): one thread per token keeps the n x n
// matrices in registers (emitTokenBackward); where n lanes of a warp can
// share a token (tokenLanes), lane l takes line l of every step instead --
// row l of a row step, column l of a column step -- with the matrices in
// shared memory between the steps (emitTokenBackwardLanes). Every line is
// summed in the same order either way, so both give the same bits; the
// lanes' chain is ~n times shorter. The rest (split_mixes, norm_project)
// is one thread's in both.
//
//===----------------------------------------------------------------------===//
#include "BackwardKernel.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

namespace {
/// n x n values of one matrix, row-major.
using Matrix = SmallVector<Value>;
} // namespace


/// The token's mixes and a = mix * scale + base (split_mixes' argument).
RowsKernelBuilder::TokenMixes RowsKernelBuilder::loadMixes(Value token) {
  int64_t n = p.n, M = p.M();
  Value mixArg = arg(p.mix), baseArg = arg(p.base), scaleArg = arg(p.scale);
  TokenMixes mx;
  for (int64_t g = 0; g < 3; ++g)
    mx.scale[g] = ld(scaleArg, ci(g));
  for (int64_t m = 0; m < M; ++m) {
    mx.mix.push_back(ld(mixArg, add(mul(token, ci(M)), ci(m))));
    int64_t g = m < n ? 0 : m < 2 * n ? 1 : 2;
    mx.a.push_back(fadd(fmul(mx.mix[m], mx.scale[g]), ld(baseArg, ci(m))));
  }
  return mx;
}

/// dcomb's entry e of the token (from the row sums or from memory).
Value RowsKernelBuilder::dcombAt(Value t, Value token, Value e) {
  if (p.dcombIn)
    return ld(arg(p.dcombIn), add(mul(token, ci(p.n * p.n)), e));
  return ld(sumsS, add(mul(t, ci(p.rowSums())), add(ci(p.rowSumDcomb()), e)));
}

void RowsKernelBuilder::emitTokenBackward(Value t, Value token) {
  int64_t n = p.n, R = p.iterations;
  Value eps = cf(p.sinkEps);
  Value rec = mul(token, ci(p.recordWidth()));
  TokenMixes mx = loadMixes(token);
  Matrix logits(mx.a.begin() + 2 * n, mx.a.end());
  Matrix dcomb;
  for (int64_t e = 0; e < n * n; ++e)
    dcomb.push_back(dcombAt(t, token, ci(e)));

  // --- Sinkhorn forward, keeping the divisors ---------------------------
  // Step s's divisors are denominators[s * n ..]: step 0 is the first column
  // normalisation, step 2k - 1 / 2k the row / column one of iteration k.
  auto divisor = [&](Value step, int64_t l) {
    return add(mul(step, ci(n)), ci(l));
  };
  // Normalises `q` along rows (over j) or columns (over i) and records the
  // divisors of step `step`.
  auto normalize = [&](Matrix &q, bool rows, Value step) {
    for (int64_t l = 0; l < n; ++l) {
      auto at = [&](int64_t k) { return rows ? l * n + k : k * n + l; };
      Value sum = q[at(0)];
      for (int64_t k = 1; k < n; ++k)
        sum = fadd(sum, q[at(k)]);
      Value d = fadd(sum, eps);
      st(d, denominators, divisor(step, l));
      Value r = fdiv(cf(1.0), d);
      for (int64_t k = 0; k < n; ++k)
        q[at(k)] = fmul(q[at(k)], r);
    }
  };
  Matrix P = softmaxRows(logits, n);
  for (Value &v : P)
    v = fadd(v, eps);
  normalize(P, /*rows=*/false, ci(0));
  P = emitFor(ci(1), ci(R), ci(1), P,
              [&](Value it, ValueRange carried) -> SmallVector<Value> {
                Matrix q(carried.begin(), carried.end());
                Value twice = mul(it, ci(2));
                normalize(q, /*rows=*/true, add(twice, ci(-1)));
                normalize(q, /*rows=*/false, twice);
                return q;
              });
  for (int64_t e = 0; e < n * n; ++e)
    st(P[e], record, add(rec, ci(p.recComb() + e)));

  // --- Sinkhorn backward -----------------------------------------------
  // Undoes step `step` on (Y, g): g = (g - sum_axis(g Y)) / d, Y = Y d.
  auto undo = [&](Matrix &Y, Matrix &g, bool rows, Value step) {
    for (int64_t l = 0; l < n; ++l) {
      auto at = [&](int64_t k) { return rows ? l * n + k : k * n + l; };
      Value gy = fmul(g[at(0)], Y[at(0)]);
      for (int64_t k = 1; k < n; ++k)
        gy = fma(g[at(k)], Y[at(k)], gy);
      Value d = ld(denominators, divisor(step, l));
      Value r = fdiv(cf(1.0), d);
      for (int64_t k = 0; k < n; ++k) {
        g[at(k)] = fmul(fsub(g[at(k)], gy), r);
        Y[at(k)] = fmul(Y[at(k)], d);
      }
    }
  };
  SmallVector<Value> carried(P);
  carried.append(dcomb);
  carried = emitFor(
      ci(0), ci(R - 1), ci(1), carried,
      [&](Value k, ValueRange in) -> SmallVector<Value> {
        Matrix Y(in.begin(), in.begin() + n * n);
        Matrix g(in.begin() + n * n, in.end());
        // Iteration R - 1 - k: its column step was last, so it goes first.
        Value twice = mul(arith::SubIOp::create(b, loc, ci(R - 1), k), ci(2));
        undo(Y, g, /*rows=*/false, twice);
        undo(Y, g, /*rows=*/true, add(twice, ci(-1)));
        SmallVector<Value> out(Y);
        out.append(g);
        return out;
      });
  Matrix Y(carried.begin(), carried.begin() + n * n);
  Matrix g(carried.begin() + n * n, carried.end());
  undo(Y, g, /*rows=*/false, ci(0));
  // Softmax: the "+ eps" passes g through; P0 recomputed exactly.
  Matrix P0 = softmaxRows(logits, n);
  Matrix dL(n * n);
  for (int64_t i = 0; i < n; ++i) {
    Value gp = fmul(g[i * n], P0[i * n]);
    for (int64_t j = 1; j < n; ++j)
      gp = fma(g[i * n + j], P0[i * n + j], gp);
    for (int64_t j = 0; j < n; ++j)
      dL[i * n + j] = fmul(P0[i * n + j], fsub(g[i * n + j], gp));
  }
  emitTokenTail(t, token, mx, dL);
}

void RowsKernelBuilder::emitTokenBackwardLanes(Value t, Value token,
                                               Value line, Value mask) {
  int64_t n = p.n, R = p.iterations;
  Value eps = cf(p.sinkEps);
  Value rec = mul(token, ci(p.recordWidth()));
  // This token's n x n matrices in shared memory, Y (the iterate) and g,
  // swizzled so that each access of a step hits 32 banks: a warp's 32 / n
  // tokens share a region of n x 32 floats per matrix, entry (i, j) of the
  // warp's token w at 32 i + n ((w + i) mod (32 / n)) + (i + j) mod n. In a
  // row step (lane l takes i = l) and in a column step (j = l) the warp's 32
  // (w, l) then fall in 32 different banks. (Token-major, 2 n^2 floats a
  // token, all of a warp's tokens fell in the same n banks: at n = 4 every
  // access was an 8-way bank conflict, ~0.05 ms a backward op at T = 16384,
  // bench/results/session31.log.)
  int64_t perWarp = 32 / n;
  Value w = rem(t, perWarp);
  Value region = mul(div(t, perWarp), ci(2 * n * 32));
  auto at = [&](Value i, Value j) {
    Value bank = add(mul(rem(add(w, i), perWarp), ci(n)), rem(add(i, j), n));
    return add(region, add(mul(i, ci(32)), bank));
  };
  auto yAt = [&](Value i, int64_t j) { return at(i, ci(j)); };
  auto yAtC = [&](int64_t i, Value j) { return at(ci(i), j); };
  auto gOf = [&](Value a) { return add(a, ci(n * 32)); };
  // The places of line `line` of a row (over j) or column (over i) step.
  auto places = [&](bool rows) {
    SmallVector<Value> at;
    for (int64_t k = 0; k < n; ++k)
      at.push_back(rows ? yAt(line, k) : yAtC(k, line));
    return at;
  };
  auto sync = [&]() { NVVM::SyncWarpOp::create(b, loc, mask); };

  // Row `line` of the logits; its softmax + eps is row `line` of P.
  Value mixArg = arg(p.mix), baseArg = arg(p.base);
  Value scale2 = ld(arg(p.scale), ci(2));
  Matrix logits;
  for (int64_t j = 0; j < n; ++j) {
    Value m = add(ci(2 * n), add(mul(line, ci(n)), ci(j)));
    logits.push_back(fadd(fmul(ld(mixArg, add(mul(token, ci(p.M())), m)),
                               scale2),
                          ld(baseArg, m)));
  }
  Matrix row = softmaxRows(logits, n, eps);
  for (auto [v, at] : llvm::zip(row, places(/*rows=*/true)))
    st(v, lineS, at);
  sync();

  // --- Sinkhorn forward: this lane's line of each step, its divisor kept
  // (denominators[step]) ----------------------------------------------------
  auto normalize = [&](bool rows, Value step) {
    SmallVector<Value> at = places(rows);
    Value sum = ld(lineS, at[0]);
    SmallVector<Value> q{sum};
    for (int64_t k = 1; k < n; ++k) {
      q.push_back(ld(lineS, at[k]));
      sum = fadd(sum, q[k]);
    }
    Value d = fadd(sum, eps);
    st(d, denominators, step);
    Value r = fdiv(cf(1.0), d);
    for (int64_t k = 0; k < n; ++k)
      st(fmul(q[k], r), lineS, at[k]);
    sync();
  };
  normalize(/*rows=*/false, ci(0));
  emitFor(ci(1), ci(R), ci(1), {}, [&](Value it, ValueRange) {
    Value twice = mul(it, ci(2));
    normalize(/*rows=*/true, add(twice, ci(-1)));
    normalize(/*rows=*/false, twice);
    return SmallVector<Value>{};
  });
  // comb (row `line` of P) to the record; g starts as dcomb.
  for (int64_t j = 0; j < n; ++j) {
    Value at = yAt(line, j), e = add(mul(line, ci(n)), ci(j));
    st(ld(lineS, at), record, add(rec, add(ci(p.recComb()), e)));
    st(dcombAt(t, token, e), lineS, gOf(at));
  }
  sync();

  // --- Sinkhorn backward -----------------------------------------------
  auto undo = [&](bool rows, Value step) {
    SmallVector<Value> at = places(rows), Y, g;
    for (int64_t k = 0; k < n; ++k) {
      Y.push_back(ld(lineS, at[k]));
      g.push_back(ld(lineS, gOf(at[k])));
    }
    Value gy = fmul(g[0], Y[0]);
    for (int64_t k = 1; k < n; ++k)
      gy = fma(g[k], Y[k], gy);
    Value d = ld(denominators, step);
    Value r = fdiv(cf(1.0), d);
    for (int64_t k = 0; k < n; ++k) {
      st(fmul(fsub(g[k], gy), r), lineS, gOf(at[k]));
      st(fmul(Y[k], d), lineS, at[k]);
    }
    sync();
  };
  emitFor(ci(0), ci(R - 1), ci(1), {}, [&](Value k, ValueRange) {
    Value twice = mul(arith::SubIOp::create(b, loc, ci(R - 1), k), ci(2));
    undo(/*rows=*/false, twice);
    undo(/*rows=*/true, add(twice, ci(-1)));
    return SmallVector<Value>{};
  });
  undo(/*rows=*/false, ci(0));
  // Softmax of row `line` (P0 recomputed exactly); its dL over g's row.
  Matrix P0 = softmaxRows(logits, n);
  SmallVector<Value> gAt, g;
  for (int64_t j = 0; j < n; ++j) {
    gAt.push_back(gOf(yAt(line, j)));
    g.push_back(ld(lineS, gAt[j]));
  }
  Value gp = fmul(g[0], P0[0]);
  for (int64_t j = 1; j < n; ++j)
    gp = fma(g[j], P0[j], gp);
  for (int64_t j = 0; j < n; ++j)
    st(fmul(P0[j], fsub(g[j], gp)), lineS, gAt[j]);
  sync();

  // The rest is one thread's: line 0's.
  emitIf(eq(line, ci(0)), [&]() {
    Matrix dL;
    for (int64_t e = 0; e < n * n; ++e)
      dL.push_back(ld(lineS, gOf(yAt(ci(e / n), e % n))));
    emitTokenTail(t, token, loadMixes(token), dL);
  });
}

void RowsKernelBuilder::emitTokenTail(Value t, Value token,
                                      const TokenMixes &mx, ArrayRef<Value> dL) {
  int64_t n = p.n, M = p.M();
  Value rec = mul(token, ci(p.recordWidth()));
  SmallVector<Value> sPre, sPost;
  for (int64_t i = 0; i < n; ++i) {
    sPre.push_back(sigmoid(mx.a[i]));
    sPost.push_back(sigmoid(mx.a[n + i]));
    st(fadd(sPre[i], cf(p.preEps)), record, add(rec, ci(p.recPre() + i)));
  }
  // The row sums, from this kernel or (pre_backward) from memory.
  Value sums = mul(t, ci(p.rowSums()));
  auto rowSum = [&](int64_t q) { return ld(sumsS, add(sums, ci(q))); };
  SmallVector<Value> dpost, dpre;
  for (int64_t j = 0; j < n; ++j)
    dpost.push_back(p.dpostIn ? ld(arg(p.dpostIn), add(mul(token, ci(n)),
                                                       ci(j)))
                              : rowSum(p.rowSumDpost() + j));
  for (int64_t i = 0; i < n; ++i)
    dpre.push_back(rowSum(p.rowSumDpre() + i));

  // --- split_mixes backward, norm_project's per-token part ---------------
  SmallVector<Value> da;
  for (int64_t i = 0; i < n; ++i) // sigmoid' = s (1 - s)
    da.push_back(
        fmul(dpre[i], fmul(sPre[i], fsub(cf(1.0), sPre[i]))));
  for (int64_t j = 0; j < n; ++j)
    da.push_back(fmul(fmul(dpost[j], cf(p.postMult)),
                      fmul(sPost[j], fsub(cf(1.0), sPost[j]))));
  da.append(dL.begin(), dL.end());
  // r as the forward computes it, overflow-free (normFactor: where the sum
  // of squares is +inf, this thread re-reads the token's row of x).
  Value sumSq = rowSum(p.rowSumSq());
  Value r = normFactor(sumSq, arg(p.x), [&] { return token; }, n * p.C,
                       p.normEps);
  Value mixDot = cf(0.0);
  SmallVector<Value> groupDot(3, cf(0.0));
  Value params = mul(t, ci(p.paramWidth()));
  for (int64_t m = 0; m < M; ++m) {
    int64_t grp = m < n ? 0 : m < 2 * n ? 1 : 2;
    Value dmix = fmul(da[m], mx.scale[grp]);
    mixDot = fma(dmix, mx.mix[m], mixDot);
    groupDot[grp] = fma(da[m], mx.mix[m], groupDot[grp]);
    st(fmul(dmix, r), record, add(rec, ci(p.recDm() + m)));
    st(da[m], paramS, add(params, ci(m)));
  }
  for (int64_t grp = 0; grp < 3; ++grp)
    st(groupDot[grp], paramS, add(params, ci(M + grp)));
  // 2 dS = -(sum_m dmix_m m_m) r^3 / K with m = mix / r. Where the sum of
  // squares overflowed, r is ~1e-30 or less and r * r underflows to 0 in
  // f32, while 2 dS (mixDot grows like 1 / r) and its share 2 dS x of dx
  // do not: there mixDot is multiplied by r twice (found by check_backward's
  // overflow case at n = 3, f32: the token's dx was ~5% off).
  int64_t K = n * p.C;
  Value mixDotR2 = select(sumOfSquaresOverflowed(sumSq),
                          fmul(fmul(mixDot, r), r), fmul(mixDot, fmul(r, r)));
  Value dS2 =
      fdiv(arith::NegFOp::create(b, loc, mixDotR2), cf(double(K)));
  st(dS2, record, add(rec, ci(p.recDS())));
  if (p.preNorm()) { // the pre-norm's r and k, for the cols kernel's du
    st(rowSum(p.rowSumR()), record, add(rec, ci(p.recR())));
    st(rowSum(p.rowSumK()), record, add(rec, ci(p.recK())));
  }
}
