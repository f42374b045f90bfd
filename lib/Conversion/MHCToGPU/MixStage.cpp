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
                                                     Value c, Value ok,
                                                     bool inRange) {
  SmallVector<Value> xs;
  for (int64_t i = 0; i < p.n; ++i) {
    Value row = mul(add(mul(token, ci(p.n)), ci(i)), ci(p.C));
    xs.push_back(inRange ? loadActInRange(mem, row, c, /*raw=*/true)
                         : loadAct(mem, row, c, ok, /*raw=*/true));
  }
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

/// Vectors a lane loads at once in rms_norm's pass 1 when u is read back
/// (n loads each; 4 took 3% off the steady state's kernel at C = 4096
/// against 2, at 123 registers against 94: bench/results/session34.log,
/// call 3), and how many it reads back at once in pass 2 (32 registers of
/// bf16, all loads before the stores).
static constexpr int64_t kNormUnroll = 4;
static constexpr int64_t kReadBackVectors = 8;
/// A lane's row of u stays in registers from pass 1 to pass 2 when it is at
/// most kMaxHeldVectors 16-byte vectors (64 registers: C <= 4096 in bf16);
/// pass 1 then loads kHeldUnroll vectors a step, or the largest divisor of
/// the lane's vectors below that.
static constexpr int64_t kMaxHeldVectors = 16;
static constexpr int64_t kHeldUnroll = 4;

/// out = u * r * weight with r = rsqrt(mean(u^2) + eps) per token, u being
/// the group's pre_apply result or an input (docs/PreNorm.md). One warp a
/// token row (emitNormRow). Rows of whole 16-byte vectors with every pointer
/// aligned keep u in registers where it fits (the unguarded accesses behind
/// one uniform branch: the guarded paths' phis would double the registers);
/// other rows store u and read it back.
void ForwardKernelBuilder::emitRowNorm() {
  int64_t C = p.C, vec = acts.vec;
  int64_t laneVectors = C % (32 * vec) == 0 ? C / (32 * vec) : 0;
  bool canHold = aligned && laneVectors > 0 && laneVectors <= kMaxHeldVectors;
  Value laneColumn = mul(lane, ci(vec));
  emitFor(warp, ci(p.s.tileTokens), ci(p.warps()), {}, [&](Value t,
                                                          ValueRange) {
    Value token = add(tile0, t);
    Value ok = ult(token, T);
    if (canHold)
      emitIfElse(
          band(aligned, ok), [&]() { emitNormRow(t, token, ok, laneColumn, true); },
          [&]() { emitIf(ok, [&]() { emitNormRow(t, token, ok, laneColumn, false); }); });
    else
      emitIf(ok, [&]() { emitNormRow(t, token, ok, laneColumn, false); });
    return SmallVector<Value>{};
  });
}

/// Row t of the tile. Pass 1 walks the row from the lane's own column,
/// `unroll` vectors a step: it makes u (rounded as stored: what rms_norm
/// reads), sums its squares (plain and scaled by 2^-96: the overflow-free
/// factor of the CPU lowering) and keeps u -- `held`: in registers, else in
/// memory (pre_apply's output when u is used outside, else `out` itself). A
/// shuffle tree gives r. Pass 2 writes u * r * weight, from the registers or
/// reading back what the same lane wrote (from L2). Both loops start at the
/// lane's own column: a trip count LLVM does not know, so it does not unroll
/// them and hoist every step's loads (hundreds of registers).
void ForwardKernelBuilder::emitNormRow(Value t, Value token, Value ok,
                                       Value laneColumn, bool held) {
  int64_t n = p.n, C = p.C, vec = acts.vec;
  Value out = outputArg(p.rn.getResult());
  Value x = p.pa ? arg(p.pa.getX()) : Value();
  Value u = p.pa ? outputArg(p.pa.getU()) : arg(p.rn.getU());
  Value rowOfU = u ? u : out; // where pass 2 reads u back
  Value weight = arg(p.rn.getWeight());
  bool actWeight =
      cast<ShapedType>(p.rn.getWeight().getType()).getElementType() == acts.act;
  int64_t unroll = kNormUnroll, rowVectors = 0;
  if (held) {
    rowVectors = C / (32 * vec);
    unroll = kHeldUnroll;
    while (rowVectors % unroll != 0)
      --unroll;
  }
  int64_t lanesStep = 32 * vec * unroll;
  int64_t steps = (C + lanesStep - 1) / lanesStep;
  Value base = mul(token, ci(C));
  // Vector k of the step at c0: each vector 32 lanes wide (a warp covers
  // 32 * vec contiguous columns of a row).
  auto columnOf = [&](Value c0, int64_t k) {
    return add(c0, ci(32 * vec * k));
  };
  // Held rows are in range (whole vectors, aligned): no guards.
  auto load = [&](Value mem, Value rowBase, Value c) {
    return held ? loadActInRange(mem, rowBase, c, /*raw=*/true)
                : loadAct(mem, rowBase, c, ok, /*raw=*/true);
  };
  auto store = [&](Value v, Value mem, Value c) {
    if (held)
      storeActInRange(v, mem, base, c);
    else
      storeAct(v, mem, base, c, ok);
  };
  SmallVector<Value> pre;
  if (x)
    for (int64_t i = 0; i < n; ++i)
      pre.push_back(splat(ld(preS, add(mul(t, ci(n)), ci(i))), vecF32()));
  // Pass 1. Its loop carries the two sums and, held, the lane's row, shifted
  // by `unroll` vectors a step: after the last step it is in column order.
  Value zero = cf(0.0);
  SmallVector<Value> inits{zero, zero};
  inits.append(rowVectors,
               arith::ConstantOp::create(b, loc, b.getZeroAttr(vecAct())));
  SmallVector<Value> carried = emitFor(
      laneColumn, ci(steps * lanesStep), ci(lanesStep), inits,
      [&](Value step, ValueRange acc) -> SmallVector<Value> {
        SmallVector<SmallVector<Value>> loaded(unroll);
        for (int64_t k = 0; k < unroll; ++k) {
          Value c = columnOf(step, k);
          loaded[k] = x ? loadStreams(x, token, c, ok, /*inRange=*/held)
                        : SmallVector<Value>{load(rowOfU, base, c)};
        }
        SmallVector<Value> next{acc[0], acc[1]};
        next.append(acc.begin() + std::min<int64_t>(2 + unroll, acc.size()),
                    acc.end());
        for (int64_t k = 0; k < unroll; ++k) {
          Value raw = loaded[k][0];
          if (x) {
            Value v;
            for (int64_t i = 0; i < n; ++i)
              v = i ? fma(pre[i], toF32(loaded[k][i]), v)
                    : fmul(pre[i], toF32(loaded[k][i]));
            if (u || !held)
              store(v, rowOfU, columnOf(step, k));
            raw = toAct(v, vecAct());
          }
          if (held)
            next.push_back(raw);
          Value v = toF32(raw), vs = fmul(v, splat(cf(0x1p-96), vecF32()));
          next[0] = fadd(next[0], vector::ReductionOp::create(
                                      b, loc, vector::CombiningKind::ADD,
                                      fmul(v, v)));
          next[1] = fadd(next[1], vector::ReductionOp::create(
                                      b, loc, vector::CombiningKind::ADD,
                                      fmul(vs, vs)));
        }
        return next;
      });
  Value ss = warpSum(carried[0], 32), scaled = warpSum(carried[1], 32);
  Value r = splat(
      normFactorOfSums(ss, scaled, C, p.rn.getEps().convertToFloat()),
      vecF32());
  auto write = [&](Value v, Value c) {
    Value w = held && actWeight ? loadActInRange(weight, ci(0), c)
                                : loadNormWeight(c, ok);
    store(fmul(fmul(toF32(v), r), w), out, c);
  };
  if (held) {
    // Pass 2 from the registers, in a loop too (unrolled, every step's
    // weight loads would be hoisted: 25 more registers at C = 4096). Each
    // step writes the first `unroll` carried vectors and rotates them to
    // the back.
    SmallVector<Value> row(carried.begin() + 2, carried.end());
    emitFor(laneColumn, ci(steps * lanesStep), ci(lanesStep), row,
            [&](Value step, ValueRange vs) -> SmallVector<Value> {
              for (int64_t k = 0; k < unroll; ++k)
                write(vs[k], columnOf(step, k));
              SmallVector<Value> rotated(vs.begin() + unroll, vs.end());
              rotated.append(vs.begin(), vs.begin() + unroll);
              return rotated;
            });
    return;
  }
  // Pass 2 reading back: kReadBackVectors at a time, all loads before the
  // stores (they alias: each load would otherwise wait for the store before
  // it).
  int64_t groupSteps = std::min(kReadBackVectors / unroll, steps);
  emitFor(laneColumn, ci(steps * lanesStep), ci(groupSteps * lanesStep), {},
          [&](Value group, ValueRange) -> SmallVector<Value> {
            SmallVector<Value> cols, us;
            for (int64_t g = 0; g < groupSteps; ++g)
              for (int64_t k = 0; k < unroll; ++k) {
                cols.push_back(columnOf(add(group, ci(g * lanesStep)), k));
                us.push_back(load(rowOfU, base, cols.back()));
              }
            for (auto [c, v] : llvm::zip(cols, us))
              write(v, c);
            return {};
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
