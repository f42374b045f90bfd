//===- HyperConnect.cpp - widen residual chains into mHC form ------------===//
//
// --mhc-hyperconnect: every chain of residual blocks found by
// HyperConnectAnalysis becomes one n-stream hyper-connected stream:
//
//   X_0 = mhc.expand(h_0)
//   per block l: coefficients (pre, post, comb) from X_l
//                u = mhc.pre_apply(X_l, pre)        replaces F's uses of x_l
//                X_{l+1} = mhc.post_res(F(u), X_l, post, comb)   replaces the
//                add
//   users of the stream outside the chain read mhc.collapse(X) / n.
//
// The final "/ n" makes the stream's exit the *mean* of the streams: with
// identical streams (identity init) it is exactly the original value for n
// a power of two (one rounding otherwise). docs/HyperConnect.md has the
// rationale and the parameter layouts.
//
//===----------------------------------------------------------------------===//
#include "HyperConnectAnalysis.h"

#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mhc/Utils/ExpandShapeRepair.h"
#include "mhc/Utils/LinalgBuilders.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Tosa/IR/TosaOps.h"
#include "mlir/Dialect/Tosa/Utils/ConversionUtils.h"
#include "mlir/IR/ImplicitLocOpBuilder.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/SmallString.h"
#include <cmath>

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCHYPERCONNECT
#include "mhc/Dialect/MHC/Transforms/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::hyperconnect;

namespace {

using Mode = HyperConnectMode;
using Init = HyperConnectInit;

struct Config {
  int64_t n;
  Mode mode;
  Init init;
  bool paramsAsArguments;
  int64_t iterations;
  bool learnedExit;
};

constexpr float kAlpha = 0.01f;     // paper's alpha for all three mappings
constexpr float kRandScale = 0.01f; // fn / theta drawn from U(-0.01, 0.01)
constexpr float kRmsEps = 1e-6f;
// Bounds that keep the rewrite's sizes far from overflow and its output
// writable: n streams give n*n + 2n coefficients per token, and
// params=constants writes every parameter as a dense constant.
constexpr int64_t kMaxStreams = 1024;
constexpr int64_t kMaxConstantElements = int64_t(1) << 26; // 256 MB of f32
constexpr int64_t kMaxTensorElements = int64_t(1) << 48;   // the dialect's
constexpr float kPreEps = 1e-6f; // spec 3: pre = sigmoid(.) + eps_pre

/// Deterministic U(-1, 1) numbers (splitmix64), so that params=constants and
/// the documented init are reproducible on every platform.
struct SplitMix {
  uint64_t state;
  explicit SplitMix(uint64_t seed) : state(seed) {}
  float next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<float>((z >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
  }
};

RankedTensorType widen(Type t, int64_t n) {
  auto type = cast<RankedTensorType>(t);
  SmallVector<int64_t> shape(type.getShape());
  shape.insert(shape.end() - 1, n);
  return RankedTensorType::get(shape, type.getElementType());
}

/// An elementwise conversion of the widened stream to `elem` (replays a dtype
/// conversion the original stream went through).
Value convertElementwise(OpBuilder &b, Location loc, Value in, Type elem) {
  auto type = cast<RankedTensorType>(in.getType());
  int64_t rank = type.getRank();
  Value init = emptyWithLeading(b, loc, in, rank, {}, elem);
  AffineMap id = b.getMultiDimIdentityMap(rank);
  bool extend = elem.getIntOrFloatBitWidth() >
                type.getElementType().getIntOrFloatBitWidth();
  return linalg::GenericOp::create(
             b, loc, init.getType(), in, init, {id, id}, iteratorList(rank, 0),
             [&](OpBuilder &nb, Location l, ValueRange args) {
               Value r =
                   extend
                       ? arith::ExtFOp::create(nb, l, elem, args[0]).getResult()
                       : arith::TruncFOp::create(nb, l, elem, args[0])
                             .getResult();
               linalg::YieldOp::create(nb, l, r);
             })
      .getResult(0);
}

/// Replays the stream view `op` (see streamViewSource) on the widened stream
/// `in`: the same conversion, cast or reshape with the n dim kept before C
/// (a tosa.reshape gets the widened result shape).
Value replayView(OpBuilder &b, Operation *op, Value in, int64_t n) {
  Location loc = op->getLoc();
  Type resultType = widen(op->getResult(0).getType(), n);
  if (isa<tensor::CastOp>(op))
    return tensor::CastOp::create(b, loc, resultType, in);
  if (isa<tosa::CastOp>(op))
    return tosa::CastOp::create(b, loc, resultType, in);
  if (isa<tosa::ReshapeOp>(op)) {
    ImplicitLocOpBuilder ib(loc, b);
    Value shape = tosa::getTosaConstShape(
        ib, cast<RankedTensorType>(resultType).getShape());
    return tosa::ReshapeOp::create(b, loc, resultType, in, shape);
  }
  // Reshape groups: the original ones but the last ({C}), then {n} and {C}.
  auto widenGroups = [](SmallVector<ReassociationIndices, 4> groups) {
    int64_t c = groups.back().front();
    groups.back() = {c};
    groups.push_back({c + 1});
    return SmallVector<ReassociationIndices>(groups.begin(), groups.end());
  };
  if (auto collapse = dyn_cast<tensor::CollapseShapeOp>(op))
    return tensor::CollapseShapeOp::create(
        b, loc, resultType, in,
        widenGroups(collapse.getReassociationIndices()));
  if (auto expand = dyn_cast<tensor::ExpandShapeOp>(op)) {
    SmallVector<OpFoldResult> shape = expand.getMixedOutputShape();
    shape.insert(shape.end() - 1, b.getIndexAttr(n));
    return tensor::ExpandShapeOp::create(
        b, loc, resultType, in, widenGroups(expand.getReassociationIndices()),
        shape);
  }
  return convertElementwise(
      b, loc, in,
      cast<RankedTensorType>(op->getResult(0).getType()).getElementType());
}

struct Coefficients {
  Value pre, post, comb;
};

/// Rewrites the chains of one function.
class ChainRewriter {
public:
  ChainRewriter(func::FuncOp func, const Config &cfg)
      : func(func), cfg(cfg), b(func.getContext()) {}

  LogicalResult rewrite(ArrayRef<ResidualBlock> chain);
  /// Gives the function the signature of its entry block once all chains are
  /// rewritten (params=arguments).
  void finishSignature();

private:
  /// `count` weights of the chosen init: U(-0.01, 0.01) for the paper's,
  /// zeros for identity; none for params=arguments (arguments carry no
  /// values, so nothing is drawn).
  SmallVector<float> randomValues(SplitMix &rng, int64_t count) const {
    SmallVector<float> v(cfg.paramsAsArguments ? 0 : count, 0.0f);
    if (cfg.init == Init::Paper)
      for (float &e : v)
        e = kRandScale * rng.next();
    return v;
  }
  Value param(Location loc, const Twine &name, ArrayRef<int64_t> shape,
              ArrayRef<float> values);
  Value param(Location loc, int64_t layer, StringRef role,
              ArrayRef<int64_t> shape, ArrayRef<float> values) {
    return param(loc, "layer" + Twine(layer) + "." + role, shape, values);
  }
  LogicalResult checkSizes(ArrayRef<ResidualBlock> chain);
  Coefficients coefficients(Location loc, Value x, int64_t layer,
                            int64_t indexInChain);
  Coefficients hcCoefficients(Location loc, Value x, Value theta, Value scale,
                              Value base, bool dynamic);
  Value combineStreams(Location loc, Value x, Type type, Value weights);
  Value meanOfStreams(Location loc, Value x, Type type) {
    return combineStreams(loc, x, type, /*weights=*/{});
  }
  Value exitWeights(Location loc, Value x, int64_t chainIndex);

  func::FuncOp func;
  const Config &cfg;
  OpBuilder b;
  int64_t nextLayer = 0;
  int64_t nextChain = 0;
  Operation *lastParam = nullptr;
  /// Names of the parameters added as block arguments, in order.
  SmallVector<StringAttr> newArgNames;
};

Value ChainRewriter::param(Location loc, const Twine &paramName,
                           ArrayRef<int64_t> shape, ArrayRef<float> values) {
  auto type = RankedTensorType::get(shape, b.getF32Type());
  if (!cfg.paramsAsArguments) {
    // Parameters first in the function, in creation order.
    OpBuilder top = OpBuilder::atBlockBegin(&func.getBody().front());
    if (lastParam)
      top.setInsertionPointAfter(lastParam);
    lastParam = arith::ConstantOp::create(
        top, loc, DenseElementsAttr::get(type, values));
    return lastParam->getResult(0);
  }
  SmallString<32> name;
  paramName.toVector(name);
  newArgNames.push_back(b.getStringAttr(name));
  // Only the block gets the argument now; the function type and argument
  // attributes are updated once at the end (one update per parameter would
  // copy the ever longer signature each time: quadratic in depth).
  return func.getBody().front().addArgument(type, loc);
}

void ChainRewriter::finishSignature() {
  if (newArgNames.empty())
    return;
  SmallVector<DictionaryAttr> argAttrs;
  func.getAllArgAttrs(argAttrs);
  for (StringAttr name : newArgNames)
    argAttrs.push_back(b.getDictionaryAttr(b.getNamedAttr("mhc.param", name)));
  func.setType(FunctionType::get(func.getContext(),
                                 func.getBody().front().getArgumentTypes(),
                                 func.getResultTypes()));
  func.setAllArgAttrs(argAttrs);
  newArgNames.clear();
}

/// The coefficient ops of one block, reading the widened stream `x`.
Coefficients ChainRewriter::coefficients(Location loc, Value x, int64_t layer,
                                         int64_t indexInChain) {
  int64_t n = cfg.n, m = numMixes(n);
  auto xType = cast<RankedTensorType>(x.getType());
  int64_t c = xType.getShape().back();

  // base = [pre (n) | post (n) | res (n*n)], the layout split_mixes uses.
  SmallVector<float> base(m, 0.0f);
  bool hcBase = cfg.mode != Mode::MHC;
  for (int64_t i = 0; i < n; ++i) {
    if (hcBase) {
      // HC: b_pre one-hot e_{l mod n} (static-hc paper: the mean 1/n),
      // b_post = 1, b_res = I.
      if (cfg.mode == Mode::StaticHC && cfg.init == Init::Paper)
        base[i] = 1.0f / n;
      else
        base[i] = i == indexInChain % n ? 1.0f : 0.0f;
      base[n + i] = 1.0f;
      base[2 * n + i * n + i] = 1.0f;
    } else {
      // mHC: sigmoid(b_pre) = 1/n, 2 sigmoid(0) = 1, Sinkhorn(0) = J/n.
      base[i] = n > 1 ? -std::log(static_cast<float>(n - 1)) : 6.0f;
    }
  }
  auto baseParam = [&] { return param(loc, layer, "base", {m}, base); };
  if (cfg.mode == Mode::StaticHC)
    return hcCoefficients(loc, x, {}, {}, baseParam(), /*dynamic=*/false);

  SmallVector<float> scale(3, kAlpha);
  // Random weights: seeded by layer, so every layer differs but reruns agree.
  SplitMix rng(0x6d6863ull * 1000003ull + static_cast<uint64_t>(layer));
  auto random = [&](int64_t count) { return randomValues(rng, count); };

  if (cfg.mode == Mode::HC) {
    // theta = [theta_pre (1 x C); theta_post (1 x C); theta_res (n x C)].
    Value theta = param(loc, layer, "theta", {n + 2, c}, random((n + 2) * c));
    Value scaleV = param(loc, layer, "scale", {3}, scale);
    return hcCoefficients(loc, x, theta, scaleV, baseParam(), /*dynamic=*/true);
  }

  Value fn = param(loc, layer, "fn", {m, n * c}, random(m * n * c));
  Value scaleV = param(loc, layer, "scale", {3}, scale);
  Value baseV = baseParam();
  int64_t lead = xType.getRank() - 2;
  SmallVector<int64_t> leadShape(xType.getShape().take_front(lead));
  auto f32 = b.getF32Type();
  auto withTail = [&](ArrayRef<int64_t> tail) {
    SmallVector<int64_t> s(leadShape);
    s.append(tail.begin(), tail.end());
    return RankedTensorType::get(s, f32);
  };
  Value mix =
      NormProjectOp::create(b, loc, TypeRange{withTail({m})}, ValueRange{x, fn})
          .getResult();
  auto split = SplitMixesOp::create(
      b, loc, TypeRange{withTail({n}), withTail({n}), withTail({n, n})},
      ValueRange{mix, scaleV, baseV});
  auto sinkhorn = SinkhornOp::create(
      b, loc, TypeRange{withTail({n, n})}, ValueRange{split.getLogits()},
      {b.getNamedAttr("iterations", b.getI64IntegerAttr(cfg.iterations))});
  return {split.getPre(), split.getPost(), sinkhorn.getResult()};
}

/// Dynamic HC (spec 5b) with linalg: x~ = RMSNorm(x) per stream,
///   pre[i]     = a0 tanh(theta_pre . x~[i])    + base[i]
///   post[i]    = a1 tanh(theta_post . x~[i])   + base[n + i]
///   comb[i][j] = a2 tanh(theta_res[j] . x~[i]) + base[2n + i n + j]
/// (comb[i][j]: source stream i into destination j, the dialect's
/// orientation). Static HC (`dynamic` false) keeps only the base terms.
Coefficients ChainRewriter::hcCoefficients(Location loc, Value x, Value theta,
                                           Value scale, Value base,
                                           bool dynamic) {
  MLIRContext *ctx = b.getContext();
  int64_t n = cfg.n;
  auto xType = cast<RankedTensorType>(x.getType());
  int64_t rank = xType.getRank(), lead = rank - 2;
  int64_t c = xType.getShape().back();
  auto f32 = b.getF32Type();
  auto dims = [&](int64_t count) {
    SmallVector<AffineExpr> e;
    for (int64_t i = 0; i < count; ++i)
      e.push_back(getAffineDimExpr(i, ctx));
    return e;
  };

  Value sq, proj;
  if (dynamic) {
    // sq[..., i] = sum_c x^2 ; proj[..., i, k] = sum_c x[..., i, c] theta[k, c]
    Value sqInit =
        fillF32(b, loc, emptyWithLeading(b, loc, x, lead, {n}, f32), 0.0);
    sq = linalg::GenericOp::create(
             b, loc, sqInit.getType(), x, sqInit,
             {b.getMultiDimIdentityMap(rank),
              AffineMap::get(rank, 0, dims(rank - 1), ctx)},
             iteratorList(rank - 1, 1),
             [&](OpBuilder &nb, Location l, ValueRange a) {
               Value v = widenToF32(nb, l, a[0]);
               Value s = arith::AddFOp::create(
                   nb, l, a[1], arith::MulFOp::create(nb, l, v, v));
               linalg::YieldOp::create(nb, l, s);
             })
             .getResult(0);
    // Loops (lead..., i, k, c).
    SmallVector<AffineExpr> xe = dims(lead + 1);
    xe.push_back(getAffineDimExpr(lead + 2, ctx));
    Value projInit = fillF32(
        b, loc, emptyWithLeading(b, loc, x, lead, {n, n + 2}, f32), 0.0);
    proj = linalg::GenericOp::create(
               b, loc, projInit.getType(), ValueRange{x, theta}, projInit,
               {AffineMap::get(rank + 1, 0, xe, ctx),
                AffineMap::get(rank + 1, 0,
                               {getAffineDimExpr(lead + 1, ctx),
                                getAffineDimExpr(lead + 2, ctx)},
                               ctx),
                AffineMap::get(rank + 1, 0, dims(rank), ctx)},
               iteratorList(rank, 1),
               [&](OpBuilder &nb, Location l, ValueRange a) {
                 Value p = arith::MulFOp::create(nb, l, widenToF32(nb, l, a[0]),
                                                 a[1]);
                 linalg::YieldOp::create(
                     nb, l, arith::AddFOp::create(nb, l, a[2], p).getResult());
               })
               .getResult(0);
  }

  // base split into its pre [n], post [n] and res [n, n] parts.
  auto slice = [&](int64_t offset, int64_t size) {
    return tensor::ExtractSliceOp::create(
               b, loc, base, ArrayRef<OpFoldResult>{b.getIndexAttr(offset)},
               ArrayRef<OpFoldResult>{b.getIndexAttr(size)},
               ArrayRef<OpFoldResult>{b.getIndexAttr(1)})
        .getResult();
  };
  Value basePre = slice(0, n), basePost = slice(n, n);
  Value baseRes = tensor::ExpandShapeOp::create(
      b, loc, RankedTensorType::get({n, n}, f32), slice(2 * n, n * n),
      SmallVector<ReassociationIndices>{{0, 1}});

  // One coefficient tensor over loops (lead..., i[, j]): `projCol` is the
  // column of proj it reads, `scaleIdx` its alpha.
  auto build = [&](int64_t extra, Value baseSlice, AffineExpr projCol,
                   int64_t scaleIdx) {
    int64_t loops = lead + extra;
    SmallVector<int64_t> tail(extra, n);
    Value init = emptyWithLeading(b, loc, x, lead, tail, f32);
    SmallVector<AffineExpr> be;
    for (int64_t e = 0; e < extra; ++e)
      be.push_back(getAffineDimExpr(lead + e, ctx));
    SmallVector<Value> ins{baseSlice};
    SmallVector<AffineMap> maps{AffineMap::get(loops, 0, be, ctx)};
    if (dynamic) {
      SmallVector<AffineExpr> pe = dims(lead + 1);
      pe.push_back(projCol);
      ins.append({sq, proj, scale});
      maps.append({AffineMap::get(loops, 0, dims(lead + 1), ctx),
                   AffineMap::get(loops, 0, pe, ctx),
                   AffineMap::get(
                       loops, 0, {getAffineConstantExpr(scaleIdx, ctx)}, ctx)});
    }
    maps.push_back(b.getMultiDimIdentityMap(loops));
    return linalg::GenericOp::create(
               b, loc, init.getType(), ins, init, maps, iteratorList(loops, 0),
               [&](OpBuilder &nb, Location l, ValueRange a) {
                 Value result = a[0];
                 if (dynamic) {
                   // r = rsqrt(mean_c x^2 + eps); a * tanh(r * proj) + base
                   Value invC = arith::ConstantOp::create(
                       nb, l, nb.getF32FloatAttr(1.0f / c));
                   Value eps = arith::ConstantOp::create(
                       nb, l, nb.getF32FloatAttr(kRmsEps));
                   Value ms = arith::AddFOp::create(
                       nb, l, arith::MulFOp::create(nb, l, a[1], invC), eps);
                   Value r = math::RsqrtOp::create(nb, l, ms);
                   Value t = math::TanhOp::create(
                       nb, l, arith::MulFOp::create(nb, l, a[2], r));
                   result = arith::AddFOp::create(
                       nb, l, arith::MulFOp::create(nb, l, a[3], t), a[0]);
                 }
                 linalg::YieldOp::create(nb, l, result);
               })
        .getResult(0);
  };
  AffineExpr j = getAffineDimExpr(lead + 1, ctx);
  Coefficients co;
  co.pre = build(1, basePre, getAffineConstantExpr(0, ctx), 0);
  co.post = build(1, basePost, getAffineConstantExpr(1, ctx), 1);
  co.comb = build(2, baseRes, j + 2, 2);
  return co;
}

/// sum_i w[i] x[i] over the streams of `x` [..., n, C], in f32 with a
/// pairwise (tree) sum, rounded once to `type`'s element type. `weights`
/// [..., n] f32 are per-token weights; without them the result is the mean
/// (the sum times 1/n). With identical streams and n a power of two both
/// are exact: each level of the tree doubles exactly, and 1/n is a power of
/// two (a stream-by-stream sum is not, from n = 8 on).
Value ChainRewriter::combineStreams(Location loc, Value x, Type type,
                                    Value weights) {
  MLIRContext *ctx = b.getContext();
  auto t = cast<RankedTensorType>(type);
  int64_t rank = t.getRank(), lead = rank - 1, n = cfg.n;
  Type elem = t.getElementType();
  Value init = emptyWithLeading(b, loc, x, lead, {t.getShape().back()}, elem);
  // Loops (lead..., c): stream i is read at (lead..., i, c), its weight at
  // (lead..., i).
  auto readAt = [&](int64_t i, bool withC) {
    SmallVector<AffineExpr> e;
    for (int64_t d = 0; d < lead; ++d)
      e.push_back(getAffineDimExpr(d, ctx));
    e.push_back(getAffineConstantExpr(i, ctx));
    if (withC)
      e.push_back(getAffineDimExpr(lead, ctx));
    return AffineMap::get(rank, 0, e, ctx);
  };
  SmallVector<Value> inputs;
  SmallVector<AffineMap> maps;
  for (int64_t i = 0; i < n; ++i) {
    inputs.push_back(x);
    maps.push_back(readAt(i, /*withC=*/true));
  }
  for (int64_t i = 0; weights && i < n; ++i) {
    inputs.push_back(weights);
    maps.push_back(readAt(i, /*withC=*/false));
  }
  maps.push_back(b.getMultiDimIdentityMap(rank));
  return buildGeneric(
      b, loc, inputs, init, maps, iteratorList(rank),
      [&](OpBuilder &nb, Location l, ValueRange a) {
        SmallVector<Value> terms;
        for (int64_t i = 0; i < n; ++i) {
          Value v = widenToF32(nb, l, a[i]);
          terms.push_back(
              weights ? arith::MulFOp::create(nb, l, v, a[n + i]).getResult()
                      : v);
        }
        while (terms.size() > 1) {
          SmallVector<Value> next;
          for (size_t i = 0; i < terms.size(); i += 2)
            next.push_back(
                i + 1 < terms.size()
                    ? arith::AddFOp::create(nb, l, terms[i], terms[i + 1])
                          .getResult()
                    : terms[i]);
          terms = std::move(next);
        }
        Value v = terms.front();
        if (!weights && n > 1)
          v = arith::MulFOp::create(nb, l, v, f32Const(nb, l, 1.0 / n));
        if (!elem.isF32())
          v = arith::TruncFOp::create(nb, l, elem, v);
        return v;
      });
}

/// The learned exit's weights [..., n] (f32) for the chain ending in `x`
/// [..., n, C], computed like `pre` in each mode, from the chain's own
/// parameters `exit<k>.*`:
///   mhc:       w = sigmoid(alpha * (v . fn[i]) * rsqrt(|v|^2 / nC + eps) +
///              base[i]) + eps (DeepSeek-V4's head mix; v = x flattened,
///              fn f32[n, nC], scale f32[1] = alpha, base f32[n])
///   hc:        w[i] = alpha * tanh(rsqrt(mean_c x[i]^2 + eps) theta . x[i]) +
///              base[i] (theta f32[1, C])
///   static-hc: w = base.
/// Initialisation: mhc as pre (fn ~ U(-0.01, 0.01), alpha 0.01, sigmoid(base)
/// = 1/n); hc and static-hc base = 1/n, and with init=identity theta = 0,
/// so that w = 1/n exactly and the exit is the mean.
Value ChainRewriter::exitWeights(Location loc, Value x, int64_t chainIndex) {
  MLIRContext *ctx = b.getContext();
  int64_t n = cfg.n;
  auto xType = cast<RankedTensorType>(x.getType());
  int64_t rank = xType.getRank(), lead = rank - 2;
  int64_t c = xType.getShape().back();
  auto f32 = b.getF32Type();
  std::string prefix = "exit" + std::to_string(chainIndex);
  auto dims = [&](int64_t from, int64_t count) {
    SmallVector<AffineExpr> e;
    for (int64_t i = from; i < from + count; ++i)
      e.push_back(getAffineDimExpr(i, ctx));
    return e;
  };
  bool mhcMode = cfg.mode == Mode::MHC;
  SmallVector<float> base(n, mhcMode ? (n > 1 ? -std::log(float(n - 1)) : 6.0f)
                                     : 1.0f / n);
  auto baseParam = [&] { return param(loc, prefix + ".base", {n}, base); };
  // Loops (lead..., i) for the weights.
  SmallVector<AffineExpr> leadDims = dims(0, lead);
  auto weightsOf = [&](ValueRange ins, ArrayRef<AffineMap> inMaps,
                       GenericBodyFn body) {
    Value init = emptyWithLeading(b, loc, x, lead, {n}, f32);
    SmallVector<AffineMap> maps(inMaps);
    maps.push_back(b.getMultiDimIdentityMap(lead + 1));
    return buildGeneric(b, loc, ins, init, maps, iteratorList(lead + 1), body);
  };
  AffineMap perStream =
      AffineMap::get(lead + 1, 0, {getAffineDimExpr(lead, ctx)}, ctx);
  if (cfg.mode == Mode::StaticHC)
    return weightsOf({baseParam()}, {perStream},
                     [](OpBuilder &, Location, ValueRange a) { return a[0]; });

  SplitMix rng(0x65786974ull * 1000003ull + static_cast<uint64_t>(chainIndex));
  auto random = [&](int64_t count) { return randomValues(rng, count); };
  AffineMap scalar =
      AffineMap::get(lead + 1, 0, {getAffineConstantExpr(0, ctx)}, ctx);
  if (mhcMode) {
    Value fn = param(loc, prefix + ".fn", {n, n * c}, random(n * n * c));
    Value scale = param(loc, prefix + ".scale", {1}, {kAlpha});
    Value baseV = baseParam();
    // Loops (lead..., i, c): |v|^2 per token.
    Value sqInit =
        fillF32(b, loc, emptyWithLeading(b, loc, x, lead, {}, f32), 0.0);
    Value sq = buildGeneric(
        b, loc, x, sqInit,
        {b.getMultiDimIdentityMap(rank),
         AffineMap::get(rank, 0, leadDims, ctx)},
        iteratorList(lead, 2), [&](OpBuilder &nb, Location l, ValueRange a) {
          Value v = widenToF32(nb, l, a[0]);
          return arith::AddFOp::create(nb, l, a[1],
                                       arith::MulFOp::create(nb, l, v, v))
              .getResult();
        });
    // Loops (lead..., j, i, c): proj[j] = sum_{i,c} x[i, c] fn[j, i*C + c].
    SmallVector<AffineExpr> xe = dims(0, lead);
    xe.append(
        {getAffineDimExpr(lead + 1, ctx), getAffineDimExpr(lead + 2, ctx)});
    SmallVector<AffineExpr> pe = dims(0, lead + 1);
    Value projInit =
        fillF32(b, loc, emptyWithLeading(b, loc, x, lead, {n}, f32), 0.0);
    Value proj = buildGeneric(
        b, loc, ValueRange{x, fn}, projInit,
        {AffineMap::get(rank + 1, 0, xe, ctx),
         AffineMap::get(
             rank + 1, 0,
             {getAffineDimExpr(lead, ctx), getAffineDimExpr(lead + 1, ctx) * c +
                                               getAffineDimExpr(lead + 2, ctx)},
             ctx),
         AffineMap::get(rank + 1, 0, pe, ctx)},
        iteratorList(lead + 1, 2),
        [&](OpBuilder &nb, Location l, ValueRange a) {
          Value p = arith::MulFOp::create(nb, l, widenToF32(nb, l, a[0]), a[1]);
          return arith::AddFOp::create(nb, l, a[2], p).getResult();
        });
    AffineMap perToken = AffineMap::get(lead + 1, 0, leadDims, ctx);
    return weightsOf(
        {sq, proj, scale, baseV},
        {perToken, b.getMultiDimIdentityMap(lead + 1), scalar, perStream},
        [&](OpBuilder &nb, Location l, ValueRange a) {
          Value ms = arith::AddFOp::create(
              nb, l,
              arith::MulFOp::create(nb, l, a[0],
                                    f32Const(nb, l, 1.0 / (n * c))),
              f32Const(nb, l, kRmsEps));
          Value mix = arith::MulFOp::create(nb, l, a[1],
                                            math::RsqrtOp::create(nb, l, ms));
          Value act = arith::AddFOp::create(
              nb, l, arith::MulFOp::create(nb, l, mix, a[2]), a[3]);
          return arith::AddFOp::create(nb, l, sigmoidF32(nb, l, act),
                                       f32Const(nb, l, kPreEps))
              .getResult();
        });
  }
  // hc: per stream i, r = rsqrt(mean_c x[i]^2 + eps), p = theta . x[i].
  Value theta = param(loc, prefix + ".theta", {1, c}, random(c));
  Value scale = param(loc, prefix + ".scale", {1}, {kAlpha});
  Value baseV = baseParam();
  SmallVector<AffineExpr> xe = dims(0, lead + 2);
  Value sqInit =
      fillF32(b, loc, emptyWithLeading(b, loc, x, lead, {n}, f32), 0.0);
  Value projInit =
      fillF32(b, loc, emptyWithLeading(b, loc, x, lead, {n}, f32), 0.0);
  AffineMap xMap = AffineMap::get(rank, 0, xe, ctx);
  AffineMap outMap = AffineMap::get(rank, 0, dims(0, lead + 1), ctx);
  Value sq =
      buildGeneric(b, loc, x, sqInit, {xMap, outMap}, iteratorList(lead + 1, 1),
                   [&](OpBuilder &nb, Location l, ValueRange a) {
                     Value v = widenToF32(nb, l, a[0]);
                     return arith::AddFOp::create(
                                nb, l, a[1], arith::MulFOp::create(nb, l, v, v))
                         .getResult();
                   });
  Value proj = buildGeneric(
      b, loc, ValueRange{x, theta}, projInit,
      {xMap,
       AffineMap::get(
           rank, 0,
           {getAffineConstantExpr(0, ctx), getAffineDimExpr(lead + 1, ctx)},
           ctx),
       outMap},
      iteratorList(lead + 1, 1), [&](OpBuilder &nb, Location l, ValueRange a) {
        Value p = arith::MulFOp::create(nb, l, widenToF32(nb, l, a[0]), a[1]);
        return arith::AddFOp::create(nb, l, a[2], p).getResult();
      });
  AffineMap id = b.getMultiDimIdentityMap(lead + 1);
  return weightsOf(
      {sq, proj, scale, baseV}, {id, id, scalar, perStream},
      [&](OpBuilder &nb, Location l, ValueRange a) {
        Value ms = arith::AddFOp::create(
            nb, l, arith::MulFOp::create(nb, l, a[0], f32Const(nb, l, 1.0 / c)),
            f32Const(nb, l, kRmsEps));
        Value r = math::RsqrtOp::create(nb, l, ms);
        Value t =
            math::TanhOp::create(nb, l, arith::MulFOp::create(nb, l, a[1], r));
        return arith::AddFOp::create(
                   nb, l, arith::MulFOp::create(nb, l, a[2], t), a[3])
            .getResult();
      });
}

/// Every widened stream of the chain (its shape can change across reshapes)
/// and its largest parameter (fn: M x n*C, or HC's theta) must be
/// representable, and small enough to write out with params=constants.
LogicalResult ChainRewriter::checkSizes(ArrayRef<ResidualBlock> chain) {
  int64_t n = cfg.n;
  int64_t limit =
      cfg.paramsAsArguments ? kMaxTensorElements : kMaxConstantElements;
  auto check = [&](Value stream, Operation *at) -> LogicalResult {
    auto type = cast<RankedTensorType>(stream.getType());
    int64_t c = type.getShape().back(), wide = n, param = 0;
    for (int64_t d : type.getShape())
      if (!ShapedType::isDynamic(d) && llvm::MulOverflow(wide, d, wide))
        wide = kMaxTensorElements + 1;
    if (wide <= kMaxTensorElements) // then n * c cannot overflow
      param = cfg.mode == Mode::HC         ? (n + 2) * c
              : cfg.mode == Mode::StaticHC ? numMixes(n)
                                           : kMaxTensorElements + 1;
    if (cfg.mode == Mode::MHC && wide <= kMaxTensorElements &&
        llvm::MulOverflow(numMixes(n), n * c, param))
      param = kMaxTensorElements + 1;
    if (wide <= kMaxTensorElements && param <= limit)
      return success();
    return at->emitError("mhc-hyperconnect: ")
           << n << " streams of " << type
           << " give a stream or a parameter too large (at most " << limit
           << " elements per parameter"
           << (cfg.paramsAsArguments ? "" : " with params=constants")
           << ", 2^48 per tensor)";
  };
  for (const ResidualBlock &blk : chain) {
    if (failed(check(blk.stream, blk.add)))
      return failure();
    for (Operation *op : blk.path)
      if (failed(check(op->getResult(0), blk.add)))
        return failure();
  }
  return success();
}

LogicalResult ChainRewriter::rewrite(ArrayRef<ResidualBlock> chain) {
  if (failed(checkSizes(chain)))
    return failure();
  Block *top = &func.getBody().front();
  auto ownerOf = [&](OpOperand &use) {
    return top->findAncestorOpInBlock(*use.getOwner());
  };

  Value start = chain.front().stream;
  if (isa<BlockArgument>(start))
    b.setInsertionPointToStart(top);
  else
    b.setInsertionPointAfter(start.getDefiningOp());
  Value wide =
      ExpandOp::create(b, start.getLoc(), widen(start.getType(), cfg.n), start,
                       static_cast<uint64_t>(cfg.n))
          .getResult();

  for (size_t k = 0; k < chain.size(); ++k) {
    const ResidualBlock &blk = chain[k];
    Location loc = blk.add->getLoc();
    // The coefficients read the stream where F reads it: at the stream value
    // itself, or (across a reshape) after the last reshape.
    int64_t layer = nextLayer++;
    Coefficients co;
    if (blk.coeffAt < 0)
      co = coefficients(loc, wide, layer, k);
    auto inBranch = [&](OpOperand &use) {
      Operation *o = ownerOf(use);
      return o && blk.body.contains(o);
    };
    // `v` (a stream value, `w` its widened form) loses its F uses to
    // pre_apply; past the chain's start, v itself disappears, so every other
    // reader but `next` (the op continuing the chain) gets the streams' mean.
    auto reroute = [&](Value v, Value w, Operation *next) {
      if (llvm::any_of(v.getUses(), inBranch)) {
        Value u = PreApplyOp::create(b, loc, v.getType(), w, co.pre);
        v.replaceUsesWithIf(u, inBranch);
      }
      if (k == 0)
        return;
      // Size queries read the widened stream, whose token dims are the same
      // ([..., C] -> [..., n, C]).
      int64_t rank = cast<RankedTensorType>(v.getType()).getRank();
      for (OpOperand &use : llvm::make_early_inc_range(v.getUses())) {
        auto dim = dyn_cast<tensor::DimOp>(use.getOwner());
        std::optional<int64_t> index =
            dim ? dim.getConstantIndex() : std::nullopt;
        if (!index)
          continue;
        OpBuilder db(dim);
        dim.replaceAllUsesWith(
            tensor::DimOp::create(db, dim.getLoc(), w,
                                  *index < rank - 1 ? *index : *index + 1)
                .getResult());
        dim.erase();
      }
      auto other = [&](OpOperand &use) { return ownerOf(use) != next; };
      if (llvm::any_of(v.getUses(), other)) {
        Value mean = meanOfStreams(loc, w, v.getType());
        v.replaceUsesWithIf(mean, other);
      }
    };
    Operation *first = blk.path.empty() ? blk.add : blk.path.front();
    reroute(blk.stream, wide, first);
    for (auto [p, op] : llvm::enumerate(blk.path)) {
      b.setInsertionPointAfter(op);
      wide = replayView(b, op, wide, cfg.n);
      if (static_cast<int64_t>(p) == blk.coeffAt)
        co = coefficients(loc, wide, layer, k);
      reroute(op->getResult(0), wide,
              p + 1 < blk.path.size() ? blk.path[p + 1] : blk.add);
    }
    b.setInsertionPoint(blk.add);
    wide = PostResOp::create(b, loc, widen(blk.result.getType(), cfg.n),
                             blk.branch, wide, co.post, co.comb)
               .getResult();
  }
  // The chain's end: everything reading the last result reads the mean of
  // the streams, or with exit=learned their learned mix.
  const ResidualBlock &last = chain.back();
  Location endLoc = last.add->getLoc();
  Value weights =
      cfg.learnedExit ? exitWeights(endLoc, wide, nextChain) : Value();
  ++nextChain;
  Value exit = combineStreams(endLoc, wide, last.result.getType(), weights);
  Value lastResult = last.result;
  lastResult.replaceAllUsesWith(exit);

  // Erase the adds and the conversions they made dead, last first.
  bool allErased = true;
  for (const ResidualBlock &blk : llvm::reverse(chain)) {
    if (!blk.add->use_empty()) {
      allErased = false;
      blk.add->emitError("mhc-hyperconnect: internal error: the residual add "
                         "still has users after the rewrite");
      continue;
    }
    SmallVector<Operation *> dead{blk.add};
    dead.append(blk.path.rbegin(), blk.path.rend());
    SmallVector<Value> inits;
    if (auto dps = dyn_cast<DestinationStyleOpInterface>(blk.add))
      for (Value v : dps.getDpsInits())
        inits.push_back(v);
    for (Operation *op : dead) {
      if (!op->use_empty())
        continue;
      if (op != blk.add)
        if (auto dps = dyn_cast<DestinationStyleOpInterface>(op))
          for (Value v : dps.getDpsInits())
            inits.push_back(v);
      op->erase();
    }
    for (Value v : inits)
      if (auto empty = v.getDefiningOp<tensor::EmptyOp>())
        if (empty->use_empty())
          empty->erase();
  }
  return success(allErased);
}

struct MHCHyperConnectPass
    : mhc::impl::MHCHyperConnectBase<MHCHyperConnectPass> {
  using MHCHyperConnectBase::MHCHyperConnectBase;

  /// Checks the options (the enum ones are checked by their parser); emits
  /// an error and returns failure on bad ones.
  LogicalResult parseOptions(Config &cfg) {
    ModuleOp module = getOperation();
    if (streams < 1 || streams > kMaxStreams)
      return module.emitError("mhc-hyperconnect: streams must be in [1, ")
             << kMaxStreams << "], got " << static_cast<int64_t>(streams);
    if (iterations < 1)
      return module.emitError("mhc-hyperconnect: iterations must be >= 1, got ")
             << static_cast<int64_t>(iterations);
    if (minBlocks < 1)
      return module.emitError("mhc-hyperconnect: min-blocks must be >= 1, got ")
             << static_cast<int64_t>(minBlocks);
    cfg.n = streams;
    cfg.iterations = iterations;
    cfg.mode = mode;
    cfg.init = init;
    cfg.paramsAsArguments = params == HyperConnectParams::Arguments;
    cfg.learnedExit = exit == HyperConnectExit::Learned;
    if (cfg.mode == Mode::MHC && cfg.init == Init::Identity)
      return module.emitError(
          "mhc-hyperconnect: init=identity needs mode=hc or mode=static-hc: "
          "mode=mhc's sigmoid and Sinkhorn cannot represent a one-hot pre or "
          "an identity comb exactly");
    return success();
  }

  /// True if an op of one chain (an add or a view on its path) lies in the
  /// branch of a block of another chain. Rewriting the inner chain would
  /// then change the outer one's branch, so chains are rewritten one at a
  /// time with a fresh analysis in between (rare: an inner residual chain
  /// inside a block).
  static bool chainsNest(const ChainAnalysis &analysis) {
    DenseMap<Operation *, size_t> chainOf;
    for (auto [i, chain] : llvm::enumerate(analysis.chains))
      for (const ResidualBlock &blk : chain) {
        chainOf[blk.add] = i;
        for (Operation *p : blk.path)
          chainOf[p] = i;
      }
    for (auto [i, chain] : llvm::enumerate(analysis.chains))
      for (const ResidualBlock &blk : chain)
        for (Operation *op : blk.body) {
          auto it = chainOf.find(op);
          if (it != chainOf.end() && it->second != i)
            return true;
        }
    return false;
  }

  void runOnOperation() override {
    Config cfg;
    if (failed(parseOptions(cfg)))
      return signalPassFailure();
    ModuleOp module = getOperation();
    for (auto func : llvm::to_vector(module.getOps<func::FuncOp>())) {
      if (func.isExternal())
        continue;
      if (failed(runOnFunction(func, cfg)))
        return signalPassFailure();
    }
    // Replayed reshapes copy their sizes; keep --canonicalize, the usual
    // next step, off MLIR 22's crash (ExpandShapeRepair.h).
    repairExpandShapes(module);
  }

  /// What happened in one function, for the summary remark.
  struct Summary {
    uint64_t ops = 0, residualAdds = 0, convertedAdds = 0, chains = 0,
             steps = 0;
  };

  LogicalResult runOnFunction(func::FuncOp func, const Config &cfg) {
    Summary summary;
    func.walk([&](Operation *) { ++summary.ops; });
    ChainAnalysis analysis = analyzeFunction(func, minBlocks);
    summary.steps += analysis.steps;
    summary.residualAdds = analysis.residualAdds;
    if (analysis.chains.empty()) {
      report(func, analysis, {});
      reportSummary(func, summary);
      return success();
    }
    if (cfg.paramsAsArguments &&
        !SymbolTable::symbolKnownUseEmpty(func, getOperation()))
      return func.emitError("mhc-hyperconnect: @")
             << func.getSymName()
             << " has callers and params=arguments would change its "
                "signature; use params=constants or rewrite the callee alone";

    ChainRewriter rewriter(func, cfg);
    DenseSet<Type> convertedTypes;
    auto rewriteChain = [&](ArrayRef<ResidualBlock> chain) {
      summary.convertedAdds += chain.size();
      ++summary.chains;
      for (const ResidualBlock &blk : chain)
        convertedTypes.insert(blk.stream.getType());
      return rewriter.rewrite(chain);
    };
    if (!chainsNest(analysis)) {
      // The usual case: one analysis serves every chain. Report first: the
      // rewrite erases ops the analysis points at (never a skipped add).
      for (const std::vector<ResidualBlock> &chain : analysis.chains)
        for (const ResidualBlock &blk : chain)
          convertedTypes.insert(blk.stream.getType());
      report(func, analysis, convertedTypes);
      for (const std::vector<ResidualBlock> &chain : analysis.chains)
        if (failed(rewriteChain(chain)))
          return failure();
    } else {
      while (!analysis.chains.empty()) {
        if (failed(rewriteChain(analysis.chains.front())))
          return failure();
        analysis = analyzeFunction(func, minBlocks);
        summary.steps += analysis.steps;
      }
      report(func, analysis, convertedTypes);
    }
    rewriter.finishSignature();
    reportSummary(func, summary);
    return success();
  }

  /// Says why adds were left alone. Residual adds (x + F(x), F not
  /// elementwise) left alone get one warning per function, with a note per
  /// add, when the function looks like a residual network that was not fully
  /// converted: their stream has the type of a converted chain's, or nothing
  /// was converted and at least two share the type. With remarks=true every
  /// other add left alone gets a remark.
  void report(func::FuncOp func, const ChainAnalysis &analysis,
              const DenseSet<Type> &convertedTypes) {
    DenseMap<Type, unsigned> residualByType;
    for (const SkippedAdd &s : analysis.skipped)
      if (s.residual)
        ++residualByType[s.streamType];
    auto warned = [&](const SkippedAdd &s) {
      return s.residual && (convertedTypes.contains(s.streamType) ||
                            (convertedTypes.empty() &&
                             residualByType.lookup(s.streamType) >= 2));
    };
    unsigned count = llvm::count_if(analysis.skipped, warned);
    if (count > 0) {
      InFlightDiagnostic diag = func.emitWarning("mhc-hyperconnect: @")
                                << func.getSymName() << ": " << count
                                << " residual add(s) left alone";
      for (const SkippedAdd &s : analysis.skipped)
        if (warned(s))
          diag.attachNote(s.add->getLoc()) << "left alone: " << s.why;
    }
    if (!remarks)
      return;
    for (const SkippedAdd &s : analysis.skipped)
      if (!warned(s))
        s.add->emitRemark("mhc-hyperconnect: add left alone: ") << s.why;
  }

  /// With remarks=true, once the function is done: what was found and
  /// converted, and the analysis' work (a test checks it stays linear).
  void reportSummary(func::FuncOp func, const Summary &summary) {
    if (!remarks)
      return;
    func.emitRemark("mhc-hyperconnect: @")
        << func.getSymName() << ": " << summary.residualAdds
        << " residual add(s) found, " << summary.convertedAdds
        << " converted in " << summary.chains
        << " chain(s); the analysis visited " << summary.steps
        << " ops and uses in a function of " << summary.ops << " ops";
  }
};

} // namespace
