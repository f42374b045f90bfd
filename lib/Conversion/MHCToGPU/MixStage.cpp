//===- MixStage.cpp - pre_apply, rms_norm, expand, collapse ---------------===//
//
// Vectorised over the tile's [tokens x ceil(C / vec)] vector positions,
// kUnroll per thread and iteration: all loads of an iteration are issued
// before the first use, to keep enough bytes in flight. rms_norm needs each
// row's sum of squares before it writes: one warp a row instead.
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

/// `vec` elements of rms_norm's weight at column c as f32 (0 past C).
Value ForwardKernelBuilder::loadNormWeight(Value c, Value ok) {
  Value w = arg(p.rn.getWeight());
  if (cast<ShapedType>(p.rn.getWeight().getType()).getElementType() == acts.act)
    return loadAct(w, ci(0), c, ok);
  // An f32 weight with bf16/f16 activations: element loads (L1-resident).
  return loadElements(w, ci(0), c, ok);
}

/// Vectors of u a lane reads back at once in rms_norm's pass 2 (32
/// registers of bf16; 16 vectors took 160+ registers in the steady state's
/// kernel).
static constexpr int64_t kReadBackVectors = 8;
/// Vectors a lane loads at once in rms_norm's pass 1 (n loads each; 4 took
/// 3% off the steady state's kernel at C = 4096 against 2, at 123 registers
/// against 94: bench/results/session34.log, call 3).
static constexpr int64_t kNormUnroll = 4;

/// out = u * r * weight with r = rsqrt(mean(u^2) + eps) per token, u being
/// the group's pre_apply result or an input (docs/PreNorm.md). One warp a
/// token row, its lanes kNormUnroll 16-byte vectors at a time. Pass 1 makes u
/// (rounded as stored: what rms_norm reads), stores it (pre_apply's output
/// when u is used outside, else `out` itself) and sums its squares (plain
/// and scaled by 2^-96: the overflow-free factor of the CPU lowering); a
/// shuffle tree gives r; pass 2 reads back what the same lane wrote (from
/// L2), kReadBackVectors at a time with all loads before the stores (they
/// alias: each load would otherwise wait for the store before it), and
/// writes u * r * weight.
void ForwardKernelBuilder::emitRowNorm() {
  int64_t n = p.n, C = p.C, vec = acts.vec;
  Value out = outputArg(p.rn.getResult());
  Value x = p.pa ? arg(p.pa.getX()) : Value();
  Value u = p.pa ? outputArg(p.pa.getU()) : arg(p.rn.getU());
  Value rowOfU = u ? u : out; // where pass 2 reads u back
  int64_t lanesStep = 32 * vec * kNormUnroll;
  int64_t steps = (C + lanesStep - 1) / lanesStep;
  int64_t groupSteps = std::min(kReadBackVectors / kNormUnroll, steps);
  Value scale = cf(0x1p-96);
  float eps = p.rn.getEps().convertToFloat();
  // Column of vector k of the batch at c0: each vector 32 lanes wide (a warp
  // covers 32 * vec contiguous columns of a row). The loops start at the
  // lane's own column: a trip count LLVM does not know, so it does not
  // unroll them and hoist every batch's loads (hundreds of registers).
  Value laneColumn = mul(lane, ci(vec));
  auto columnOf = [&](Value c0, int64_t k) {
    return add(c0, ci(32 * vec * k));
  };
  emitFor(warp, ci(p.s.tileTokens), ci(p.warps()), {}, [&](Value t,
                                                          ValueRange) {
    Value token = add(tile0, t);
    Value ok = ult(token, T);
    emitIf(ok, [&]() {
      Value base = mul(token, ci(C));
      SmallVector<Value> pre;
      if (x)
        for (int64_t i = 0; i < n; ++i)
          pre.push_back(splat(ld(preS, add(mul(t, ci(n)), ci(i))), vecF32()));
      Value zero = cf(0.0);
      // Pass 1.
      SmallVector<Value> sums = emitFor(
          laneColumn, ci(steps * lanesStep), ci(lanesStep), {zero, zero},
          [&](Value step, ValueRange acc) -> SmallVector<Value> {
            SmallVector<SmallVector<Value>> loaded;
            for (int64_t k = 0; k < kNormUnroll; ++k) {
              Value c = columnOf(step, k);
              loaded.push_back(x ? loadStreams(x, token, c, ok)
                                 : SmallVector<Value>{
                                       loadAct(rowOfU, base, c, ok, true)});
            }
            Value ss = acc[0], scaled = acc[1];
            auto sum = [&](Value v) {
              return vector::ReductionOp::create(
                  b, loc, vector::CombiningKind::ADD, v);
            };
            for (int64_t k = 0; k < kNormUnroll; ++k) {
              Value v;
              if (x) {
                for (int64_t i = 0; i < n; ++i) {
                  Value xi = toF32(loaded[k][i]);
                  v = i ? fma(pre[i], xi, v) : fmul(pre[i], xi);
                }
                storeAct(v, rowOfU, base, columnOf(step, k), ok);
                v = roundAct(v);
              } else {
                v = toF32(loaded[k][0]);
              }
              Value vs = fmul(v, splat(scale, vecF32()));
              ss = fadd(ss, sum(fmul(v, v)));
              scaled = fadd(scaled, sum(fmul(vs, vs)));
            }
            return {ss, scaled};
          });
      Value ss = warpSum(sums[0], 32), scaled = warpSum(sums[1], 32);
      Value r = splat(normFactorOfSums(ss, scaled, C, eps), vecF32());
      // Pass 2: groups of groupSteps batches, every read before any write.
      emitFor(laneColumn, ci(steps * lanesStep), ci(groupSteps * lanesStep), {},
              [&](Value group, ValueRange) -> SmallVector<Value> {
                SmallVector<Value> cols, us;
                for (int64_t g = 0; g < groupSteps; ++g) {
                  Value step = add(group, ci(g * lanesStep));
                  for (int64_t k = 0; k < kNormUnroll; ++k) {
                    cols.push_back(columnOf(step, k));
                    us.push_back(loadAct(rowOfU, base, cols.back(), ok, true));
                  }
                }
                for (auto [c, v] : llvm::zip(cols, us))
                  storeAct(fmul(fmul(toF32(v), r), loadNormWeight(c, ok)), out,
                           base, c, ok);
                return {};
              });
    });
    return SmallVector<Value>{};
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
