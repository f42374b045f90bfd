//===- CoefficientStage.cpp - split_mixes + sinkhorn per token ------------===//
//
// One thread per token, all n x n values in registers, loops fully unrolled
// for the static n; the iterations-1 Sinkhorn (row, column) pairs are an
// scf.for carrying the n*n values. Exactly the spec's order of
// normalisations (`P / (s + eps)` computed as `P * (1 / (s + eps))`).
//
//===----------------------------------------------------------------------===//
#include "ForwardKernel.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

SmallVector<Value> ForwardKernelBuilder::sinkhorn(SmallVector<Value> P,
                                                  int64_t n, int64_t iters,
                                                  float epsv) {
  Value eps = cf(epsv);
  auto normRows = [&](SmallVector<Value> &q) {
    for (int64_t i = 0; i < n; ++i) {
      Value s = q[i * n];
      for (int64_t j = 1; j < n; ++j)
        s = fadd(s, q[i * n + j]);
      Value r = fdiv(cf(1.0), fadd(s, eps));
      for (int64_t j = 0; j < n; ++j)
        q[i * n + j] = fmul(q[i * n + j], r);
    }
  };
  auto normCols = [&](SmallVector<Value> &q) {
    for (int64_t j = 0; j < n; ++j) {
      Value s = q[j];
      for (int64_t i = 1; i < n; ++i)
        s = fadd(s, q[i * n + j]);
      Value r = fdiv(cf(1.0), fadd(s, eps));
      for (int64_t i = 0; i < n; ++i)
        q[i * n + j] = fmul(q[i * n + j], r);
    }
  };
  P = softmaxRows(P, n, eps);
  normCols(P);
  return emitFor(ci(1), ci(iters), ci(1), P,
                 [&](Value, ValueRange carried) -> SmallVector<Value> {
                   SmallVector<Value> q(carried.begin(), carried.end());
                   normRows(q);
                   normCols(q);
                   return q;
                 });
}

void ForwardKernelBuilder::emitPerToken() {
  int64_t n = p.n, M = numMixes(n);
  Value t = tid;
  Value token = add(tile0, t);
  emitIf(band(ult(t, p.s.tileTokens), ult(token, T)), [&]() {
    SmallVector<Value> logits;
    if (p.sp) {
      Value scale = arg(p.sp.getScale()), base = arg(p.sp.getBase());
      bool internal = p.np && p.sp.getMix() == p.np.getMix();
      Value s[3] = {ld(scale, ci(0)), ld(scale, ci(1)), ld(scale, ci(2))};
      float postMult = p.sp.getPostMult().convertToFloat();
      float preEps = p.sp.getPreEps().convertToFloat();
      Value preOut = outputArg(p.sp.getPre());
      Value postOut = outputArg(p.sp.getPost());
      Value logOut = outputArg(p.sp.getLogits());
      // Every load first: the stores below go to global outputs that may
      // alias mix and base, so a load after one cannot be hoisted above it
      // and the M loads would wait for memory one after another (0.3-0.5 us
      // of the few-token pre kernel; hidden at 16384 tokens,
      // bench/results/session32.log).
      SmallVector<Value> mixes, bases;
      for (int64_t m = 0; m < M; ++m) {
        mixes.push_back(
            internal ? ld(red, add(mul(t, ci(M)), ci(m)))
                     : ld(arg(p.sp.getMix()), add(mul(token, ci(M)), ci(m))));
        bases.push_back(ld(base, ci(m)));
      }
      for (int64_t m = 0; m < M; ++m) {
        int64_t g = m < n ? 0 : m < 2 * n ? 1 : 2;
        Value a = fadd(fmul(mixes[m], s[g]), bases[m]);
        if (g == 0) {
          Value v = fadd(sigmoid(a), cf(preEps));
          if (preOut)
            st(v, preOut, add(mul(token, ci(n)), ci(m)));
          if (preS)
            st(v, preS, add(mul(t, ci(n)), ci(m)));
        } else if (g == 1) {
          Value v = fmul(sigmoid(a), cf(postMult));
          if (postOut)
            st(v, postOut, add(mul(token, ci(n)), ci(m - n)));
        } else {
          logits.push_back(a);
          if (logOut)
            st(a, logOut, add(mul(token, ci(n * n)), ci(m - 2 * n)));
        }
      }
    }
    if (p.sk) {
      if (!(p.sp && p.sk.getLogits() == p.sp.getLogits())) {
        logits.clear();
        for (int64_t e = 0; e < n * n; ++e)
          logits.push_back(ld(arg(p.sk.getLogits()),
                              add(mul(token, ci(n * n)), ci(e))));
      }
      SmallVector<Value> comb = sinkhorn(logits, n, p.sk.getIterations(),
                                         p.sk.getEps().convertToFloat());
      if (Value combOut = outputArg(p.sk.getComb()))
        for (int64_t e = 0; e < n * n; ++e)
          st(comb[e], combOut, add(mul(token, ci(n * n)), ci(e)));
    }
  });
}
