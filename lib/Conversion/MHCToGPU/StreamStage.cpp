//===- StreamStage.cpp - the chunk loop of post_res / norm_project --------===//
//
// A chunk is `chunkColumns` columns of every row of the tile (~256
// contiguous bytes per row: the access pattern DRAM streams at full speed;
// 64-byte runs reach only ~54% of copy bandwidth,
// bench/results/post-proto-h200.md). Its R items (token, 16-byte vector) per
// thread are loaded kBatch at a time (all loads of a batch issued first);
// post_res's x_next is stored and the projection input goes, exact, into
// the bf16 shared tile; after a barrier the warps split the chunk's k16
// steps on the tensor cores (ProjectionStage.cpp).
//
//===----------------------------------------------------------------------===//
#include "ForwardKernel.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

static constexpr int64_t kBatch = 2;

void ForwardKernelBuilder::emitChunkLoop() {
  int64_t CC = p.s.chunkColumns, threads = p.s.threads;
  int64_t NVC = CC / acts.vec;
  int64_t items = p.s.tileTokens * NVC;
  int64_t R = (items + threads - 1) / threads;
  bool ragged = items % threads != 0; // some threads lack an item
  int64_t batch = R % kBatch == 0 ? kBatch : 1;
  bool np = static_cast<bool>(p.np);
  int64_t numAcc = np ? p.MT() * p.NT() * 4 : 0;
  int64_t numSs = np ? R : 0;

  SmallVector<Value> inits;
  for (int64_t a = 0; a < numAcc + numSs; ++a)
    inits.push_back(cf(0.0));
  int64_t numChunks = (p.C + CC - 1) / CC;
  SmallVector<Value> res = emitFor(
      ci(0), ci(numChunks), ci(1), inits,
      [&](Value chunk, ValueRange carried) -> SmallVector<Value> {
        SmallVector<Value> acc(carried.begin(), carried.begin() + numAcc);
        SmallVector<Value> ss(carried.begin() + numAcc, carried.end());
        Value c0 = mul(chunk, ci(CC));
        // Batches in a loop (not unrolled: one batch's values live at a
        // time); the sums of squares of item r are carried and updated in
        // the batch that owns r.
        ss = emitFor(
            ci(0), ci(R / batch), ci(1), ss,
            [&](Value bi, ValueRange ssIn) -> SmallVector<Value> {
              SmallVector<Value> items0, oks;
              SmallVector<SmallVector<Value>> loaded;
              for (int64_t u = 0; u < batch; ++u) {
                Value item =
                    add(tid, mul(add(mul(bi, ci(batch)), ci(u)), ci(threads)));
                items0.push_back(item);
                oks.push_back(ragged ? ult(item, items) : Value());
                loaded.push_back(loadItem(item, c0, oks.back()));
              }
              SmallVector<Value> got;
              for (int64_t u = 0; u < batch; ++u) {
                auto one = [&]() { return emitItem(items0[u], c0, loaded[u]); };
                got.push_back(ragged ? f32OrZero(oks[u], one) : one());
              }
              SmallVector<Value> out(ssIn.begin(), ssIn.end());
              for (int64_t r = 0; r < numSs; ++r) {
                Value mine = eq(bi, ci(r / batch));
                out[r] = select(mine, fadd(out[r], got[r % batch]), out[r]);
              }
              return out;
            });
        if (np) {
          barrier();
          // Reading fn itself: versioned on its alignment outside the
          // products, so that all fn loads of a chunk stay straight-line
          // code issued together.
          SmallVector<Type> types(acc.size(), f32);
          acc = fnPrepared
                    ? emitMma(c0, acc, false)
                    : emitIfElse(
                          types, fnAligned,
                          [&]() { return emitMma(c0, acc, true); },
                          [&]() { return emitMma(c0, acc, false); });
          barrier();
        }
        SmallVector<Value> out(acc);
        out.append(ss.begin(), ss.end());
        return out;
      });
  if (!np)
    return;
  finishProjection(ArrayRef<Value>(res).take_front(numAcc),
                   ArrayRef<Value>(res).drop_front(numAcc), R, ragged);
}

/// Global loads of one chunk item (token t, `vec` columns): x[0..n) and, for
/// post_res, y. Out-of-range lanes read as 0.
SmallVector<Value> ForwardKernelBuilder::loadItem(Value item, Value c0,
                                                  Value itemOk) {
  int64_t n = p.n, C = p.C, NVC = p.s.chunkColumns / acts.vec;
  Value t = div(item, NVC), v = rem(item, NVC);
  Value token = add(tile0, t);
  Value ok = ult(token, T);
  if (itemOk)
    ok = band(ok, itemOk);
  Value c = add(c0, mul(v, ci(acts.vec)));
  SmallVector<Value> vals;
  Value x = p.pr ? p.pr.getX() : p.np.getX();
  for (int64_t i = 0; i < n; ++i)
    vals.push_back(loadAct(arg(x), mul(add(mul(token, ci(n)), ci(i)), ci(C)),
                           c, ok, /*raw=*/true));
  if (p.pr)
    vals.push_back(
        loadAct(arg(p.pr.getY()), mul(token, ci(C)), c, ok, /*raw=*/true));
  return vals;
}

/// One item of the chunk loop from its loaded values: post_res stores
/// x_next; the projection input goes to the shared tile. Returns the f32 sum
/// of squares of the projection input (0 without a projection).
Value ForwardKernelBuilder::emitItem(Value item, Value c0,
                                     ArrayRef<Value> loaded) {
  int64_t n = p.n, C = p.C, NVC = p.s.chunkColumns / acts.vec;
  Value t = div(item, NVC), v = rem(item, NVC);
  Value token = add(tile0, t);
  Value ok = ult(token, T);
  Value cl = mul(v, ci(acts.vec)); // column inside the chunk
  Value c = add(c0, cl);
  SmallVector<Value> xs, src;
  for (int64_t i = 0; i < n; ++i)
    xs.push_back(toF32(loaded[i]));
  if (p.pr) {
    Value y = toF32(loaded[n]);
    Value out = arg(p.pr.getResult());
    for (int64_t j = 0; j < n; ++j) {
      Value o = fmul(splat(ld(postS, add(mul(t, ci(n)), ci(j))), vecF32()), y);
      for (int64_t i = 0; i < n; ++i) {
        Value w = ld(combS, add(mul(t, ci(n * n)), ci(i * n + j)));
        o = fma(splat(w, vecF32()), xs[i], o);
      }
      if (out) // x_next may be needed only on chip
        storeAct(o, out, mul(add(mul(token, ci(n)), ci(j)), ci(C)), c, ok);
      src.push_back(roundAct(o));
    }
  } else {
    src = xs;
  }
  if (!p.np)
    return cf(0.0);
  // The tile holds bf16: exact for bf16 activations; f16/f32 values are
  // split into a bf16 head and the bf16 rounding of the remainder.
  auto bf16 = b.getBF16Type();
  auto vt = VectorType::get({acts.vec}, bf16);
  Value sq = arith::ConstantOp::create(b, loc, b.getZeroAttr(vecF32()));
  for (int64_t i = 0; i < n; ++i) {
    // Out-of-range columns/tokens are zeros: they add nothing.
    Value at = add(mul(t, ci(p.ldA())), add(ci(i * p.s.chunkColumns), cl));
    Value hi = arith::TruncFOp::create(b, loc, vt, src[i]);
    vector::StoreOp::create(b, loc, hi, aTile, ValueRange{at}, false,
                            llvm::MaybeAlign(2 * acts.vec));
    if (aTileLo) {
      Value rest = fsub(src[i], arith::ExtFOp::create(b, loc, vecF32(), hi));
      vector::StoreOp::create(b, loc,
                              arith::TruncFOp::create(b, loc, vt, rest),
                              aTileLo, ValueRange{at}, false,
                              llvm::MaybeAlign(2 * acts.vec));
    }
    sq = fma(src[i], src[i], sq);
  }
  return vector::ReductionOp::create(b, loc, vector::CombiningKind::ADD, sq);
}
