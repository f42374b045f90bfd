//===- BackwardCols.cpp - the cols kernel of the backward -----------------===//
//
// Block (column chunk b, token split s) owns columns [b*CC, b*CC + CC) of
// all n streams (KB = n*CC "k-columns", k = i*CC + c) and walks the token
// tiles of its split. Its slice of fn [M x KB] stays in shared memory, split
// once at the start into bf16 head and remainder words (the B fragments
// below, ready to load). Per tile of TT tokens the records, x, dout and du
// of the tile go to shared memory, dm transposed and split into head and
// remainder as it is stored (once per element, not per warp); the next
// tile's loads are already in flight (into registers) while each warp takes
// KB/W k-columns of this one in n8 tiles:
//
//   dx[t][k] = (dm @ fn)[t][k]                     tensor cores, f32 accum.
//            + sum_j comb[t][i][j] dout[t][j][c]   (post_res_grad's dx)
//            + pre[t][i] du[t][c]                  (pre_apply_grad's dx)
//            + 2 dS[t] x[t][i][c]                  (norm_project_grad's, with
//                                                   dm @ fn)
//   dfn[m][k] += sum_t dm[t][m] x[t][k]            tensor cores, registers
//
// f32 operands enter the bf16 tensor cores as head + remainder (hi/lo):
// dm @ fn = dm_hi fn_lo + dm_lo fn_hi + dm_hi fn_hi, ~16 bits of each. The
// dx tile goes back through shared memory to 16-byte stores. dfn's partial
// over the split's tokens is written once at the end (the params kernel
// sums the splits in a fixed order). Rows padded in shared memory (pitches
// in BackwardKernel.h) keep a warp's fragment loads on distinct banks.
//
// mma.sync m16n8k16 fragments (g = lane / 4, q = lane % 4): A a0..a3 = rows
// g, g+8, g, g+8 x k 2q..2q+1, 2q..2q+1, 2q+8.., 2q+8..; B b0, b1 = k 2q..2q+1,
// 2q+8..2q+9 x column g; C c0..c3 = rows g, g, g+8, g+8 x columns 2q, 2q+1.
//
//===----------------------------------------------------------------------===//
#include "BackwardKernel.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

/// This thread's share of a tile's records, x, dout and du (zeros past T
/// and C), as groups: where each comes from and where it goes in shared
/// memory. A record's dm goes to dm^T split into bf16 head and remainder,
/// once per element, not in every warp that builds a fragment of it.
SmallVector<ColsKernelBuilder::TileLoad> ColsKernelBuilder::tileLoads() {
  int64_t n = p.n, M = p.M(), C = p.C, CC = s.chunkColumns;
  int64_t TT = s.tileTokens, P = p.recordWidth(), vec = acts.vec,
          NV = CC / vec;
  SmallVector<TileLoad> items;
  // `total` elements (or vectors), `threads` at a time: item -> TileLoad by
  // `place`.
  auto unrolled = [&](int64_t total, auto place) {
    for (int64_t first = 0; first < total; first += s.threads) {
      Value item = add(tid, ci(first));
      Value inRange = total - first >= s.threads ? Value() : ult(item, total);
      if (inRange) // keep the indices in bounds
        item = select(inRange, item, ci(0));
      items.push_back(place(item, inRange));
    }
  };
  // The records of the tile's tokens (f32).
  unrolled(TT * P, [&](Value e, Value inRange) {
    Value t = div(e, P), col = rem(e, P);
    auto load = [this, t, col, TT, P](Value tile, Value live) {
      Value token = add(mul(tile, ci(TT)), t);
      Value ok = band(live, ult(token, T));
      return f32OrZero(ok, [&]() { return ld(record, add(mul(token, ci(P)), col)); });
    };
    auto store = [this, t, col, M](Value v) {
      emitIf(ult(col, M), [&]() {
        auto [hi, lo] = headAndRemainder(v);
        Value dmAt = add(mul(col, ci(dmPitch())), t);
        st(hi, dmHiS, dmAt);
        st(lo, dmLoS, dmAt);
      });
      emitIf(ult(ci(M - 1), col), [&]() { // col >= M
        st(v, recS, add(mul(t, ci(recPitch(p))), sub(col, ci(M))));
      });
    };
    return TileLoad{inRange, load, store};
  });
  // Rows of NV vectors: `rowsPerToken` rows per token from `src` into `dst`
  // at row pitch `pitch` (a token's rows side by side).
  auto rows = [&](Value src, Value dst, int64_t rowsPerToken, int64_t pitch) {
    unrolled(TT * rowsPerToken * NV, [&](Value item, Value inRange) {
      Value t = div(item, rowsPerToken * NV);
      Value rest = rem(item, rowsPerToken * NV);
      Value r = div(rest, NV), c = mul(rem(rest, NV), ci(vec));
      auto load = [this, t, r, c, inRange, src, rowsPerToken, TT,
                   C](Value tile, Value live) {
        Value token = add(mul(tile, ci(TT)), t);
        Value ok = band(live, ult(token, T));
        if (inRange)
          ok = band(ok, inRange);
        Value rowStart = mul(add(mul(token, ci(rowsPerToken)), r), ci(C));
        return loadAct(src, rowStart, add(col0, c), ok, /*raw=*/true);
      };
      Value at = add(mul(t, ci(pitch)), add(mul(r, ci(CC)), c));
      auto store = [this, dst, at](Value v) {
        if (isa<VectorType>(v.getType()))
          vector::StoreOp::create(b, loc, v, dst, ValueRange{at}, false,
                                  llvm::MaybeAlign(16));
        else
          st(v, dst, at);
      };
      return TileLoad{inRange, load, store};
    });
  };
  rows(arg(p.x), xS, n, tilePitch());
  rows(arg(p.dout), doutS, n, tilePitch());
  rows(arg(p.du), duS, 1, duPitch());
  return items;
}

SmallVector<Value> ColsKernelBuilder::issueLoads(Value tile, Value live) {
  SmallVector<Value> loaded;
  for (TileLoad &item : tileLoads())
    loaded.push_back(item.load(tile, live));
  return loaded;
}

void ColsKernelBuilder::storeLoads(ValueRange loaded) {
  SmallVector<TileLoad> items = tileLoads();
  assert(items.size() == loaded.size() && "one loaded value per group");
  for (size_t i = 0; i < items.size(); ++i) {
    TileLoad &item = items[i];
    Value v = loaded[i];
    if (item.inRange)
      emitIf(item.inRange, [&]() { item.store(v); });
    else
      item.store(v);
  }
}

SmallVector<Value> ColsKernelBuilder::emitTile(SmallVector<Value> dfnAcc) {
  int64_t n = p.n, M = p.M(), CC = s.chunkColumns, TT = s.tileTokens;
  int64_t KB = n * CC, W = s.threads / 32;
  int64_t KW = KB / W, NTW = KW / 8, MT = TT / 16, KS = (M + 15) / 16;
  int64_t KT = TT / 16, MTM = (M + 15) / 16;
  int64_t XP = tilePitch(), UP = duPitch(), FP = fnPitch(), DP = dmPitch();
  int64_t FR = fnRows(p);
  Value g = div(lane, 4), q = rem(lane, 4);
  // The record's comb, pre and 2 dS (record column col >= M).
  auto rec = [&](Value t, Value col) {
    return ld(recS, add(mul(t, ci(recPitch(p))), sub(col, ci(M))));
  };
  auto actAt = [&](Value tileBuf, Value at) { return toF32(ld(tileBuf, at)); };
  // Two neighbouring activations of a tile (even index) as f32.
  auto actPair = [&](Value tileBuf, Value at) {
    Value v = vector::LoadOp::create(
        b, loc, VectorType::get({2}, acts.act), tileBuf, ValueRange{at}, false,
        llvm::MaybeAlign(2 * acts.act.getIntOrFloatBitWidth() / 8));
    return toF32(v);
  };
  // dm^T's (bf16) words: two tokens of one mix (one load), and two mixes of
  // one token (two loads); dm^T is 0 past M.
  auto bf16x2 = VectorType::get({2}, b.getBF16Type());
  auto tokenPair = [&](Value dmT, Value m, Value t) {
    return asI32(vector::LoadOp::create(b, loc, bf16x2, dmT,
                                        ValueRange{add(mul(m, ci(DP)), t)},
                                        false, llvm::MaybeAlign(4)));
  };
  auto mixPair = [&](Value dmT, Value t, Value m) {
    Value first = ld(dmT, add(mul(m, ci(DP)), t));
    Value second = ld(dmT, add(mul(add(m, ci(1)), ci(DP)), t));
    return asI32(vector::FromElementsOp::create(b, loc, bf16x2,
                                                ValueRange{first, second}));
  };

  // A fragments of dm (rows: tokens, k: mixes) for dm @ fn, hi and lo.
  SmallVector<SmallVector<Value>> aFnHi, aFnLo; // [mt * KS + ks][4]
  for (int64_t mt = 0; mt < MT; ++mt)
    for (int64_t ks = 0; ks < KS; ++ks) {
      SmallVector<Value> hi, lo;
      for (int64_t r = 0; r < 4; ++r) {
        Value t = add(g, ci(16 * mt + 8 * (r % 2)));
        Value k = add(mul(q, ci(2)), ci(16 * ks + 8 * (r / 2)));
        hi.push_back(mixPair(dmHiS, t, k));
        lo.push_back(mixPair(dmLoS, t, k));
      }
      aFnHi.push_back(hi);
      aFnLo.push_back(lo);
    }
  // A fragments of dm^T (rows: mixes, k: tokens) for dfn.
  SmallVector<SmallVector<Value>> aDfnHi, aDfnLo; // [mtm * KT + kt][4]
  for (int64_t mtm = 0; mtm < MTM; ++mtm)
    for (int64_t kt = 0; kt < KT; ++kt) {
      SmallVector<Value> hi, lo;
      for (int64_t r = 0; r < 4; ++r) {
        Value m = add(g, ci(16 * mtm + 8 * (r % 2)));
        Value t = add(mul(q, ci(2)), ci(16 * kt + 8 * (r / 2)));
        hi.push_back(tokenPair(dmHiS, m, t));
        lo.push_back(tokenPair(dmLoS, m, t));
      }
      aDfnHi.push_back(hi);
      aDfnLo.push_back(lo);
    }

  SmallVector<Value> dxVals, dxAt; // dx pairs (f32) and their place
  for (int64_t nt = 0; nt < NTW; ++nt) {
    Value kbase = add(mul(warp, ci(KW)), ci(nt * 8));
    Value kB = add(kbase, g); // the k-column of this thread's B fragments
    // fn's B fragments (k: mixes, column kB), hi and lo, per k16 step: the
    // words of mixes 2q.. and 2q + 8.. (0 past M).
    SmallVector<std::array<Value, 4>> bFn; // hi0, hi1, lo0, lo1
    for (int64_t ks = 0; ks < KS; ++ks) {
      auto word = [&](Value fnS, Value mp) {
        Value ok = ult(mp, FR);
        Value v = ld(fnS, add(mul(select(ok, mp, ci(0)), ci(FP)), kB));
        return select(ok, v, ci32(0));
      };
      Value mp0 = add(q, ci(8 * ks)), mp8 = add(mp0, ci(4));
      bFn.push_back({word(fnHiS, mp0), word(fnHiS, mp8), word(fnLoS, mp0),
                     word(fnLoS, mp8)});
    }
    // This thread's two columns (2q, 2q + 1) of the n8 tile: stream i,
    // column c, the same for both rows.
    Value kcol = add(kbase, mul(q, ci(2)));
    Value i = div(kcol, CC), c = rem(kcol, CC);
    for (int64_t mt = 0; mt < MT; ++mt) {
      SmallVector<Value> acc(4, cf(0.0));
      // Small terms first: the tensor cores truncate when accumulating.
      for (int64_t ks = 0; ks < KS; ++ks) {
        auto &bf = bFn[ks];
        mmaBf16(acc, aFnHi[mt * KS + ks], bf[2], bf[3]);
        mmaBf16(acc, aFnLo[mt * KS + ks], bf[0], bf[1]);
        mmaBf16(acc, aFnHi[mt * KS + ks], bf[0], bf[1]);
      }
      for (int64_t half = 0; half < 2; ++half) { // rows g, g + 8
        Value t = add(g, ci(16 * mt + 8 * half));
        Value rowT = mul(t, ci(XP));
        // The record values of (t, i), once for both columns.
        Value combRow = add(ci(p.recComb()), mul(i, ci(n)));
        Value v = f32Pair(acc[2 * half], acc[2 * half + 1]);
        for (int64_t j = 0; j < n; ++j)
          v = fma(splat(rec(t, add(combRow, ci(j))), vecF32Of(2)),
                  actPair(doutS, add(rowT, add(ci(j * CC), c))), v);
        v = fma(splat(rec(t, add(ci(p.recPre()), i)), vecF32Of(2)),
                actPair(duS, add(mul(t, ci(UP)), c)), v);
        v = fma(splat(rec(t, ci(p.recDS())), vecF32Of(2)),
                actPair(xS, add(rowT, kcol)), v);
        dxVals.push_back(v);
        dxAt.push_back(add(rowT, kcol));
      }
    }
    // dfn += dm^T x over the tile's tokens.
    for (int64_t kt = 0; kt < KT; ++kt) {
      auto xPair = [&](Value t) {
        return f32Pair(actAt(xS, add(mul(t, ci(XP)), kB)),
                       actAt(xS, add(mul(add(t, ci(1)), ci(XP)), kB)));
      };
      Value t0 = add(mul(q, ci(2)), ci(16 * kt));
      auto [x0h, x0l] = splitBf16(xPair(t0));
      auto [x1h, x1l] = splitBf16(xPair(add(t0, ci(8))));
      bool exactX = p.act.isBF16(); // bf16 x is its own head
      for (int64_t mtm = 0; mtm < MTM; ++mtm) {
        MutableArrayRef<Value> acc(dfnAcc.data() + (mtm * NTW + nt) * 4, 4);
        if (!exactX)
          mmaBf16(acc, aDfnHi[mtm * KT + kt], x0l, x1l);
        mmaBf16(acc, aDfnLo[mtm * KT + kt], x0h, x1h);
        mmaBf16(acc, aDfnHi[mtm * KT + kt], x0h, x1h);
      }
    }
  }

  // dx: through the dout tile (every read of it is done after the barrier)
  // to 16-byte stores.
  barrier();
  auto pairType = VectorType::get({2}, acts.act);
  for (auto [v, at] : llvm::zip(dxVals, dxAt))
    vector::StoreOp::create(
        b, loc, toAct(v, pairType), doutS, ValueRange{at}, false,
        llvm::MaybeAlign(2 * acts.act.getIntOrFloatBitWidth() / 8));
  barrier();
  int64_t NV = CC / acts.vec, total = TT * n * NV;
  Value tok0 = mul(tileIndex, ci(TT));
  emitFor(tid, ci(total), ci(s.threads), {}, [&](Value item, ValueRange) {
    Value t = div(item, n * NV), rest = rem(item, n * NV);
    Value si = div(rest, NV), sc = mul(rem(rest, NV), ci(acts.vec));
    Value token = add(tok0, t);
    Value v = toF32(vector::LoadOp::create(
        b, loc, vecAct(), doutS,
        ValueRange{add(mul(t, ci(XP)), add(mul(si, ci(CC)), sc))}, false,
        llvm::MaybeAlign(16)));
    storeAct(v, arg(p.dxOut), mul(add(mul(token, ci(n)), si), ci(p.C)),
             add(col0, sc), ult(token, T));
    return SmallVector<Value>{};
  });
  return dfnAcc;
}

void ColsKernelBuilder::emitBody() {
  int64_t n = p.n, M = p.M(), C = p.C, CC = s.chunkColumns, KB = n * CC;
  int64_t TT = s.tileTokens, S = s.tokenSplits, NTW = KB / (s.threads / 32) / 8;
  int64_t MTM = (M + 15) / 16;
  // fn's slice as the words of the B fragments: word [mp][i*CC + c] holds
  // fn[2mp][i*C + col0 + c] and fn[2mp + 1][..], split into bf16 head and
  // remainder once here rather than per tile (0 past M and C).
  int64_t FR = fnRows(p);
  emitFor(tid, ci(FR * KB), ci(s.threads), {}, [&](Value e, ValueRange) {
    Value mp = div(e, KB), kc = rem(e, KB);
    Value i = div(kc, CC), col = add(col0, rem(kc, CC));
    auto fnAt = [&](Value m) {
      return f32OrZero(band(ult(m, M), ult(col, C)), [&]() {
        return ld(arg(p.fn), add(mul(m, ci(n * C)), add(mul(i, ci(C)), col)));
      });
    };
    Value m = mul(mp, ci(2));
    auto [hi, lo] = splitBf16(f32Pair(fnAt(m), fnAt(add(m, ci(1)))));
    Value at = add(mul(mp, ci(fnPitch())), kc);
    st(hi, fnHiS, at);
    st(lo, fnLoS, at);
    return SmallVector<Value>{};
  });
  // dm^T's rows past M stay 0 (the tiles write rows < M only).
  int64_t padRows = dmRows(p) - M;
  if (padRows > 0) {
    Value zero =
        arith::ConstantOp::create(b, loc, b.getZeroAttr(b.getBF16Type()));
    emitFor(tid, ci(padRows * dmPitch()), ci(s.threads), {},
            [&](Value e, ValueRange) {
              Value at = add(ci(M * dmPitch()), e);
              st(zero, dmHiS, at);
              st(zero, dmLoS, at);
              return SmallVector<Value>{};
            });
  }
  // This split's tiles: [split * per, min((split + 1) * per, tiles)).
  Value tiles = arith::CeilDivUIOp::create(b, loc, T, ci(TT));
  Value per = arith::CeilDivUIOp::create(b, loc, tiles, ci(S));
  Value first = arith::MinUIOp::create(b, loc, mul(split, per), tiles);
  Value last = arith::MinUIOp::create(b, loc, add(first, per), tiles);
  // Software pipeline: a tile's global loads are issued before the previous
  // tile's products and land in registers (carried by the loop) while the
  // tensor cores and FMAs work; shared memory holds one tile.
  SmallVector<Value> carried(MTM * NTW * 4, cf(0.0)); // dfn's accumulators
  int64_t accs = carried.size();
  llvm::append_range(carried, issueLoads(first, ult(first, last)));
  SmallVector<Value> done = emitFor(
      first, last, ci(1), carried,
      [&](Value tile, ValueRange carried) -> SmallVector<Value> {
        barrier(); // the previous tile's reads of shared memory are done
        storeLoads(carried.drop_front(accs));
        barrier();
        Value next = add(tile, ci(1));
        SmallVector<Value> loads = issueLoads(next, ult(next, last));
        tileIndex = tile;
        SmallVector<Value> out = emitTile(
            SmallVector<Value>(carried.begin(), carried.begin() + accs));
        llvm::append_range(out, loads);
        return out;
      });
  SmallVector<Value> dfnAcc(done.begin(), done.begin() + accs);
  // This split's partial dfn.
  Value g = div(lane, 4), q = rem(lane, 4);
  int64_t KW = KB / (s.threads / 32);
  for (int64_t mtm = 0; mtm < MTM; ++mtm)
    for (int64_t nt = 0; nt < NTW; ++nt)
      for (int64_t e = 0; e < 4; ++e) {
        Value m = add(g, ci(16 * mtm + 8 * (e / 2)));
        Value kcol = add(add(mul(warp, ci(KW)), ci(nt * 8)),
                         add(mul(q, ci(2)), ci(e % 2)));
        Value i = div(kcol, CC), col = add(col0, rem(kcol, CC));
        emitIf(band(ult(m, M), ult(col, C)), [&]() {
          Value at = add(mul(add(mul(split, ci(M)), m), ci(n * C)),
                         add(mul(i, ci(C)), col));
          st(dfnAcc[(mtm * NTW + nt) * 4 + e], dfnPartial, at);
        });
      }
}
