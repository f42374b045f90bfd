//===- MHCToGPU.cpp - --convert-mhc-to-gpu --------------------------------===//
//
// Every mhc.fused group and every remaining mhc op becomes one gpu.func
// kernel in the gpu.module @mhc_kernels, written here op by op (gpu, arith,
// vector, scf, memref, nvgpu), plus a gpu.launch_func on the host side.
//
// Kernel shape: one block owns a tile of TT tokens.
//   stage 1  (post_res and/or norm_project) loops over C in chunks of CC
//            columns, ~256 contiguous bytes of every row (shorter runs cost
//            DRAM efficiency: bench/results/post-proto-h200.md): 16-byte
//            vector loads/stores of x, y, x_next, a chunk's items loaded a
//            batch at a time; the projection input goes, exact, into a bf16
//            shared tile [TT x n*CC] (f16/f32 values: bf16 head + bf16
//            remainder, two tiles). After a barrier the 4 warps split the
//            chunk's k16 steps on the tensor cores (nvvm.mma.sync m16n8k16
//            bf16, f32 accumulation; A by ldmatrix, fn read from L1/L2 and
//            split into bf16 hi + lo for ~f32 accuracy; all of a warp's fn
//            loads of a chunk in flight together). fn is read once per tile,
//            not per token. Sums of squares: registers, then a warp shuffle
//            tree per token row. The per-warp partial products are summed in
//            shared memory.
//   stage 2  (split_mixes, sinkhorn): one thread per token, all n x n values
//            in registers, loops fully unrolled for the static n.
//   stage 3  (pre_apply): vectorised over the tile's [TT x C] outputs.
// expand / collapse are vectorised elementwise kernels over the same tiles.
// Vector paths need C % (16 bytes / element size) == 0 and 16-byte aligned
// base pointers (checked at run time); otherwise a guarded scalar path runs.
//
// Kernel ABI: (index T, inputs..., outputs...) where every tensor is passed
// as a 1-D memref<?xT> over its contiguous data (5 params each after NVVM
// lowering); inputs are the group's external operands in first-use order,
// outputs its results. docs/GPU.md has the full contract.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/SetVector.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_CONVERTMHCTOGPU
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;

static constexpr int64_t kMaxThreads = 256;

namespace {

/// What one kernel computes: the members of a group (null when absent).
struct Plan {
  Operation *root = nullptr;
  PostResOp pr;
  NormProjectOp np;
  SplitMixesOp sp;
  SinkhornOp sk;
  PreApplyOp pa;
  ExpandOp ex;
  CollapseOp co;
  SmallVector<Value> inputs;  // external operands, first-use order
  SmallVector<Value> outputs; // member results written to memory
  SmallVector<Value> replaced; // root results, parallel to outputs
  int64_t n = 1, C = 0;
  Type act; // activation element type (bf16 / f16 / f32)
  // Tile geometry and block size.
  int64_t TT = 64, CC = 0, VEC = 1, KCH = 0, M = 0, NT = 0, MT = 0;
  int64_t threads = kMaxThreads;
  int64_t warps() const { return threads / 32; }
  /// Row pitch of the bf16 projection tile: 16 bytes of padding make the
  /// ldmatrix row addresses of a warp hit distinct banks.
  int64_t ldA() const { return KCH + 8; }
};

/// Builds the body of one kernel. All index math is on `index` values.
struct KernelBuilder {
  OpBuilder &b;
  Location loc;
  Plan &p;
  Type f32, i32, idxT;
  DenseMap<Value, Value> argOf; // tensor value -> kernel memref argument
  Value T, tid, lane, warp, tile0, aligned, fnAligned;
  // Shared memory buffers (null when unused).
  Value aTile, aTileLo, red, ssTok, postS, combS, preS;

  KernelBuilder(OpBuilder &b, Location loc, Plan &p)
      : b(b), loc(loc), p(p), f32(b.getF32Type()), i32(b.getI32Type()),
        idxT(b.getIndexType()) {}

  // --- small helpers --------------------------------------------------------
  Value ci(int64_t v) { return arith::ConstantIndexOp::create(b, loc, v); }
  Value cf(double v) {
    return arith::ConstantOp::create(b, loc, b.getF32FloatAttr(v));
  }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, loc, x, y); }
  Value mul(Value x, Value y) { return arith::MulIOp::create(b, loc, x, y); }
  Value div(Value x, int64_t d) {
    return arith::DivUIOp::create(b, loc, x, ci(d));
  }
  Value rem(Value x, int64_t d) {
    return arith::RemUIOp::create(b, loc, x, ci(d));
  }
  Value ult(Value x, Value y) {
    return arith::CmpIOp::create(b, loc, arith::CmpIPredicate::ult, x, y);
  }
  Value ult(Value x, int64_t y) { return ult(x, ci(y)); }
  Value band(Value x, Value y) { return arith::AndIOp::create(b, loc, x, y); }
  Value fadd(Value x, Value y) { return arith::AddFOp::create(b, loc, x, y); }
  Value fsub(Value x, Value y) { return arith::SubFOp::create(b, loc, x, y); }
  Value fmul(Value x, Value y) { return arith::MulFOp::create(b, loc, x, y); }
  Value fdiv(Value x, Value y) { return arith::DivFOp::create(b, loc, x, y); }
  Value fma(Value x, Value y, Value acc) {
    return math::FmaOp::create(b, loc, x, y, acc);
  }
  Value ld(Value mem, Value i) {
    return memref::LoadOp::create(b, loc, mem, ValueRange{i});
  }
  void st(Value v, Value mem, Value i) {
    memref::StoreOp::create(b, loc, v, mem, ValueRange{i});
  }
  void barrier() { gpu::BarrierOp::create(b, loc); }
  Value splat(Value s, VectorType t) {
    return vector::BroadcastOp::create(b, loc, t, s);
  }

  template <typename F> void emitIf(Value cond, F thenFn) {
    auto ifOp = scf::IfOp::create(b, loc, TypeRange{}, cond, false);
    OpBuilder::InsertionGuard g(b);
    b.setInsertionPointToStart(ifOp.thenBlock());
    thenFn();
  }
  template <typename F, typename G>
  SmallVector<Value> emitIfElse(TypeRange types, Value cond, F thenFn,
                                G elseFn) {
    auto ifOp = scf::IfOp::create(b, loc, types, cond, true);
    {
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointToStart(ifOp.thenBlock());
      scf::YieldOp::create(b, loc, thenFn());
      b.setInsertionPointToStart(ifOp.elseBlock());
      scf::YieldOp::create(b, loc, elseFn());
    }
    return SmallVector<Value>(ifOp.getResults());
  }
  template <typename F>
  SmallVector<Value> emitFor(Value lb, Value ub, Value step, ValueRange inits,
                             F body) {
    auto forOp = scf::ForOp::create(b, loc, lb, ub, step, inits);
    OpBuilder::InsertionGuard g(b);
    b.setInsertionPointToStart(forOp.getBody());
    SmallVector<Value> next =
        body(forOp.getInductionVar(), forOp.getRegionIterArgs());
    if (!inits.empty())
      scf::YieldOp::create(b, loc, next);
    return SmallVector<Value>(forOp.getResults());
  }

  VectorType vecF32() { return VectorType::get({p.VEC}, f32); }
  VectorType vecAct() { return VectorType::get({p.VEC}, p.act); }
  Value toF32(Value v) {
    if (p.act == f32)
      return v;
    Type t = f32;
    if (auto vt = dyn_cast<VectorType>(v.getType()))
      t = vt.clone(f32);
    return arith::ExtFOp::create(b, loc, t, v);
  }
  Value toAct(Value v, Type t) {
    return p.act == f32 ? v : arith::TruncFOp::create(b, loc, t, v);
  }
  /// Rounds f32 values to the activation type and back (what is stored).
  Value roundAct(Value v) {
    if (p.act == f32)
      return v;
    auto t = cast<VectorType>(v.getType()).clone(p.act);
    return toF32(toAct(v, t));
  }

  /// Loads VEC activations at mem[base + c ..] (as f32, or in the activation
  /// type when `raw`: half the registers for values held across a loop);
  /// lanes with c + e >= C or !ok read as 0. 16-byte vector load when
  /// possible, guarded scalar loads otherwise.
  Value loadAct(Value mem, Value base, Value c, Value ok, bool raw = false) {
    VectorType vt = raw ? vecAct() : vecF32();
    auto conv = [&](Value v) { return raw ? v : toF32(v); };
    auto scalarPath = [&]() -> SmallVector<Value> {
      Value v = arith::ConstantOp::create(b, loc, b.getZeroAttr(vt));
      Value zero = arith::ConstantOp::create(
          b, loc, b.getZeroAttr(vt.getElementType()));
      for (int64_t e = 0; e < p.VEC; ++e) {
        Value ce = add(c, ci(e));
        Value inb = band(ok, ult(ce, ci(p.C)));
        Value s = emitIfElse(
            vt.getElementType(), inb, [&]() -> SmallVector<Value> {
              return {conv(ld(mem, add(base, ce)))};
            },
            [&]() -> SmallVector<Value> { return {zero}; })[0];
        v = vector::InsertOp::create(b, loc, s, v, e);
      }
      return {v};
    };
    if (!aligned)
      return scalarPath()[0];
    Value fast = band(band(aligned, ok), ult(c, ci(p.C)));
    return emitIfElse(
        vt, fast, [&]() -> SmallVector<Value> {
          Value v = vector::LoadOp::create(b, loc, vecAct(), mem,
                                           ValueRange{add(base, c)}, false,
                                           llvm::MaybeAlign(16));
          return {conv(v)};
        },
        scalarPath)[0];
  }

  /// Stores VEC f32 values rounded to the activation type at mem[base + c..].
  void storeAct(Value v, Value mem, Value base, Value c, Value ok) {
    auto scalarPath = [&]() {
      for (int64_t e = 0; e < p.VEC; ++e) {
        Value ce = add(c, ci(e));
        Value inb = band(ok, ult(ce, ci(p.C)));
        emitIf(inb, [&]() {
          Value s = vector::ExtractOp::create(b, loc, v, e);
          st(toAct(s, p.act), mem, add(base, ce));
        });
      }
    };
    if (!aligned) {
      scalarPath();
      return;
    }
    Value fast = band(band(aligned, ok), ult(c, ci(p.C)));
    auto ifOp = scf::IfOp::create(b, loc, TypeRange{}, fast, true);
    OpBuilder::InsertionGuard g(b);
    b.setInsertionPointToStart(ifOp.thenBlock());
    vector::StoreOp::create(b, loc, toAct(v, vecAct()), mem,
                            ValueRange{add(base, c)}, false,
                            llvm::MaybeAlign(16));
    b.setInsertionPointToStart(ifOp.elseBlock());
    scalarPath();
  }

  Value arg(Value tensor) { return argOf.lookup(tensor); }
  bool escapes(Value v) { return argOf.count(v) && llvm::is_contained(p.outputs, v); }

  // --- stages ---------------------------------------------------------------

  /// Copies per-token coefficients [TT x width] of `src` into shared `dst`.
  void loadCoeffTile(Value src, Value dst, int64_t width) {
    emitFor(tid, ci(p.TT * width), ci(p.threads), {}, [&](Value i, ValueRange) {
      Value token = add(tile0, div(i, width));
      Value v = emitIfElse(
          f32, ult(token, T), [&]() -> SmallVector<Value> {
            return {ld(src, add(mul(tile0, ci(width)), i))};
          },
          [&]() -> SmallVector<Value> { return {cf(0.0)}; })[0];
      st(v, dst, i);
      return SmallVector<Value>{};
    });
  }

  /// Stage 1: the chunk loop of post_res and/or norm_project. A chunk is CC
  /// columns of every row of the tile (~256 contiguous bytes per row: the
  /// access pattern DRAM streams at full speed; 64-byte runs reach only ~54%
  /// of copy bandwidth, bench/results/post-proto-h200.md). Its R items per
  /// thread are loaded kBatch at a time (all loads of a batch issued first);
  /// x_next is stored and the projection input goes, exact, into the bf16
  /// tile; after a barrier the warps split the chunk's k16 steps on the
  /// tensor cores (emitMma).
  static constexpr int64_t kBatch = 2;
  void emitChunkLoop() {
    int64_t NVC = p.CC / p.VEC;
    int64_t items = p.TT * NVC;
    int64_t R = (items + p.threads - 1) / p.threads;
    bool ragged = items % p.threads != 0; // some threads lack an item
    int64_t batch = R % kBatch == 0 ? kBatch : 1;
    bool np = static_cast<bool>(p.np);
    int64_t numAcc = np ? p.MT * p.NT * 4 : 0;
    int64_t numSs = np ? R : 0;

    SmallVector<Value> inits;
    for (int64_t a = 0; a < numAcc + numSs; ++a)
      inits.push_back(cf(0.0));
    int64_t numChunks = (p.C + p.CC - 1) / p.CC;
    SmallVector<Value> res = emitFor(
        ci(0), ci(numChunks), ci(1), inits,
        [&](Value chunk, ValueRange carried) -> SmallVector<Value> {
          SmallVector<Value> acc(carried.begin(), carried.begin() + numAcc);
          SmallVector<Value> ss(carried.begin() + numAcc, carried.end());
          Value c0 = mul(chunk, ci(p.CC));
          // Batches in a loop (not unrolled: one batch's values live at a
          // time); the sums of squares of item r are carried and updated in
          // the batch that owns r.
          ss = emitFor(
              ci(0), ci(R / batch), ci(1), ss,
              [&](Value bi, ValueRange ssIn) -> SmallVector<Value> {
                SmallVector<Value> items0, oks;
                SmallVector<SmallVector<Value>> loaded;
                for (int64_t u = 0; u < batch; ++u) {
                  Value item = add(tid, mul(add(mul(bi, ci(batch)), ci(u)),
                                            ci(p.threads)));
                  items0.push_back(item);
                  oks.push_back(ragged ? ult(item, items) : Value());
                  loaded.push_back(loadItem(item, c0, oks.back()));
                }
                SmallVector<Value> got;
                for (int64_t u = 0; u < batch; ++u) {
                  auto one = [&]() -> SmallVector<Value> {
                    return {emitItem(items0[u], c0, loaded[u])};
                  };
                  got.push_back(
                      ragged ? emitIfElse(
                                   f32, oks[u], one,
                                   [&]() -> SmallVector<Value> {
                                     return {cf(0.0)};
                                   })[0]
                             : one()[0]);
                }
                SmallVector<Value> out(ssIn.begin(), ssIn.end());
                for (int64_t r = 0; r < numSs; ++r) {
                  Value mine = arith::CmpIOp::create(
                      b, loc, arith::CmpIPredicate::eq, bi, ci(r / batch));
                  out[r] = arith::SelectOp::create(
                      b, loc, mine, fadd(out[r], got[r % batch]), out[r]);
                }
                return out;
              });
          if (np) {
            barrier();
            // Versioned on fn's alignment outside the products, so that all
            // fn loads of a chunk stay straight-line code issued together.
            SmallVector<Type> types(acc.size(), f32);
            acc = emitIfElse(
                types, fnAligned, [&]() { return emitMma(c0, acc, true); },
                [&]() { return emitMma(c0, acc, false); });
            barrier();
          }
          SmallVector<Value> out(acc);
          out.append(ss.begin(), ss.end());
          return out;
        });
    if (!np)
      return;
    SmallVector<Value> acc(res.begin(), res.begin() + numAcc);
    SmallVector<Value> ss(res.begin() + numAcc, res.end());

    // Sums of squares: the NVC threads of one token row are consecutive
    // lanes (NVC is a power of two <= 32); a shuffle tree adds them.
    for (int64_t r = 0; r < R; ++r) {
      Value v = ss[r];
      for (int64_t off = NVC / 2; off >= 1; off /= 2) {
        auto sh = gpu::ShuffleOp::create(b, loc, v, off, 32,
                                         gpu::ShuffleMode::XOR);
        v = fadd(v, sh.getShuffleResult());
      }
      Value item = add(tid, ci(r * p.threads));
      Value first = arith::CmpIOp::create(b, loc, arith::CmpIPredicate::eq,
                                          rem(item, NVC), ci(0));
      if (ragged)
        first = band(first, ult(item, items));
      emitIf(first, [&]() { st(v, ssTok, div(item, NVC)); });
    }
    // Block reduction of the warps' partial products (each warp holds the
    // whole tile for its k16 steps), one warp at a time.
    Value g = div(lane, 4), tq = rem(lane, 4);
    for (int64_t w = 0; w < p.warps(); ++w) {
      emitIf(arith::CmpIOp::create(b, loc, arith::CmpIPredicate::eq, warp,
                                   ci(w)),
             [&]() {
               for (int64_t mt = 0; mt < p.MT; ++mt)
                 for (int64_t nt = 0; nt < p.NT; ++nt)
                   for (int64_t e = 0; e < 4; ++e) {
                     Value row = add(g, ci(mt * 16 + (e / 2) * 8));
                     Value col = add(mul(tq, ci(2)), ci(nt * 8 + e % 2));
                     Value v = acc[(mt * p.NT + nt) * 4 + e];
                     auto body = [&]() {
                       Value i = add(mul(row, ci(p.M)), col);
                       st(w ? fadd(ld(red, i), v) : v, red, i);
                     };
                     if ((nt + 1) * 8 <= p.M)
                       body();
                     else
                       emitIf(ult(col, p.M), body);
                   }
             });
      barrier();
    }
    // mix = dot * rsqrt(sumsq / K + eps).
    Value mixOut = escapes(p.np.getMix()) ? arg(p.np.getMix()) : Value();
    float eps = p.np.getEps().convertToFloat();
    emitFor(tid, ci(p.TT * p.M), ci(p.threads), {}, [&](Value i, ValueRange) {
      Value t = div(i, p.M);
      Value ms = fadd(fdiv(ld(ssTok, t), cf(double(p.n * p.C))), cf(eps));
      Value r = math::RsqrtOp::create(b, loc, ms);
      Value v = fmul(ld(red, i), r);
      st(v, red, i);
      if (mixOut)
        emitIf(ult(add(tile0, t), T),
               [&]() { st(v, mixOut, add(mul(tile0, ci(p.M)), i)); });
      return SmallVector<Value>{};
    });
    barrier();
  }

  /// Global loads of one chunk item (token t, VEC columns): x[0..n) and, for
  /// post_res, y. Out-of-range lanes read as 0.
  SmallVector<Value> loadItem(Value item, Value c0, Value itemOk) {
    int64_t n = p.n, C = p.C, NVC = p.CC / p.VEC;
    Value t = div(item, NVC), v = rem(item, NVC);
    Value token = add(tile0, t);
    Value ok = ult(token, T);
    if (itemOk)
      ok = band(ok, itemOk);
    Value c = add(c0, mul(v, ci(p.VEC)));
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
  /// x_next; the projection input goes to the shared tile. Returns the f32
  /// sum of squares of the projection input (0 without a projection).
  Value emitItem(Value item, Value c0, ArrayRef<Value> loaded) {
    int64_t n = p.n, C = p.C, NVC = p.CC / p.VEC;
    Value t = div(item, NVC), v = rem(item, NVC);
    Value token = add(tile0, t);
    Value ok = ult(token, T);
    Value cl = mul(v, ci(p.VEC)); // column inside the chunk
    Value c = add(c0, cl);
    SmallVector<Value> xs, src;
    for (int64_t i = 0; i < n; ++i)
      xs.push_back(toF32(loaded[i]));
    if (p.pr) {
      Value y = toF32(loaded[n]);
      Value out = arg(p.pr.getResult());
      for (int64_t j = 0; j < n; ++j) {
        Value o = fmul(splat(ld(postS, add(mul(t, ci(n)), ci(j))), vecF32()),
                       y);
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
    auto vt = VectorType::get({p.VEC}, bf16);
    Value sq = arith::ConstantOp::create(b, loc, b.getZeroAttr(vecF32()));
    for (int64_t i = 0; i < n; ++i) {
      // Out-of-range columns/tokens are zeros: they add nothing.
      Value at = add(mul(t, ci(p.ldA())), add(ci(i * p.CC), cl));
      Value hi = arith::TruncFOp::create(b, loc, vt, src[i]);
      vector::StoreOp::create(b, loc, hi, aTile, ValueRange{at}, false,
                              llvm::MaybeAlign(2 * p.VEC));
      if (aTileLo) {
        Value rest = fsub(src[i], arith::ExtFOp::create(b, loc, vecF32(), hi));
        vector::StoreOp::create(b, loc,
                                arith::TruncFOp::create(b, loc, vt, rest),
                                aTileLo, ValueRange{at}, false,
                                llvm::MaybeAlign(2 * p.VEC));
      }
      sq = fma(src[i], src[i], sq);
    }
    return vector::ReductionOp::create(b, loc, vector::CombiningKind::ADD, sq);
  }

  /// A vector<2xbf16> as the i32 register the mma instructions take.
  Value asI32(Value bf16x2) {
    Value w = vector::BitCastOp::create(b, loc, VectorType::get({1}, i32),
                                        bf16x2);
    return vector::ExtractOp::create(b, loc, w, 0);
  }
  /// f32 pair -> (bf16 head, bf16 of the remainder), each as bf16x2 in i32:
  /// hi*a + lo*a carries ~16 bits of fn.
  std::pair<Value, Value> splitBf16(Value v2) {
    auto bt = VectorType::get({2}, b.getBF16Type());
    Value h = arith::TruncFOp::create(b, loc, bt, v2);
    Value rest = fsub(v2, arith::ExtFOp::create(b, loc, v2.getType(), h));
    return {asI32(h), asI32(arith::TruncFOp::create(b, loc, bt, rest))};
  }

  /// fn[m][kcol], fn[m][kcol + 1] of this thread's B fragment (zeros outside
  /// M rows / C columns); `vec`: fn's base pointer is 8-byte aligned.
  Value loadFnPair(Value m, Value stream, Value col, bool vec) {
    Value fn = arg(p.np.getFn());
    int64_t K = p.n * p.C;
    auto v2 = VectorType::get({2}, f32);
    Value ok = nullptr;
    if (p.M % 8 != 0)
      ok = ult(m, p.M);
    if (p.C % p.CC != 0) {
      Value okc = ult(col, ci(p.C));
      ok = ok ? band(ok, okc) : okc;
    }
    Value at = add(mul(m, ci(K)), add(mul(stream, ci(p.C)), col));
    if (ok)
      at = arith::SelectOp::create(b, loc, ok, at, ci(0));
    // Two scalar loads; the second is masked past the row end for odd C.
    auto scalarPair = [&]() -> SmallVector<Value> {
      Value e1;
      if (p.C % 2 == 0) {
        e1 = ld(fn, add(at, ci(1)));
      } else {
        Value okNext = ult(add(col, ci(1)), ci(p.C));
        Value at1 =
            arith::SelectOp::create(b, loc, okNext, add(at, ci(1)), at);
        e1 = arith::SelectOp::create(b, loc, okNext, ld(fn, at1), cf(0.0));
      }
      return {vector::FromElementsOp::create(b, loc, v2,
                                             ValueRange{ld(fn, at), e1})};
    };
    // The pair is 8-byte aligned when fn is (`vec`) and C is even: one load.
    Value v = vec && p.C % 2 == 0
                  ? vector::LoadOp::create(b, loc, v2, fn, ValueRange{at},
                                           false, llvm::MaybeAlign(8))
                        .getResult()
                  : scalarPair()[0];
    if (ok)
      v = arith::SelectOp::create(
          b, loc, ok, v,
          arith::ConstantOp::create(b, loc, b.getZeroAttr(v2)));
    return v;
  }

  /// acc[4] += A(16x16 bf16) * B(16x8 bf16) on the tensor cores.
  void mmaBf16(MutableArrayRef<Value> acc, ArrayRef<Value> a, Value b0,
               Value b1) {
    auto res = NVVM::MmaOp::create(
        b, loc,
        LLVM::LLVMStructType::getLiteral(b.getContext(), {f32, f32, f32, f32}),
        ValueRange(a), ValueRange{b0, b1},
        ValueRange(ArrayRef<Value>(acc.data(), acc.size())),
        ArrayRef<int64_t>{16, 8, 16}, std::nullopt, std::nullopt,
        std::array<NVVM::MMATypes, 2>{NVVM::MMATypes::bf16,
                                      NVVM::MMATypes::bf16},
        std::array<NVVM::MMALayout, 2>{NVVM::MMALayout::row,
                                       NVVM::MMALayout::col});
    for (int64_t e = 0; e < 4; ++e)
      acc[e] = LLVM::ExtractValueOp::create(b, loc, res, e);
  }

  /// The tensor-core part of one chunk: the warps split its k16 steps
  /// (warp w: steps w, w + W, ...), each covering the whole token tile. A
  /// fragments by ldmatrix from the bf16 tile; B = fn straight from global
  /// memory (L1/L2: fn is read once per tile of tokens, not per token),
  /// split into bf16 hi + lo. The B loads of kGroup steps are issued
  /// together so that their latency overlaps; `vecFn` selects 8-byte loads.
  SmallVector<Value> emitMma(Value c0, SmallVector<Value> acc, bool vecFn) {
    Value g = div(lane, 4), tq = rem(lane, 4);
    int64_t steps = p.KCH / 16, W = p.warps();
    auto fragType = VectorType::get({4, 2}, b.getBF16Type());
    // Registers: kGroup * NT B fragments of 4 i32 in flight.
    int64_t kGroup = std::max<int64_t>(1, 12 / p.NT);
    auto loadB = [&](Value s) {
      Value kk = mul(s, ci(16));        // k inside the chunk
      Value i = div(kk, p.CC);          // stream
      Value col = add(add(c0, rem(kk, p.CC)), mul(tq, ci(2)));
      SmallVector<Value> frag; // per nt: hi0, lo0, hi1, lo1
      for (int64_t nt = 0; nt < p.NT; ++nt) {
        Value m = add(g, ci(nt * 8));
        auto [h0, l0] = splitBf16(loadFnPair(m, i, col, vecFn));
        auto [h1, l1] = splitBf16(loadFnPair(m, i, add(col, ci(8)), vecFn));
        frag.append({h0, l0, h1, l1});
      }
      return frag;
    };
    auto ldA = [&](Value tile, Value kk, int64_t mt) {
      Value row = add(rem(lane, 16), ci(mt * 16));
      Value at = add(mul(row, ci(p.ldA())), add(kk, mul(div(lane, 16), ci(8))));
      Value f = nvgpu::LdMatrixOp::create(b, loc, fragType, tile,
                                          ValueRange{at}, false, 4);
      SmallVector<Value> regs;
      for (int64_t r = 0; r < 4; ++r)
        regs.push_back(asI32(vector::ExtractOp::create(b, loc, f, r)));
      return regs;
    };
    auto compute = [&](Value s, ArrayRef<Value> frag,
                       SmallVector<Value> a2) -> SmallVector<Value> {
      Value kk = mul(s, ci(16));
      for (int64_t mt = 0; mt < p.MT; ++mt) {
        SmallVector<Value> aHi = ldA(aTile, kk, mt);
        SmallVector<Value> aLo;
        if (aTileLo)
          aLo = ldA(aTileLo, kk, mt);
        for (int64_t nt = 0; nt < p.NT; ++nt) {
          MutableArrayRef<Value> c(a2.data() + (mt * p.NT + nt) * 4, 4);
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
          types, ult(s, steps),
          [&]() { return compute(s, loadB(s), acc); },
          [&]() { return acc; });
    }
    return acc;
  }

  Value sigmoid(Value a) {
    Value e = math::ExpOp::create(b, loc, arith::NegFOp::create(b, loc, a));
    return fdiv(cf(1.0), fadd(cf(1.0), e));
  }

  /// Sinkhorn on n*n registers, exactly the spec's normalisation order.
  SmallVector<Value> sinkhorn(SmallVector<Value> P, int64_t n, int64_t iters,
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
    for (int64_t i = 0; i < n; ++i) {
      Value mx = P[i * n];
      for (int64_t j = 1; j < n; ++j)
        mx = arith::MaximumFOp::create(b, loc, mx, P[i * n + j]);
      Value s;
      for (int64_t j = 0; j < n; ++j) {
        P[i * n + j] = math::ExpOp::create(b, loc, fsub(P[i * n + j], mx));
        s = j ? fadd(s, P[i * n + j]) : P[i * n + j];
      }
      Value r = fdiv(cf(1.0), s);
      for (int64_t j = 0; j < n; ++j)
        P[i * n + j] = fadd(fmul(P[i * n + j], r), eps);
    }
    normCols(P);
    return emitFor(ci(1), ci(iters), ci(1), P,
                   [&](Value, ValueRange carried) -> SmallVector<Value> {
                     SmallVector<Value> q(carried.begin(), carried.end());
                     normRows(q);
                     normCols(q);
                     return q;
                   });
  }

  /// Stage 2: split_mixes and/or sinkhorn, one thread per token.
  void emitPerToken() {
    int64_t n = p.n, M = numMixes(n);
    Value t = tid;
    Value token = add(tile0, t);
    emitIf(band(ult(t, p.TT), ult(token, T)), [&]() {
      SmallVector<Value> logits;
      if (p.sp) {
        Value scale = arg(p.sp.getScale()), base = arg(p.sp.getBase());
        bool internal = p.np && p.sp.getMix() == p.np.getMix();
        Value s[3] = {ld(scale, ci(0)), ld(scale, ci(1)), ld(scale, ci(2))};
        float postMult = p.sp.getPostMult().convertToFloat();
        float preEps = p.sp.getPreEps().convertToFloat();
        Value preOut = escapes(p.sp.getPre()) ? arg(p.sp.getPre()) : Value();
        Value postOut = escapes(p.sp.getPost()) ? arg(p.sp.getPost()) : Value();
        Value logOut =
            escapes(p.sp.getLogits()) ? arg(p.sp.getLogits()) : Value();
        for (int64_t m = 0; m < M; ++m) {
          Value mix = internal ? ld(red, add(mul(t, ci(M)), ci(m)))
                               : ld(arg(p.sp.getMix()),
                                    add(mul(token, ci(M)), ci(m)));
          int64_t g = m < n ? 0 : m < 2 * n ? 1 : 2;
          Value a = fadd(fmul(mix, s[g]), ld(base, ci(m)));
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
        SmallVector<Value> comb =
            sinkhorn(logits, n, p.sk.getIterations(),
                     p.sk.getEps().convertToFloat());
        if (escapes(p.sk.getComb()))
          for (int64_t e = 0; e < n * n; ++e)
            st(comb[e], arg(p.sk.getComb()),
               add(mul(token, ci(n * n)), ci(e)));
      }
    });
  }

  /// Loops over the tile's [TT x ceil(C/VEC)] vector positions, kUnroll per
  /// thread and iteration: all loads of an iteration are issued before the
  /// first use, to keep enough bytes in flight.
  static constexpr int64_t kUnroll = 4;
  template <typename L, typename S> void forTileVectors(L load, S compute) {
    int64_t NV = (p.C + p.VEC - 1) / p.VEC;
    int64_t total = p.TT * NV;
    emitFor(tid, ci(total), ci(p.threads * kUnroll), {},
            [&](Value it, ValueRange) {
              SmallVector<Value> ts, tokens, cs, oks;
              SmallVector<SmallVector<Value>> loaded;
              for (int64_t u = 0; u < kUnroll; ++u) {
                Value itu = add(it, ci(u * p.threads));
                Value in = ult(itu, total);
                // Clamp so that shared-memory reads stay in bounds.
                Value t = arith::SelectOp::create(b, loc, in, div(itu, NV),
                                                  ci(0));
                Value token = add(tile0, t);
                Value c = mul(rem(itu, NV), ci(p.VEC));
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

  SmallVector<Value> loadStreams(Value mem, Value token, Value c, Value ok) {
    SmallVector<Value> xs;
    for (int64_t i = 0; i < p.n; ++i)
      xs.push_back(loadAct(mem, mul(add(mul(token, ci(p.n)), ci(i)), ci(p.C)),
                           c, ok, /*raw=*/true));
    return xs;
  }

  /// Stage 3: u = sum_i pre[i] x[i].
  void emitPreApply() {
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

  void emitExpand() {
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

  void emitCollapse() {
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
};

} // namespace

/// Element type of a ranked tensor value.
static Type elemType(Value v) {
  return cast<ShapedType>(v.getType()).getElementType();
}

/// Collects a group's members and its external inputs / outputs.
static LogicalResult makePlan(Operation *root, Plan &p) {
  p.root = root;
  SmallVector<Operation *> members;
  if (auto fused = dyn_cast<FusedOp>(root)) {
    for (Operation &op : fused.getBody().front().without_terminator())
      members.push_back(&op);
    auto yield = cast<YieldOp>(fused.getBody().front().getTerminator());
    p.outputs = SmallVector<Value>(yield.getValues());
  } else {
    members.push_back(root);
    p.outputs = SmallVector<Value>(root->getResults());
  }
  p.replaced = SmallVector<Value>(root->getResults());
  for (Operation *op : members) {
    bool dup = false;
    auto set = [&](auto &slot, auto op) {
      dup |= static_cast<bool>(slot);
      slot = op;
    };
    if (auto o = dyn_cast<PostResOp>(op)) set(p.pr, o);
    else if (auto o = dyn_cast<NormProjectOp>(op)) set(p.np, o);
    else if (auto o = dyn_cast<SplitMixesOp>(op)) set(p.sp, o);
    else if (auto o = dyn_cast<SinkhornOp>(op)) set(p.sk, o);
    else if (auto o = dyn_cast<PreApplyOp>(op)) set(p.pa, o);
    else if (auto o = dyn_cast<ExpandOp>(op)) set(p.ex, o);
    else if (auto o = dyn_cast<CollapseOp>(op)) set(p.co, o);
    else
      return op->emitOpError("cannot be placed in a GPU kernel");
    if (dup)
      return root->emitOpError("holds two ops of the same kind; a kernel "
                               "takes at most one of each");
  }
  llvm::SmallPtrSet<Operation *, 8> inGroup(members.begin(), members.end());
  llvm::SetVector<Value> ins;
  for (Operation *op : members)
    for (Value v : op->getOperands())
      if (!inGroup.contains(v.getDefiningOp()))
        ins.insert(v);
  p.inputs = ins.takeVector();

  // The internal edges a kernel can keep on chip.
  auto internal = [&](Value v) {
    return v.getDefiningOp() && inGroup.contains(v.getDefiningOp());
  };
  if (p.ex && members.size() > 1)
    return root->emitOpError("mhc.expand must be its own kernel");
  if (p.co && members.size() > 1)
    return root->emitOpError("mhc.collapse must be its own kernel");
  if (p.np && internal(p.np.getX()) &&
      !(p.pr && p.np.getX() == p.pr.getResult()))
    return root->emitOpError("unsupported group: norm_project must read "
                             "post_res's result or a kernel input");
  if (p.pr && ((internal(p.pr.getPost()) || internal(p.pr.getComb()) ||
                internal(p.pr.getX()) || internal(p.pr.getY()))))
    return root->emitOpError("unsupported group: post_res must read its "
                             "operands from memory");
  if (p.pa && (p.pr || internal(p.pa.getX()) ||
               (internal(p.pa.getPre()) &&
                !(p.sp && p.pa.getPre() == p.sp.getPre()))))
    return root->emitOpError("unsupported group: pre_apply must read x from "
                             "memory and pre from split_mixes or memory");
  if (p.sp && internal(p.sp.getMix()) &&
      !(p.np && p.sp.getMix() == p.np.getMix()))
    return root->emitOpError("unsupported group for split_mixes");
  if (p.sk && internal(p.sk.getLogits()) &&
      !(p.sp && p.sk.getLogits() == p.sp.getLogits()))
    return root->emitOpError("unsupported group for sinkhorn");
  if (p.np && p.pr && p.np.getX() != p.pr.getResult())
    return root->emitOpError("unsupported group: norm_project and post_res "
                             "on unrelated streams");
  if ((p.sp || p.sk) && p.pr)
    return root->emitOpError("unsupported group: post_res with coefficients");

  // n, C and the activation type from the widest member.
  auto nc = [&](Value x) {
    auto t = cast<RankedTensorType>(x.getType());
    p.n = t.getDimSize(t.getRank() - 2);
    p.C = t.getShape().back();
    p.act = t.getElementType();
  };
  if (p.pr) nc(p.pr.getX());
  else if (p.np) nc(p.np.getX());
  else if (p.pa) nc(p.pa.getX());
  else if (p.ex) nc(p.ex.getResult());
  else if (p.co) nc(p.co.getInput());
  else if (p.sp) p.n = cast<ShapedType>(p.sp.getPre().getType()).getShape().back();
  else if (p.sk) p.n = cast<ShapedType>(p.sk.getLogits().getType()).getShape().back();
  if (p.np && p.pa && p.np.getX().getType() != p.pa.getX().getType())
    return root->emitOpError("unsupported group: mixed stream types");
  if (!p.act)
    p.act = Float32Type::get(root->getContext());
  return success();
}

/// Picks the tile geometry for the plan (see the file header).
static void chooseGeometry(Plan &p, int64_t tileTokens) {
  p.M = numMixes(p.n);
  p.VEC = 16 / (p.act.getIntOrFloatBitWidth() / 8);
  p.NT = (p.M + 7) / 8;
  bool streaming = p.pr || p.np || p.pa || p.ex || p.co;
  // Projection kernels: 4 warps over a small token tile, so that several
  // blocks share an SM and overlap each other's load and mma phases; fn is
  // then re-read from L2 once per tile.
  if (p.np) {
    p.threads = 128;
    p.TT = tileTokens ? tileTokens : (p.NT > 4 ? 16 : 32);
  } else {
    p.threads = kMaxThreads;
    p.TT = streaming ? 64 : kMaxThreads;
  }
  p.MT = p.TT / 16;
  // Chunk: ~256 contiguous bytes of every row (bench/results/post-proto-h200.md:
  // shorter runs cost DRAM efficiency), a power of two and a multiple of 16
  // columns (a k16 step stays in one stream), with n*CC <= 512 so that the
  // bf16 projection tile fits in shared memory (256 when it is split into
  // hi + lo tiles for f16/f32 activations).
  int64_t kmax = p.np && !p.act.isBF16() ? 256 : 512;
  p.CC = 256 / (p.act.getIntOrFloatBitWidth() / 8);
  while (p.CC > 16 && p.n * p.CC > kmax)
    p.CC /= 2;
  p.KCH = p.n * p.CC;
}

/// Which token-dim source and how many trailing (non-token) dims it has.
static std::pair<Value, unsigned> tokenSource(Plan &p) {
  if (p.pr) return {p.pr.getX(), 2};
  if (p.np) return {p.np.getX(), 2};
  if (p.pa) return {p.pa.getX(), 2};
  if (p.ex) return {p.ex.getInput(), 1};
  if (p.co) return {p.co.getInput(), 2};
  if (p.sp) return {p.sp.getMix(), 1};
  return {p.sk.getLogits(), 2};
}

static gpu::GPUFuncOp buildKernel(OpBuilder &mb, Location loc, Plan &p,
                                  StringRef name) {
  MLIRContext *ctx = mb.getContext();
  Type idxT = mb.getIndexType();
  Type f32 = mb.getF32Type();
  SmallVector<Type> argTypes{idxT};
  for (Value v : llvm::concat<Value>(p.inputs, p.outputs))
    argTypes.push_back(MemRefType::get({ShapedType::kDynamic}, elemType(v)));
  auto wg = gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup);
  auto smem = [&](int64_t size, Type t = nullptr) {
    return MemRefType::get({size}, t ? t : f32, MemRefLayoutAttrInterface(),
                           wg);
  };
  SmallVector<Type> wgTypes;
  // Order: aTile, [aTileLo], red, ssTok, postS, combS, preS (only those
  // used).
  bool np = static_cast<bool>(p.np);
  bool splitA = np && !p.act.isBF16();
  bool preInShared = static_cast<bool>(p.pa);
  Type bf16 = mb.getBF16Type();
  if (np) {
    wgTypes.push_back(smem(p.TT * p.ldA(), bf16));
    if (splitA)
      wgTypes.push_back(smem(p.TT * p.ldA(), bf16));
    wgTypes.push_back(smem(p.TT * p.M));
    wgTypes.push_back(smem(p.TT));
  }
  if (p.pr) {
    wgTypes.push_back(smem(p.TT * p.n));
    wgTypes.push_back(smem(p.TT * p.n * p.n));
  }
  if (preInShared)
    wgTypes.push_back(smem(p.TT * p.n));

  int64_t smemBytes = 0;
  for (Type t : wgTypes) {
    auto mt = cast<MemRefType>(t);
    smemBytes += mt.getNumElements() * mt.getElementTypeBitWidth() / 8;
  }
  if (smemBytes > 48 * 1024) {
    p.root->emitOpError() << "needs " << smemBytes
                          << " bytes of shared memory per block (limit 49152)"
                          << "; try a smaller tile-tokens";
    return nullptr;
  }
  auto kernel = gpu::GPUFuncOp::create(
      mb, loc, name, FunctionType::get(ctx, argTypes, {}), wgTypes);
  kernel->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), mb.getUnitAttr());
  kernel.setKnownBlockSizeAttr(
      mb.getDenseI32ArrayAttr({static_cast<int32_t>(p.threads), 1, 1}));
  // Projection kernels: 4 blocks per SM (<= 128 registers a thread). The
  // chunk's loads and tensor-core phase alternate inside a block; 3 blocks
  // per SM leave the memory idle too often (measured: 0.71 vs 0.41 ms,
  // bench/results/post-proto-h200.md).
  if (p.np)
    kernel->setAttr(NVVM::NVVMDialect::getMinctasmAttrName(),
                    mb.getI32IntegerAttr(4));
  // 16-byte vector accesses to shared memory need 16-byte aligned buffers.
  for (unsigned i = 0; i < wgTypes.size(); ++i)
    kernel.setWorkgroupAttributionAttr(i, "llvm.align",
                                       mb.getI64IntegerAttr(16));

  OpBuilder b = OpBuilder::atBlockBegin(&kernel.getBody().front());
  KernelBuilder k(b, loc, p);
  k.T = kernel.getArgument(0);
  unsigned ai = 1;
  for (Value v : llvm::concat<Value>(p.inputs, p.outputs))
    k.argOf[v] = kernel.getArgument(ai++);
  unsigned wi = 0;
  auto attrib = kernel.getWorkgroupAttributions();
  if (np) {
    k.aTile = attrib[wi++];
    if (splitA)
      k.aTileLo = attrib[wi++];
    k.red = attrib[wi++];
    k.ssTok = attrib[wi++];
  }
  if (p.pr) {
    k.postS = attrib[wi++];
    k.combS = attrib[wi++];
  }
  if (preInShared)
    k.preS = attrib[wi++];

  k.tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  k.lane = k.rem(k.tid, 32);
  k.warp = k.div(k.tid, 32);
  k.tile0 = k.mul(gpu::BlockIdOp::create(b, loc, gpu::Dimension::x),
                  k.ci(p.TT));
  // Vector paths need C % VEC == 0 and every activation pointer 16-aligned.
  if (p.C > 0 && p.C % p.VEC == 0) {
    Value ok = arith::ConstantOp::create(b, loc, b.getBoolAttr(true));
    for (Value v : llvm::concat<Value>(p.inputs, p.outputs)) {
      if (elemType(v) != p.act || cast<ShapedType>(v.getType()).getShape().back() != p.C)
        continue;
      Value ptr = memref::ExtractAlignedPointerAsIndexOp::create(b, loc,
                                                                 k.argOf[v]);
      ok = k.band(ok, arith::CmpIOp::create(b, loc, arith::CmpIPredicate::eq,
                                            k.rem(ptr, 16), k.ci(0)));
    }
    k.aligned = ok;
  }
  // fn pairs are read with 8-byte loads when fn's base pointer allows it (a
  // view of a larger buffer may start anywhere on 4 bytes).
  if (np) {
    Value ptr = memref::ExtractAlignedPointerAsIndexOp::create(
        b, loc, k.argOf[p.np.getFn()]);
    k.fnAligned = arith::CmpIOp::create(b, loc, arith::CmpIPredicate::eq,
                                        k.rem(ptr, 8), k.ci(0));
  }

  // Stage 0: per-token coefficients into shared memory; clear accumulators.
  if (p.pr) {
    k.loadCoeffTile(k.arg(p.pr.getPost()), k.postS, p.n);
    k.loadCoeffTile(k.arg(p.pr.getComb()), k.combS, p.n * p.n);
  }
  if (p.pa && !(p.sp && p.pa.getPre() == p.sp.getPre()))
    k.loadCoeffTile(k.arg(p.pa.getPre()), k.preS, p.n);
  if (np) {
    k.emitIf(k.ult(k.tid, p.TT), [&]() { k.st(k.cf(0.0), k.ssTok, k.tid); });
  }
  if (p.pr || np || p.pa)
    k.barrier();

  if (p.pr || np)
    k.emitChunkLoop();
  if (p.sp || p.sk)
    k.emitPerToken();
  if (p.pa) {
    if (p.sp)
      k.barrier();
    k.emitPreApply();
  }
  if (p.ex)
    k.emitExpand();
  if (p.co)
    k.emitCollapse();
  gpu::ReturnOp::create(b, loc);
  return kernel;
}

/// A contiguous tensor as a flat 1-D memref<?xT> (host side).
static Value flatBuffer(OpBuilder &b, Location loc, Value tensor) {
  auto t = cast<RankedTensorType>(tensor.getType());
  auto mt = MemRefType::get(t.getShape(), t.getElementType());
  Value m = bufferization::ToBufferOp::create(b, loc, mt, tensor, b.getUnitAttr());
  return m;
}

static Value flatten(OpBuilder &b, Location loc, Value m) {
  auto mt = cast<MemRefType>(m.getType());
  if (mt.getRank() > 1) {
    ReassociationIndices all;
    for (int64_t i = 0; i < mt.getRank(); ++i)
      all.push_back(i);
    m = memref::CollapseShapeOp::create(b, loc, m,
                                        ArrayRef<ReassociationIndices>{all});
  }
  auto dyn = MemRefType::get({ShapedType::kDynamic}, mt.getElementType());
  if (m.getType() != dyn)
    m = memref::CastOp::create(b, loc, dyn, m);
  return m;
}

static LogicalResult lowerRoot(Operation *root, gpu::GPUModuleOp gpuMod,
                               int64_t index, int64_t tileTokens) {
  Plan p;
  if (failed(makePlan(root, p)))
    return failure();
  chooseGeometry(p, tileTokens);
  Location loc = root->getLoc();
  std::string kind = isa<FusedOp>(root)
                         ? (cast<FusedOp>(root).getKind()).str()
                         : root->getName().stripDialect().str();
  std::string name = "mhc_" + kind + "_" + std::to_string(index);

  OpBuilder mb = OpBuilder::atBlockEnd(gpuMod.getBody());
  gpu::GPUFuncOp kernel = buildKernel(mb, loc, p, name);
  if (!kernel)
    return failure();

  // Host side.
  OpBuilder b(root);
  auto [src, trailing] = tokenSource(p);
  auto srcType = cast<RankedTensorType>(src.getType());
  unsigned lead = srcType.getRank() - trailing;
  SmallVector<Value> leadDims;
  Value T = arith::ConstantIndexOp::create(b, loc, 1);
  for (unsigned d = 0; d < lead; ++d) {
    Value dim = tensor::DimOp::create(b, loc, src, d);
    leadDims.push_back(dim);
    T = arith::MulIOp::create(b, loc, T, dim);
  }
  SmallVector<Value> args{T};
  for (Value v : p.inputs)
    args.push_back(flatten(b, loc, flatBuffer(b, loc, v)));
  SmallVector<Value> allocs;
  for (Value v : p.outputs) {
    auto t = cast<RankedTensorType>(v.getType());
    SmallVector<Value> dyn;
    for (int64_t d = 0; d < t.getRank(); ++d)
      if (t.isDynamicDim(d)) {
        if (d >= static_cast<int64_t>(lead))
          return root->emitOpError("expects static non-token dims");
        dyn.push_back(leadDims[d]);
      }
    Value alloc = memref::AllocOp::create(
        b, loc, MemRefType::get(t.getShape(), t.getElementType()), dyn);
    allocs.push_back(alloc);
    args.push_back(flatten(b, loc, alloc));
  }
  // At least one block: with T == 0 every thread sees token >= T and writes
  // nothing (a grid of 0 blocks would be a launch error).
  Value tt = arith::ConstantIndexOp::create(b, loc, p.TT);
  Value one = arith::ConstantIndexOp::create(b, loc, 1);
  Value grid = arith::MaxUIOp::create(
      b, loc, arith::CeilDivUIOp::create(b, loc, T, tt), one);
  Value block = arith::ConstantIndexOp::create(b, loc, p.threads);
  gpu::LaunchFuncOp::create(b, loc, kernel, gpu::KernelDim3{grid, one, one},
                            gpu::KernelDim3{block, one, one}, Value(), args);
  for (auto [alloc, old] : llvm::zip(allocs, p.replaced)) {
    Value t = bufferization::ToTensorOp::create(
        b, loc, old.getType(), alloc, /*restrict=*/true, /*writable=*/true);
    old.replaceAllUsesWith(t);
  }
  root->erase();
  return success();
}

namespace {
struct ConvertMHCToGPUPass
    : mhc::impl::ConvertMHCToGPUBase<ConvertMHCToGPUPass> {
  using ConvertMHCToGPUBase::ConvertMHCToGPUBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    // The schedule uses bf16 mma.sync m16n8k16 and ldmatrix (sm_80+).
    StringRef c = chip;
    unsigned sm = 0;
    if (!c.consume_front("sm_") || c.consumeInteger(10, sm) ||
        !(c.empty() || c == "a")) {
      module.emitError() << "convert-mhc-to-gpu: bad chip '" << chip
                         << "', expected sm_XX (e.g. sm_90)";
      return signalPassFailure();
    }
    if (sm < 80) {
      module.emitError() << "convert-mhc-to-gpu: chip " << chip
                         << " is not supported; the kernels need sm_80 or "
                            "newer (bf16 mma.sync)";
      return signalPassFailure();
    }

    SmallVector<Operation *> roots;
    module.walk<WalkOrder::PreOrder>([&](Operation *op) {
      if (isa<FusedOp>(op)) {
        roots.push_back(op);
        return WalkResult::skip();
      }
      if (isa<MHCDialect>(op->getDialect()) && !isa<YieldOp>(op))
        roots.push_back(op);
      return WalkResult::advance();
    });
    if (tileTokens != 0 && tileTokens != 16 && tileTokens != 32 &&
        tileTokens != 64) {
      module.emitError() << "convert-mhc-to-gpu: tile-tokens must be 0 "
                            "(auto), 16, 32 or 64, got "
                         << static_cast<int64_t>(tileTokens);
      return signalPassFailure();
    }
    if (roots.empty())
      return;

    OpBuilder b(module.getBodyRegion());
    b.setInsertionPointToEnd(module.getBody());
    auto gpuMod = gpu::GPUModuleOp::create(b, module.getLoc(), "mhc_kernels");
    module->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                    b.getUnitAttr());
    SymbolTable::setSymbolVisibility(gpuMod, SymbolTable::Visibility::Private);
    int64_t index = 0;
    for (Operation *root : roots)
      if (failed(lowerRoot(root, gpuMod, index++, tileTokens)))
        return signalPassFailure();
  }
};
} // namespace
