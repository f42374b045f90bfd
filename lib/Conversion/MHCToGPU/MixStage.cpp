//===- MixStage.cpp - pre_apply, expand, collapse -------------------------===//
//
// Vectorised over the tile's [tokens x ceil(C / vec)] vector positions,
// kUnroll per thread and iteration: all loads of an iteration are issued
// before the first use, to keep enough bytes in flight.
//
//===----------------------------------------------------------------------===//
#include "ForwardKernel.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

static constexpr int64_t kUnroll = 4;

template <typename L, typename S>
void ForwardKernelBuilder::forTileVectors(L load, S compute) {
  int64_t NV = (p.C + acts.vec - 1) / acts.vec;
  int64_t total = p.s.tileTokens * NV, threads = p.s.threads;
  emitFor(tid, ci(total), ci(threads * kUnroll), {}, [&](Value it, ValueRange) {
    SmallVector<Value> ts, tokens, cs, oks;
    SmallVector<SmallVector<Value>> loaded;
    for (int64_t u = 0; u < kUnroll; ++u) {
      Value itu = add(it, ci(u * threads));
      Value in = ult(itu, total);
      // Clamp so that shared-memory reads stay in bounds.
      Value t = select(in, div(itu, NV), ci(0));
      Value token = add(tile0, t);
      Value c = mul(rem(itu, NV), ci(acts.vec));
      Value ok = band(in, ult(token, T));
      ts.push_back(t);
      tokens.push_back(token);
      cs.push_back(c);
      oks.push_back(ok);
      loaded.push_back(load(token, c, ok));
    }
    for (int64_t u = 0; u < kUnroll; ++u)
      compute(ts[u], tokens[u], cs[u], oks[u], loaded[u]);
    return SmallVector<Value>{};
  });
}

SmallVector<Value> ForwardKernelBuilder::loadStreams(Value mem, Value token,
                                                     Value c, Value ok) {
  SmallVector<Value> xs;
  for (int64_t i = 0; i < p.n; ++i)
    xs.push_back(loadAct(mem, mul(add(mul(token, ci(p.n)), ci(i)), ci(p.C)),
                         c, ok, /*raw=*/true));
  return xs;
}

/// u = sum_i pre[i] x[i].
void ForwardKernelBuilder::emitPreApply() {
  int64_t n = p.n, C = p.C;
  Value x = arg(p.pa.getX()), u = arg(p.pa.getU());
  if (!u)
    return;
  forTileVectors(
      [&](Value token, Value c, Value ok) {
        return loadStreams(x, token, c, ok);
      },
      [&](Value t, Value token, Value c, Value ok, ArrayRef<Value> xs) {
        Value acc;
        for (int64_t i = 0; i < n; ++i) {
          Value w = splat(ld(preS, add(mul(t, ci(n)), ci(i))), vecF32());
          Value xi = toF32(xs[i]);
          acc = i ? fma(w, xi, acc) : fmul(w, xi);
        }
        storeAct(acc, u, mul(token, ci(C)), c, ok);
      });
}

void ForwardKernelBuilder::emitExpand() {
  int64_t n = p.n, C = p.C;
  Value h = arg(p.ex.getInput()), out = arg(p.ex.getResult());
  forTileVectors(
      [&](Value token, Value c, Value ok) {
        return SmallVector<Value>{
            loadAct(h, mul(token, ci(C)), c, ok, /*raw=*/true)};
      },
      [&](Value, Value token, Value c, Value ok, ArrayRef<Value> v) {
        for (int64_t i = 0; i < n; ++i)
          storeAct(toF32(v[0]), out,
                   mul(add(mul(token, ci(n)), ci(i)), ci(C)), c, ok);
      });
}

void ForwardKernelBuilder::emitCollapse() {
  int64_t n = p.n, C = p.C;
  Value x = arg(p.co.getInput()), out = arg(p.co.getResult());
  forTileVectors(
      [&](Value token, Value c, Value ok) {
        return loadStreams(x, token, c, ok);
      },
      [&](Value, Value token, Value c, Value ok, ArrayRef<Value> xs) {
        Value acc = toF32(xs[0]);
        for (int64_t i = 1; i < n; ++i)
          acc = fadd(acc, toF32(xs[i]));
        storeAct(acc, out, mul(token, ci(C)), c, ok);
      });
}
