//===- BackwardCols.cpp - the cols kernel of the backward -----------------===//
//
// Block (column chunk b, token split s) owns columns [b*CC, b*CC + CC) of
// all n streams (KB = n*CC "k-columns", k = i*CC + c) and walks the token
// tiles of its split. Each thread reads its B fragments of fn's slice
// [M x KB] from global memory once at the start, split into bf16 head and
// remainder words, and keeps them in registers for all tiles. Per tile of TT
// tokens (16 or 32, BackwardKernel.cpp's chooseColsTile) the records, x,
// dout and du of the tile go to shared memory, dm transposed and split into
// head and remainder as it is stored (once per element, not per warp); the
// next tile's loads are already in flight (into registers) while each warp
// takes KB/W k-columns of this one in n8 tiles (when n divides a warp's
// tiles, the same columns of every stream: tileColumn), its A fragments and
// bf16 x's B fragments by ldmatrix:
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
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"

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
  // Element `col` of token t's row of `width` f32 in `src` (0 past T), to
  // `store`.
  auto f32Row = [&](Value src, int64_t width, Value t, Value col, Value inRange,
                    std::function<void(Value)> store) {
    auto load = [this, src, width, t, col, TT](Value tile, Value live) {
      Value token = add(mul(tile, ci(TT)), t);
      Value ok = band(live, ult(token, T));
      return f32OrZero(
          ok, [&]() { return ld(src, add(mul(token, ci(width)), col)); });
    };
    auto loadWhole = [this, src, width, t, col, TT](Value tile) {
      Value token = add(mul(tile, ci(TT)), t);
      return ld(src, add(mul(token, ci(width)), col));
    };
    return TileLoad{inRange, load, loadWhole, std::move(store), f32};
  };
  // The records of the tile's tokens.
  unrolled(TT * P, [&](Value e, Value inRange) {
    Value t = div(e, P), col = rem(e, P);
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
    return f32Row(record, P, t, col, inRange, store);
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
      auto loadWhole = [this, t, r, c, src, rowsPerToken, TT, C](Value tile) {
        Value token = add(mul(tile, ci(TT)), t);
        Value rowStart = mul(add(mul(token, ci(rowsPerToken)), r), ci(C));
        return loadActInRange(src, rowStart, add(col0, c), /*raw=*/true);
      };
      Value at = add(mul(t, ci(pitch)), add(mul(r, ci(CC)), c));
      auto store = [this, dst, at](Value v) {
        if (isa<VectorType>(v.getType()))
          vector::StoreOp::create(b, loc, v, dst, ValueRange{at}, false,
                                  llvm::MaybeAlign(16));
        else
          st(v, dst, at);
      };
      return TileLoad{inRange, load, loadWhole, store, vecAct()};
    });
  };
  rows(arg(p.x), xS, n, tilePitch());
  rows(arg(p.dout), doutS, n, tilePitch());
  // du's tile, or with the pre-norm g's (du is formed per element: pass 2).
  rows(arg(p.preNorm() ? p.g : p.du), duS, 1, duPitch());
  // The dy fold: the lower sublayer's post of the tile's tokens, beside
  // their records.
  if (Value postLower = arg(p.postLower))
    unrolled(TT * n, [&](Value e, Value inRange) {
      Value t = div(e, n), j = rem(e, n);
      auto store = [this, t, j](Value v) {
        st(v, recS, add(mul(t, ci(recPitch(p))), add(ci(recPostLower(p)), j)));
      };
      return f32Row(postLower, n, t, j, inRange, store);
    });
  return items;
}

Value ColsKernelBuilder::wholeTile(Value tile, Value live) {
  if (!aligned)
    return Value();
  Value whole =
      band(aligned, ule(mul(add(tile, ci(1)), ci(s.tileTokens)), T));
  if (live)
    whole = band(whole, live);
  if (p.C % s.chunkColumns != 0) // the last chunk is partial
    whole = band(whole, ule(add(col0, ci(s.chunkColumns)), ci(p.C)));
  return whole;
}

/// A tile's loads behind one uniform branch: every tile but the last takes
/// the unguarded side (per-vector guards cost ~50 of ~450 instructions per
/// warp and tile; dropping them saved 2% of the time: cols-kernel-h200.md).
SmallVector<Value> ColsKernelBuilder::issueLoads(Value tile, Value live) {
  SmallVector<TileLoad> items = tileLoads();
  auto guarded = [&]() {
    SmallVector<Value> loaded;
    for (TileLoad &item : items)
      loaded.push_back(item.load(tile, live));
    return loaded;
  };
  Value whole = wholeTile(tile, live);
  if (!whole)
    return guarded();
  SmallVector<Type> types;
  for (TileLoad &item : items)
    types.push_back(item.type);
  return emitIfElse(
      types, whole,
      [&]() {
        SmallVector<Value> loaded;
        for (TileLoad &item : items)
          loaded.push_back(item.loadWhole(tile));
        return loaded;
      },
      guarded);
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

/// The first k-column of this warp's n8 tile nt. When n divides a warp's
/// tiles, tile nt = i * G + j (G tiles per stream) is stream i's j-th: a
/// thread then holds the same columns of every stream, and the dout and du
/// values of a column serve n outputs instead of one. Otherwise a warp takes
/// consecutive k-columns.
Value ColsKernelBuilder::tileColumn(int64_t nt) {
  int64_t NTW = warpTiles();
  if (!streamsShareTiles())
    return add(mul(warp, ci(NTW * 8)), ci(nt * 8));
  int64_t G = NTW / p.n;
  return add(ci(nt / G * s.chunkColumns),
             mul(add(mul(warp, ci(G)), ci(nt % G)), ci(8)));
}

SmallVector<ColsKernelBuilder::TileGroup> ColsKernelBuilder::tileGroups() {
  int64_t NTW = warpTiles(), CC = s.chunkColumns;
  SmallVector<TileGroup> groups;
  if (!streamsShareTiles()) {
    for (int64_t nt = 0; nt < NTW; ++nt) {
      Value k = tileColumn(nt);
      groups.push_back({rem(k, CC), {{nt, div(k, CC)}}});
    }
    return groups;
  }
  int64_t G = NTW / p.n;
  for (int64_t j = 0; j < G; ++j) {
    TileGroup group{rem(tileColumn(j), CC), {}};
    for (int64_t i = 0; i < p.n; ++i)
      group.members.push_back({i * G + j, ci(i)});
    groups.push_back(group);
  }
  return groups;
}

/// fn's B fragments of this thread (k: mixes, column tileColumn(nt) + g),
/// hi and lo, per n8 tile and k16 step: the words of mixes 2q.. and 2q + 8..
/// (0 past M and C), each word holding fn[2mp][k] and fn[2mp + 1][k] split
/// into bf16 head and remainder. The same for every tile of tokens: read
/// from global memory once, kept in registers (no shared-memory copy of
/// fn's slice: that room holds the tiles).
void ColsKernelBuilder::loadFnFragments() {
  int64_t KS = mixSteps(p), M = p.M(), n = p.n, C = p.C;
  int64_t CC = s.chunkColumns;
  Value g = div(lane, 4), q = rem(lane, 4);
  // fn[m] at the block's k-column kc (stream kc / CC), 0 past M and C.
  // Branch-free (a clamped address, then a select), so that all of a
  // thread's loads are issued together rather than one after another.
  auto fnAt = [&](Value m, Value kc) {
    Value i = div(kc, CC), col = add(col0, rem(kc, CC));
    Value ok = band(ult(m, M), ult(col, C));
    Value at = add(mul(m, ci(n * C)), add(mul(i, ci(C)), col));
    return select(ok, ld(arg(p.fn), select(ok, at, ci(0))), cf(0.0));
  };
  auto word = [&](Value mp, Value kc) {
    Value m = mul(mp, ci(2));
    return splitBf16(f32Pair(fnAt(m, kc), fnAt(add(m, ci(1)), kc)));
  };
  fnFragments.clear();
  for (int64_t nt = 0; nt < warpTiles(); ++nt) {
    Value kB = add(tileColumn(nt), g);
    SmallVector<std::array<Value, 4>> frags; // hi0, hi1, lo0, lo1
    for (int64_t ks = 0; ks < KS; ++ks) {
      Value mp0 = add(q, ci(8 * ks)), mp8 = add(mp0, ci(4));
      auto [hi0, lo0] = word(mp0, kB);
      auto [hi1, lo1] = word(mp8, kB);
      frags.push_back({hi0, hi1, lo0, lo1});
    }
    fnFragments.push_back(frags);
  }
}

SmallVector<Value> ColsKernelBuilder::emitTile(SmallVector<Value> dfnAcc) {
  int64_t n = p.n, M = p.M(), CC = s.chunkColumns, TT = s.tileTokens;
  int64_t NTW = warpTiles(), MT = TT / 16, KS = mixSteps(p);
  int64_t KT = TT / 16, MTM = KS;
  int64_t XP = tilePitch(), UP = duPitch(), DP = dmPitch();
  Value g = div(lane, 4), q = rem(lane, 4);
  // The record's comb, pre and 2 dS (record column col >= M).
  // `count` of them from record column col on, loaded in vectors as wide as
  // n's factors of 2 allow (comb's rows start at multiples of n, pre at n^2).
  int64_t recVec = n % 4 == 0 ? 4 : n % 2 == 0 ? 2 : 1;
  auto recs = [&](Value t, Value col, int64_t count) {
    SmallVector<Value> out;
    for (int64_t e = 0; e < count; e += recVec) {
      Value at = add(mul(t, ci(recPitch(p))), sub(add(col, ci(e)), ci(M)));
      if (recVec == 1) {
        out.push_back(ld(recS, at));
        continue;
      }
      Value v = vector::LoadOp::create(b, loc, vecF32Of(recVec), recS,
                                       ValueRange{at}, false,
                                       llvm::MaybeAlign(4 * recVec));
      for (int64_t k = 0; k < recVec; ++k)
        out.push_back(vector::ExtractOp::create(b, loc, v, k));
    }
    return out;
  };
  auto rec = [&](Value t, Value col) { return recs(t, col, 1)[0]; };
  auto actAt = [&](Value tileBuf, Value at) { return toF32(ld(tileBuf, at)); };
  // Two neighbouring activations of a tile (even index) as f32.
  auto actPair = [&](Value tileBuf, Value at) {
    Value v = vector::LoadOp::create(
        b, loc, VectorType::get({2}, acts.act), tileBuf, ValueRange{at}, false,
        llvm::MaybeAlign(2 * acts.act.getIntOrFloatBitWidth() / 8));
    return toF32(v);
  };
  // Fragments by ldmatrix: four 8x8 bf16 matrices (two: `tiles` = 2), lane l
  // naming row l % 8 of matrix l / 8 at element `rowAt(matrix, row)`; with
  // `trans` a thread gets a column pair of each matrix instead of a row
  // pair, i.e. the fragment of the transposed tile. Every row is 16 bytes
  // at a 16-byte aligned place (the pitches are multiples of 8 elements).
  auto ldMatrix = [&](Value buf, int64_t tiles, bool trans, auto rowAt) {
    Value l = tiles == 4 ? lane : rem(lane, 16); // .x2 reads lanes 0..15
    Value f = nvgpu::LdMatrixOp::create(
        b, loc, VectorType::get({tiles, 2}, b.getBF16Type()), buf,
        ValueRange{rowAt(div(l, 8), rem(l, 8))}, trans, tiles);
    SmallVector<Value> regs;
    for (int64_t r = 0; r < tiles; ++r)
      regs.push_back(asI32(vector::ExtractOp::create(b, loc, f, r)));
    return regs;
  };
  // A fragments of dm (rows: tokens, k: mixes) for dm @ fn, hi and lo: dm^T
  // transposed; matrix j covers tokens 8 (j % 2).., mixes 8 (j / 2)...
  SmallVector<SmallVector<Value>> aFnHi, aFnLo; // [mt * KS + ks][4]
  for (int64_t mt = 0; mt < MT; ++mt)
    for (int64_t ks = 0; ks < KS; ++ks) {
      auto rowAt = [&](Value j, Value r) {
        Value m = add(ci(16 * ks), add(mul(div(j, 2), ci(8)), r));
        return add(mul(m, ci(DP)), add(ci(16 * mt), mul(rem(j, 2), ci(8))));
      };
      aFnHi.push_back(ldMatrix(dmHiS, 4, true, rowAt));
      aFnLo.push_back(ldMatrix(dmLoS, 4, true, rowAt));
    }
  // A fragments of dm^T (rows: mixes, k: tokens) for dfn: matrix j covers
  // mixes 8 (j % 2).., tokens 8 (j / 2)...
  SmallVector<SmallVector<Value>> aDfnHi, aDfnLo; // [mtm * KT + kt][4]
  for (int64_t mtm = 0; mtm < MTM; ++mtm)
    for (int64_t kt = 0; kt < KT; ++kt) {
      auto rowAt = [&](Value j, Value r) {
        Value m = add(ci(16 * mtm), add(mul(rem(j, 2), ci(8)), r));
        return add(mul(m, ci(DP)), add(ci(16 * kt), mul(div(j, 2), ci(8))));
      };
      aDfnHi.push_back(ldMatrix(dmHiS, 4, false, rowAt));
      aDfnLo.push_back(ldMatrix(dmLoS, 4, false, rowAt));
    }
  // B fragments of bf16 x (k: tokens, columns: the n8 tile's) for dfn,
  // [kt * NTW + nt] = {b0, b1}: x transposed, two tiles per ldmatrix; matrix
  // j covers tokens 8 (j % 2).. of tile nt + j / 2. Other types: split below.
  bool exactX = p.act.isBF16(); // bf16 x is its own head
  SmallVector<std::array<Value, 2>> bX;
  for (int64_t kt = 0; exactX && kt < KT; ++kt)
    for (int64_t nt = 0; nt < NTW; nt += 2) {
      int64_t tiles = nt + 1 < NTW ? 4 : 2;
      auto regs = ldMatrix(xS, tiles, true, [&](Value j, Value r) {
        Value t = add(ci(16 * kt), add(mul(rem(j, 2), ci(8)), r));
        Value k = tiles == 4 ? select(ult(j, 2), tileColumn(nt),
                                      tileColumn(nt + 1))
                             : tileColumn(nt);
        return add(mul(t, ci(XP)), k);
      });
      for (int64_t e = 0; e < tiles; e += 2)
        bX.push_back({regs[e], regs[e + 1]});
    }

  // Pass 1, per n8 tile: the products (dm @ fn into registers, dfn += dm^T x).
  SmallVector<SmallVector<Value>> accs; // dm @ fn: [nt * MT + mt][4]
  for (int64_t nt = 0; nt < NTW; ++nt) {
    Value kB = add(tileColumn(nt), g); // this thread's B fragments' k-column
    ArrayRef<std::array<Value, 4>> bFn = fnFragments[nt];
    for (int64_t mt = 0; mt < MT; ++mt) {
      SmallVector<Value> acc(4, cf(0.0));
      // Small terms first: the tensor cores truncate when accumulating.
      for (int64_t ks = 0; ks < KS; ++ks) {
        auto &bf = bFn[ks];
        mmaBf16(acc, aFnHi[mt * KS + ks], bf[2], bf[3]);
        mmaBf16(acc, aFnLo[mt * KS + ks], bf[0], bf[1]);
        mmaBf16(acc, aFnHi[mt * KS + ks], bf[0], bf[1]);
      }
      accs.push_back(acc);
    }
    // dfn += dm^T x over the tile's tokens.
    for (int64_t kt = 0; kt < KT; ++kt) {
      auto xPair = [&](Value t) {
        return f32Pair(actAt(xS, add(mul(t, ci(XP)), kB)),
                       actAt(xS, add(mul(add(t, ci(1)), ci(XP)), kB)));
      };
      Value x0h, x0l, x1h, x1l;
      if (exactX) {
        x0h = bX[kt * NTW + nt][0];
        x1h = bX[kt * NTW + nt][1];
      } else {
        Value t0 = add(mul(q, ci(2)), ci(16 * kt));
        std::tie(x0h, x0l) = splitBf16(xPair(t0));
        std::tie(x1h, x1l) = splitBf16(xPair(add(t0, ci(8))));
      }
      for (int64_t mtm = 0; mtm < MTM; ++mtm) {
        MutableArrayRef<Value> acc(dfnAcc.data() + (mtm * NTW + nt) * 4, 4);
        if (!exactX)
          mmaBf16(acc, aDfnHi[mtm * KT + kt], x0l, x1l);
        mmaBf16(acc, aDfnLo[mtm * KT + kt], x0h, x1h);
        mmaBf16(acc, aDfnHi[mtm * KT + kt], x0h, x1h);
      }
    }
  }

  // Pass 2, per column pair (2q, 2q + 1 of an n8 tile) this thread holds:
  // dx = dm @ fn + the stream mixing + pre du + 2 dS x. The tiles of one
  // column group (tileGroups) share its dout and du pairs, loaded once.
  SmallVector<Value> dxVals, dxAt; // dx pairs (f32) and their place
  // With the pre-norm, dweight's partial sums: a column pair per group.
  int64_t dfnAccs = MTM * NTW * 4;
  SmallVector<TileGroup> groups = tileGroups();
  for (auto [gi, group] : llvm::enumerate(groups)) {
    Value c = add(group.column, mul(q, ci(2)));
    Value weight; // the pre-norm's weight at columns c, c + 1 (0 past C)
    if (p.preNorm()) {
      auto at = [&](int64_t e) {
        Value col = add(col0, add(c, ci(e)));
        Value ok = ult(col, ci(p.C));
        return select(ok, toF32(ld(arg(p.normWeight), select(ok, col, ci(0)))),
                      cf(0.0));
      };
      weight = f32Pair(at(0), at(1));
    }
    for (int64_t mt = 0; mt < MT; ++mt)
      for (int64_t half = 0; half < 2; ++half) { // rows g, g + 8
        Value t = add(g, ci(16 * mt + 8 * half));
        Value rowT = mul(t, ci(XP));
        SmallVector<Value> dout;
        for (int64_t j = 0; j < n; ++j)
          dout.push_back(actPair(doutS, add(rowT, add(ci(j * CC), c))));
        Value du = actPair(duS, add(mul(t, ci(UP)), c));
        // pre of every stream when the members' streams are known here.
        SmallVector<Value> pres;
        if (streamsShareTiles() || p.preNorm())
          pres = recs(t, ci(p.recPre()), n);
        if (p.preNorm()) {
          // du = r weight g - k u, u as the forward stored it (the same fma
          // chain over the streams, one rounding); dweight += g u r.
          Value u;
          for (int64_t i = 0; i < n; ++i) {
            Value xi = actPair(xS, add(rowT, add(ci(i * CC), c)));
            Value pi = splat(pres[i], vecF32Of(2));
            u = i ? fma(pi, xi, u) : fmul(pi, xi);
          }
          u = roundAct(u);
          // r and k sit past the record's vectors: scalar loads.
          auto scalarRec = [&](int64_t col) {
            return ld(recS, add(mul(t, ci(recPitch(p))), ci(col - M)));
          };
          Value r = splat(scalarRec(p.recR()), vecF32Of(2));
          Value k = splat(scalarRec(p.recK()), vecF32Of(2));
          Value g = du;
          du = fsub(fmul(r, fmul(weight, g)), fmul(k, u));
          Value &dw = dfnAcc[dfnAccs + gi];
          dw = fma(fmul(g, u), r, dw);
        }
        for (auto [nt, i] : group.members) {
          Value kcol = add(mul(i, ci(CC)), c);
          SmallVector<Value> comb =
              recs(t, add(ci(p.recComb()), mul(i, ci(n))), n);
          Value pre = !streamsShareTiles() ? rec(t, add(ci(p.recPre()), i))
                                           : pres[size_t(nt / (NTW / n))];
          Value v = f32Pair(accs[nt * MT + mt][2 * half],
                            accs[nt * MT + mt][2 * half + 1]);
          for (int64_t j = 0; j < n; ++j)
            v = fma(splat(comb[j], vecF32Of(2)), dout[j], v);
          v = fma(splat(pre, vecF32Of(2)), du, v);
          v = fma(splat(rec(t, ci(p.recDS())), vecF32Of(2)),
                  actPair(xS, add(rowT, kcol)), v);
          dxVals.push_back(v);
          dxAt.push_back(add(rowT, kcol));
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
  // One vector of dx (stream si, columns sc.. of token t), as rounded in the
  // dout tile, to global memory; returns it.
  auto storeDxVector = [&](Value t, Value si, Value sc, Value token,
                           bool guarded) {
    Value v = vector::LoadOp::create(
        b, loc, vecAct(), doutS,
        ValueRange{add(mul(t, ci(XP)), add(mul(si, ci(CC)), sc))}, false,
        llvm::MaybeAlign(16)); // dx as rounded: stored as it is
    Value row = mul(add(mul(token, ci(n)), si), ci(p.C));
    if (guarded)
      storeAct(v, arg(p.dxOut), row, add(col0, sc), ult(token, T));
    else
      storeActInRange(v, arg(p.dxOut), row, add(col0, sc));
    return v;
  };
  auto storeDx = [&](bool guarded) {
    emitFor(tid, ci(total), ci(s.threads), {}, [&](Value item, ValueRange) {
      Value t = div(item, n * NV), rest = rem(item, n * NV);
      Value si = div(rest, NV), sc = mul(rem(rest, NV), ci(acts.vec));
      storeDxVector(t, si, sc, add(tok0, t), guarded);
      return SmallVector<Value>{};
    });
  };
  // The dy fold: a thread takes the n streams of one vector of columns and
  // also stores the lower sublayer's dy = sum_j post[j] dx[j], from dx as
  // rounded (what its own rows pass would have read), summed in the rows
  // kernel's order.
  auto storeDxAndDyLower = [&](bool guarded) {
    emitFor(tid, ci(TT * NV), ci(s.threads), {}, [&](Value item, ValueRange) {
      Value t = div(item, NV), sc = mul(rem(item, NV), ci(acts.vec));
      Value token = add(tok0, t);
      Value live = ult(token, T);
      SmallVector<Value> posts = recs(t, ci(M + recPostLower(p)), n);
      Value dy;
      for (int64_t si = 0; si < n; ++si) {
        Value v = storeDxVector(t, ci(si), sc, token, guarded);
        Value post = splat(posts[si], vecF32());
        dy = si == 0 ? fmul(post, toF32(v)) : fma(post, toF32(v), dy);
      }
      Value row = mul(token, ci(p.C));
      if (guarded)
        storeAct(dy, arg(p.dyLowerOut), row, add(col0, sc), live);
      else
        storeActInRange(dy, arg(p.dyLowerOut), row, add(col0, sc));
      return SmallVector<Value>{};
    });
  };
  auto store = [&](bool guarded) {
    if (p.dyLowerOut)
      storeDxAndDyLower(guarded);
    else
      storeDx(guarded);
  };
  if (tileIsWhole)
    emitIfElse(
        tileIsWhole, [&]() { store(/*guarded=*/false); },
        [&]() { store(/*guarded=*/true); });
  else
    store(/*guarded=*/true);
  return dfnAcc;
}

void ColsKernelBuilder::emitBody() {
  int64_t n = p.n, M = p.M(), C = p.C, CC = s.chunkColumns;
  int64_t TT = s.tileTokens, S = s.tokenSplits, NTW = warpTiles();
  int64_t MTM = mixSteps(p);
  // dm^T's rows past M stay 0 (the tiles write rows < M only; the tile
  // loop's barriers order these stores before any read).
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
  loadFnFragments();
  // This split's tiles: [split * per, min((split + 1) * per, tiles)).
  Value tiles = arith::CeilDivUIOp::create(b, loc, T, ci(TT));
  Value per = arith::CeilDivUIOp::create(b, loc, tiles, ci(S));
  Value first = arith::MinUIOp::create(b, loc, mul(split, per), tiles);
  Value last = arith::MinUIOp::create(b, loc, add(first, per), tiles);
  // Software pipeline: a tile's global loads are issued before the previous
  // tile's products and land in registers (carried by the loop) while the
  // tensor cores and FMAs work; shared memory holds one tile.
  // dfn's accumulators, then (the pre-norm) dweight's: a pair of columns
  // per tile group.
  int64_t dweightAccs = p.preNorm() ? tileGroups().size() : 0;
  Value zeroPair = arith::ConstantOp::create(b, loc, b.getZeroAttr(vecF32Of(2)));
  SmallVector<Value> carried(MTM * NTW * 4, cf(0.0));
  carried.append(dweightAccs, zeroPair);
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
        tileIsWhole = wholeTile(tile, /*live=*/Value());
        SmallVector<Value> out = emitTile(
            SmallVector<Value>(carried.begin(), carried.begin() + accs));
        llvm::append_range(out, loads);
        return out;
      });
  SmallVector<Value> dfnAcc(done.begin(), done.begin() + accs);
  Value g = div(lane, 4), q = rem(lane, 4);
  if (p.preNorm()) {
    // This split's partial dweight: each column pair's sums over the 8 lanes
    // g that share it (the tokens), stored by g = 0; a column's sums are
    // taken by the group that holds its stream 0 (one group a column).
    for (auto [gi, group] : llvm::enumerate(tileGroups())) {
      Value pair = dfnAcc[MTM * NTW * 4 + gi];
      SmallVector<Value> sums;
      for (int64_t e = 0; e < 2; ++e) {
        Value v = vector::ExtractOp::create(b, loc, pair, e);
        for (int64_t off : {4, 8, 16})
          v = fadd(v, gpu::ShuffleOp::create(b, loc, v, off, 32,
                                             gpu::ShuffleMode::XOR)
                          .getShuffleResult());
        sums.push_back(v);
      }
      Value holdsStream0 = arith::ConstantOp::create(b, loc, b.getBoolAttr(false));
      for (auto [nt, i] : group.members)
        holdsStream0 = arith::OrIOp::create(b, loc, holdsStream0, eq(i, ci(0)));
      for (int64_t e = 0; e < 2; ++e) {
        Value col = add(col0, add(group.column, add(mul(q, ci(2)), ci(e))));
        emitIf(band(band(eq(g, ci(0)), holdsStream0), ult(col, ci(C))), [&]() {
          st(sums[e], dweightPartial, add(mul(split, ci(C)), col));
        });
      }
    }
  }
  // This split's partial dfn.
  for (int64_t mtm = 0; mtm < MTM; ++mtm)
    for (int64_t nt = 0; nt < NTW; ++nt)
      for (int64_t e = 0; e < 4; ++e) {
        Value m = add(g, ci(16 * mtm + 8 * (e / 2)));
        Value kcol = add(tileColumn(nt), add(mul(q, ci(2)), ci(e % 2)));
        Value i = div(kcol, CC), col = add(col0, rem(kcol, CC));
        emitIf(band(ult(m, M), ult(col, C)), [&]() {
          Value at = add(mul(add(mul(split, ci(M)), m), ci(n * C)),
                         add(mul(i, ci(C)), col));
          st(dfnAcc[(mtm * NTW + nt) * 4 + e], dfnPartial, at);
        });
      }
}
