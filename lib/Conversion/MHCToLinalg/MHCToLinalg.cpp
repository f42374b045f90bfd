//===- MHCToLinalg.cpp - lower mhc ops to linalg on tensors ---------------===//
//
// The portable reference lowering. Every mhc op becomes a few linalg.generic
// ops on tensors whose bodies use arith and math:
//
//  * activations (bf16/f16/f32) are widened to f32 with arith.extf where they
//    are read, every sum accumulates in an f32 tensor, and the result is
//    rounded to the activation type with arith.truncf exactly once per output
//    element (a separate elementwise generic after a reduction);
//  * the loop nest of every generic starts with the op's leading (token)
//    dims, static or dynamic; tensor.empty takes the dynamic sizes from
//    tensor.dim of the op's main input;
//  * numerics follow the spec literally (eps placement, softmax with the row
//    max subtracted, Sinkhorn's order of normalisations).
//
// mhc.fused groups are inlined first: they only matter to the GPU path.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mhc/Utils/ExpandShapeRepair.h"
#include "mhc/Utils/LinalgBuilders.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/DialectConversion.h"

#include <limits>

namespace mlir::mhc {
#define GEN_PASS_DEF_CONVERTMHCTOLINALG
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;

using utils::IteratorType;

//===----------------------------------------------------------------------===//
// Building blocks
//===----------------------------------------------------------------------===//

namespace {
/// The iteration space of one linalg.generic: the op's `lead` token dims
/// (d0 .. d{lead-1}) followed by op-specific loops. The token loops are
/// parallel, except in a parameter gradient, which sums over all tokens.
struct LoopNest {
  MLIRContext *ctx;
  unsigned lead;
  SmallVector<IteratorType> inner; // iterator kinds of the op-specific loops
  IteratorType tokens = IteratorType::parallel;

  unsigned numLoops() const { return lead + inner.size(); }

  /// The k-th op-specific loop (k = 0 is the first one after the tokens).
  AffineExpr loop(unsigned k) const { return getAffineDimExpr(lead + k, ctx); }

  /// Indexing map of a per-token operand: (tokens..., trailing...).
  AffineMap perToken(ArrayRef<AffineExpr> trailing) const {
    SmallVector<AffineExpr> exprs;
    for (unsigned d = 0; d < lead; ++d)
      exprs.push_back(getAffineDimExpr(d, ctx));
    llvm::append_range(exprs, trailing);
    return AffineMap::get(numLoops(), 0, exprs, ctx);
  }

  /// Indexing map of an operand shared by all tokens (a weight).
  AffineMap shared(ArrayRef<AffineExpr> exprs) const {
    return AffineMap::get(numLoops(), 0, exprs, ctx);
  }

  SmallVector<IteratorType> iterators() const {
    SmallVector<IteratorType> all(lead, tokens);
    llvm::append_range(all, inner);
    return all;
  }
};

} // namespace

/// One linalg.generic over `nest` with a single output `init`.
static Value buildGeneric(OpBuilder &b, Location loc, const LoopNest &nest,
                          ValueRange inputs, Value init,
                          ArrayRef<AffineMap> maps, GenericBodyFn body) {
  return mhc::buildGeneric(b, loc, inputs, init, maps, nest.iterators(), body);
}

/// An f32 tensor with the leading dims of `like` and the given trailing
/// shape, filled with `value` (the neutral element of a reduction).
static Value filledF32(OpBuilder &b, Location loc, RankedTensorType like,
                       unsigned lead, ArrayRef<int64_t> trailing, Value leader,
                       double value) {
  SmallVector<int64_t> shape(like.getShape().take_front(lead));
  llvm::append_range(shape, trailing);
  auto type = RankedTensorType::get(shape, b.getF32Type());
  return fillF32(b, loc, emptyTensor(b, loc, type, leader), value);
}

/// Rounds an f32 tensor to the element type of `resultType` (one truncf per
/// element); an f32 result is the accumulator itself.
static Value roundToElementType(OpBuilder &b, Location loc, Value acc,
                                RankedTensorType resultType, Value leader) {
  Type elem = resultType.getElementType();
  if (elem.isF32())
    return acc;
  LoopNest nest{b.getContext(), 0, {}};
  nest.inner.assign(resultType.getRank(), IteratorType::parallel);
  AffineMap id =
      AffineMap::getMultiDimIdentityMap(nest.numLoops(), b.getContext());
  return buildGeneric(
      b, loc, nest, acc, emptyTensor(b, loc, resultType, leader), {id, id},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        return arith::TruncFOp::create(nb, nloc, elem, args[0]);
      });
}

/// Number of leading (token) dims of a `[..., trailing]` type.
static unsigned leadingRank(Value v, unsigned trailing) {
  return cast<RankedTensorType>(v.getType()).getRank() - trailing;
}

//===----------------------------------------------------------------------===//
// expand / collapse
//===----------------------------------------------------------------------===//

/// x[..., i, c] = h[..., c].
static Value lowerExpand(OpBuilder &b, ExpandOp op) {
  Location loc = op.getLoc();
  RankedTensorType resultType = op.getType();
  LoopNest nest{b.getContext(),
                leadingRank(op.getInput(), 1),
                {IteratorType::parallel, IteratorType::parallel}}; // i, c
  AffineExpr i = nest.loop(0), c = nest.loop(1);
  return buildGeneric(
      b, loc, nest, op.getInput(),
      emptyTensor(b, loc, resultType, op.getInput()),
      {nest.perToken({c}), nest.perToken({i, c})},
      [](OpBuilder &, Location, ValueRange args) { return args[0]; });
}

/// out[..., c] = sum_i w[..., i] * x[..., i, c] in f32, rounded to x's
/// element type; w = 1 where `weights` is null (collapse).
static Value sumStreams(OpBuilder &b, Location loc, Value x, Value weights,
                        RankedTensorType resultType) {
  int64_t c = resultType.getShape().back();
  LoopNest nest{b.getContext(),
                leadingRank(x, 2),
                {IteratorType::parallel, IteratorType::reduction}}; // c, i
  AffineExpr cl = nest.loop(0), il = nest.loop(1);
  Value zero = filledF32(b, loc, resultType, nest.lead, {c}, x, 0.0);
  SmallVector<Value> inputs{x};
  SmallVector<AffineMap> maps{nest.perToken({il, cl})};
  if (weights) {
    inputs.push_back(weights);
    maps.push_back(nest.perToken({il}));
  }
  maps.push_back(nest.perToken({cl}));
  Value sum =
      buildGeneric(b, loc, nest, inputs, zero, maps,
                   [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
                     Value term = widenToF32(nb, nloc, args[0]);
                     if (args.size() == 3) // weighted
                       term = arith::MulFOp::create(nb, nloc, args[1], term);
                     return arith::AddFOp::create(nb, nloc, args.back(), term);
                   });
  return roundToElementType(b, loc, sum, resultType, x);
}

/// h[..., c] = sum_i x[..., i, c]: pre_apply with every weight 1.
static Value lowerCollapse(OpBuilder &b, CollapseOp op) {
  return sumStreams(b, op.getLoc(), op.getInput(), /*weights=*/nullptr,
                    op.getType());
}

//===----------------------------------------------------------------------===//
// norm_project
//===----------------------------------------------------------------------===//

/// The scale of the overflow-free sum of squares: (2^-96 v)^2 summed over
/// n*C <= 2^48 elements of at most 2^128 stays below 2^112, and when the
/// plain sum overflows (>= 2^128) the scaled one is >= 2^-64, a normal f32.
/// A power of two: the scaled values are exact.
static constexpr double kOverflowScale = 0x1p-96;

/// sqrsum[...] = sum over the dims after the `lead` token dims (i and c of
/// x [..., i, c], or c of u [..., c]) of (scale * x)^2, in f32.
static Value sumOfSquares(OpBuilder &b, Location loc, Value x,
                          RankedTensorType like, unsigned lead,
                          double scale = 1.0) {
  unsigned trailing = cast<RankedTensorType>(x.getType()).getRank() - lead;
  LoopNest nest{b.getContext(), lead,
                SmallVector<IteratorType>(trailing, IteratorType::reduction)};
  SmallVector<AffineExpr> all;
  for (unsigned k = 0; k < trailing; ++k)
    all.push_back(nest.loop(k));
  Value zero = filledF32(b, loc, like, lead, {}, x, 0.0);
  return buildGeneric(
      b, loc, nest, x, zero, {nest.perToken(all), nest.perToken({})},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value v = widenToF32(nb, nloc, args[0]);
        if (scale != 1.0)
          v = arith::MulFOp::create(nb, nloc, v, f32Const(nb, nloc, scale));
        return arith::AddFOp::create(nb, nloc, args[1],
                                     arith::MulFOp::create(nb, nloc, v, v));
      });
}

/// r = rsqrt(sqrsum / K + eps) from a token's sum of squares, evaluated so
/// that it cannot overflow: when the f32 sqrsum is +inf (elements from about
/// 2^64 / sqrt(K) up, e.g. 1e19 in bf16), r = 2^-96 rsqrt(scaled / K) from
/// the sum of the squares scaled by 2^-96 (eps is far below that sum's
/// rounding); otherwise the spec's formula, bit for bit. A non-finite
/// element makes scaled infinite too, and r = 0 then turns mix into NaN.
static Value normFactor(OpBuilder &b, Location loc, Value sqrsum,
                        Value scaled, int64_t k, float eps) {
  Value kf = f32Const(b, loc, static_cast<double>(k));
  Value plain = math::RsqrtOp::create(
      b, loc,
      arith::AddFOp::create(b, loc, arith::DivFOp::create(b, loc, sqrsum, kf),
                            f32Const(b, loc, eps)));
  Value rescued = arith::MulFOp::create(
      b, loc, f32Const(b, loc, kOverflowScale),
      math::RsqrtOp::create(b, loc,
                            arith::DivFOp::create(b, loc, scaled, kf)));
  Value overflowed = arith::CmpFOp::create(
      b, loc, arith::CmpFPredicate::OEQ, sqrsum,
      f32Const(b, loc, std::numeric_limits<double>::infinity()));
  return arith::SelectOp::create(b, loc, overflowed, rescued, plain);
}

/// dot[..., m] = sum_{i,c} x[..., i, c] * fn[m, i*C + c] in f32 (the
/// stream-major flattening, expressed by viewing fn as [M, n, C]).
static Value projectStreams(OpBuilder &b, Location loc, Value x, Value fn,
                            RankedTensorType mixType, unsigned lead) {
  auto xType = cast<RankedTensorType>(x.getType());
  int64_t n = xType.getDimSize(xType.getRank() - 2);
  int64_t c = xType.getShape().back();
  int64_t m = mixType.getShape().back();
  auto fn3Type = RankedTensorType::get({m, n, c}, b.getF32Type());
  Value fn3 = tensor::ExpandShapeOp::create(
      b, loc, fn3Type, fn, SmallVector<ReassociationIndices>{{0}, {1, 2}});

  LoopNest nest{b.getContext(),
                lead,
                {IteratorType::parallel, IteratorType::reduction,
                 IteratorType::reduction}}; // m, i, c
  AffineExpr ml = nest.loop(0), il = nest.loop(1), cl = nest.loop(2);
  Value zero = filledF32(b, loc, mixType, lead, {m}, x, 0.0);
  return buildGeneric(
      b, loc, nest, {x, fn3}, zero,
      {nest.perToken({il, cl}), nest.shared({ml, il, cl}), nest.perToken({ml})},
      [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value prod = arith::MulFOp::create(
            nb, nloc, widenToF32(nb, nloc, args[0]), args[1]);
        return arith::AddFOp::create(nb, nloc, args[2], prod);
      });
}

/// mix = (v @ fn^T) * rsqrt(sum_k v[k]^2 / (n*C) + eps), the factor as
/// normFactor evaluates it.
static Value lowerNormProject(OpBuilder &b, NormProjectOp op) {
  Location loc = op.getLoc();
  Value x = op.getX();
  auto xType = op.getX().getType();
  RankedTensorType mixType = op.getType();
  unsigned lead = leadingRank(x, 2);
  int64_t k = xType.getDimSize(xType.getRank() - 2) * xType.getShape().back();

  Value sqrsum = sumOfSquares(b, loc, x, mixType, lead);
  Value scaled = sumOfSquares(b, loc, x, mixType, lead, kOverflowScale);
  Value dot = projectStreams(b, loc, x, op.getFn(), mixType, lead);

  LoopNest nest{b.getContext(), lead, {IteratorType::parallel}}; // m
  float eps = op.getEps().convertToFloat();
  return buildGeneric(
      b, loc, nest, {dot, sqrsum, scaled}, emptyTensor(b, loc, mixType, x),
      {nest.perToken({nest.loop(0)}), nest.perToken({}), nest.perToken({}),
       nest.perToken({nest.loop(0)})},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value rms = normFactor(nb, nloc, args[1], args[2], k, eps);
        return arith::MulFOp::create(nb, nloc, args[0], rms);
      });
}

//===----------------------------------------------------------------------===//
// split_mixes
//===----------------------------------------------------------------------===//

/// a = mix[..., pos] * scale[group] + base[pos] over the block of the M
/// mixes that starts at `offset` and has the shape of `resultType`'s trailing
/// dims: pos = offset + i (pre, post) or offset + i*n + j (res, row-major).
/// `finish` turns a into the result element. The block is read with
/// tensor.extract at computed positions: it is not a whole dim, so an identity
/// map would infer the wrong loop bound, and an extract_slice is rejected by
/// the verifier when a static token dim is 0.
static Value
scaledMixes(OpBuilder &b, Location loc, SplitMixesOp op,
            RankedTensorType resultType, int64_t offset, int64_t group,
            function_ref<Value(OpBuilder &, Location, Value)> finish) {
  Value mix = op.getMix();
  unsigned lead = leadingRank(mix, 1);
  unsigned trailing = resultType.getRank() - lead;
  int64_t n = resultType.getShape().back();

  LoopNest nest{b.getContext(), lead,
                SmallVector<IteratorType>(trailing, IteratorType::parallel)};
  Value groupIdx = arith::ConstantIndexOp::create(b, loc, group);
  Value scale = tensor::ExtractOp::create(b, loc, op.getScale(), groupIdx);
  AffineMap out =
      AffineMap::getMultiDimIdentityMap(nest.numLoops(), b.getContext());
  return buildGeneric(
      b, loc, nest, ValueRange{}, emptyTensor(b, loc, resultType, mix), {out},
      [&](OpBuilder &nb, Location nloc, ValueRange) -> Value {
        SmallVector<Value> mixIdx;
        for (unsigned d = 0; d < lead; ++d)
          mixIdx.push_back(linalg::IndexOp::create(nb, nloc, d));
        Value pos = linalg::IndexOp::create(nb, nloc, lead);
        if (trailing == 2) {
          Value rowStart = arith::MulIOp::create(
              nb, nloc, pos, arith::ConstantIndexOp::create(nb, nloc, n));
          pos = arith::AddIOp::create(
              nb, nloc, rowStart, linalg::IndexOp::create(nb, nloc, lead + 1));
        }
        pos = arith::AddIOp::create(
            nb, nloc, pos, arith::ConstantIndexOp::create(nb, nloc, offset));
        mixIdx.push_back(pos);
        Value m = tensor::ExtractOp::create(nb, nloc, mix, mixIdx);
        Value bias = tensor::ExtractOp::create(nb, nloc, op.getBase(), pos);
        Value scaled = arith::MulFOp::create(nb, nloc, m, scale);
        return finish(nb, nloc, arith::AddFOp::create(nb, nloc, scaled, bias));
      });
}

/// pre = sigmoid(a[0:n]) + pre_eps, post = sigmoid(a[n:2n]) * post_mult,
/// logits = a[2n:M] as n x n.
static SmallVector<Value> lowerSplitMixes(OpBuilder &b, SplitMixesOp op) {
  Location loc = op.getLoc();
  int64_t n = op.getPre().getType().getShape().back();
  float preEps = op.getPreEps().convertToFloat();
  float postMult = op.getPostMult().convertToFloat();
  Value pre =
      scaledMixes(b, loc, op, op.getPre().getType(), /*offset=*/0, /*group=*/0,
                  [&](OpBuilder &nb, Location nloc, Value a) -> Value {
                    return arith::AddFOp::create(nb, nloc, sigmoidF32(nb, nloc, a),
                                                 f32Const(nb, nloc, preEps));
                  });
  Value post =
      scaledMixes(b, loc, op, op.getPost().getType(), /*offset=*/n, /*group=*/1,
                  [&](OpBuilder &nb, Location nloc, Value a) -> Value {
                    return arith::MulFOp::create(nb, nloc, sigmoidF32(nb, nloc, a),
                                                 f32Const(nb, nloc, postMult));
                  });
  Value logits = scaledMixes(b, loc, op, op.getLogits().getType(),
                             /*offset=*/2 * n, /*group=*/2,
                             [](OpBuilder &, Location, Value a) { return a; });
  return {pre, post, logits};
}

//===----------------------------------------------------------------------===//
// sinkhorn
//===----------------------------------------------------------------------===//

namespace {
/// Which index of P[i][j] a row-wise or column-wise step reduces over.
enum class Axis { Row /* over j */, Column /* over i */ };
} // namespace

/// Loops (tokens, i, j) with `axis` as the reduction.
static LoopNest matrixNest(MLIRContext *ctx, unsigned lead, Axis axis) {
  if (axis == Axis::Row)
    return {ctx, lead, {IteratorType::parallel, IteratorType::reduction}};
  return {ctx, lead, {IteratorType::reduction, IteratorType::parallel}};
}

/// Reduces P[..., i, j] over `axis` into [..., n] starting from `init`
/// (`combine(acc, element)`).
static Value
reduceMatrix(OpBuilder &b, Location loc, Value p, Axis axis, double init,
             function_ref<Value(OpBuilder &, Location, Value, Value)> combine) {
  auto type = cast<RankedTensorType>(p.getType());
  unsigned lead = type.getRank() - 2;
  int64_t n = type.getShape().back();
  LoopNest nest = matrixNest(b.getContext(), lead, axis);
  AffineExpr kept = axis == Axis::Row ? nest.loop(0) : nest.loop(1);
  Value acc = filledF32(b, loc, type, lead, {n}, p, init);
  return buildGeneric(
      b, loc, nest, p, acc,
      {nest.perToken({nest.loop(0), nest.loop(1)}), nest.perToken({kept})},
      [&](OpBuilder &nb, Location nloc, ValueRange args) {
        return combine(nb, nloc, args[1], args[0]);
      });
}

static Value sumMatrix(OpBuilder &b, Location loc, Value p, Axis axis) {
  return reduceMatrix(
      b, loc, p, axis, 0.0,
      [](OpBuilder &nb, Location nloc, Value acc, Value v) -> Value {
        return arith::AddFOp::create(nb, nloc, acc, v);
      });
}

/// out[..., i, j] = f(P[..., i, j], s[..., i or j]) for a per-row or
/// per-column vector s.
static Value
mapWithVector(OpBuilder &b, Location loc, Value p, Value s, Axis axis,
              function_ref<Value(OpBuilder &, Location, Value, Value)> f) {
  auto type = cast<RankedTensorType>(p.getType());
  unsigned lead = type.getRank() - 2;
  LoopNest nest{
      b.getContext(), lead, {IteratorType::parallel, IteratorType::parallel}};
  AffineExpr kept = axis == Axis::Row ? nest.loop(0) : nest.loop(1);
  AffineMap matrix = nest.perToken({nest.loop(0), nest.loop(1)});
  return buildGeneric(b, loc, nest, {p, s}, emptyTensor(b, loc, type, p),
                      {matrix, nest.perToken({kept}), matrix},
                      [&](OpBuilder &nb, Location nloc, ValueRange args) {
                        return f(nb, nloc, args[0], args[1]);
                      });
}

/// P / (sum over `axis` of P + eps).
static Value normalize(OpBuilder &b, Location loc, Value p, Axis axis,
                       float eps) {
  Value sum = sumMatrix(b, loc, p, axis);
  return mapWithVector(
      b, loc, p, sum, axis,
      [&](OpBuilder &nb, Location nloc, Value v, Value s) -> Value {
        Value denom =
            arith::AddFOp::create(nb, nloc, s, f32Const(nb, nloc, eps));
        return arith::DivFOp::create(nb, nloc, v, denom);
      });
}

/// exp(L - row max) and its row sums: the softmax over j is their quotient.
static std::pair<Value, Value> shiftedExps(OpBuilder &b, Location loc,
                                           Value logits) {
  Value rowMax = reduceMatrix(
      b, loc, logits, Axis::Row, -std::numeric_limits<double>::infinity(),
      [](OpBuilder &nb, Location nloc, Value acc, Value v) -> Value {
        return arith::MaximumFOp::create(nb, nloc, acc, v);
      });
  Value exps = mapWithVector(
      b, loc, logits, rowMax, Axis::Row,
      [](OpBuilder &nb, Location nloc, Value v, Value max) -> Value {
        return math::ExpOp::create(nb, nloc,
                                   arith::SubFOp::create(nb, nloc, v, max));
      });
  return {exps, sumMatrix(b, loc, exps, Axis::Row)};
}

/// softmax(L, over j) + eps, with the row max subtracted before exp.
static Value softmaxPlusEps(OpBuilder &b, Location loc, Value logits,
                            float eps) {
  auto [exps, rowSum] = shiftedExps(b, loc, logits);
  return mapWithVector(
      b, loc, exps, rowSum, Axis::Row,
      [&](OpBuilder &nb, Location nloc, Value e, Value s) -> Value {
        return arith::AddFOp::create(nb, nloc,
                                     arith::DivFOp::create(nb, nloc, e, s),
                                     f32Const(nb, nloc, eps));
      });
}

/// An scf.for from `lb` to `ub` (step `one`, the index 1) carrying `p`: one
/// row and one column normalisation per step (the Sinkhorn iterations after
/// the first).
static Value normalizePairs(OpBuilder &b, Location loc, Value p, Value lb,
                            Value ub, Value one, float eps) {
  auto loop = scf::ForOp::create(
      b, loc, lb, ub, one, ValueRange{p},
      [&](OpBuilder &nb, Location nloc, Value, ValueRange iterArgs) {
        Value q = normalize(nb, nloc, iterArgs[0], Axis::Row, eps);
        q = normalize(nb, nloc, q, Axis::Column, eps);
        scf::YieldOp::create(nb, nloc, q);
      });
  return loop.getResult(0);
}

/// Softmax + eps and a column normalisation, then iterations-1 (row, column)
/// pairs in an scf.for carrying P (each iteration yields a new tensor, so
/// one-shot bufferization needs allow-return-allocs-from-loops).
static Value lowerSinkhorn(OpBuilder &b, SinkhornOp op) {
  Location loc = op.getLoc();
  float eps = op.getEps().convertToFloat();
  Value p = softmaxPlusEps(b, loc, op.getLogits(), eps);
  p = normalize(b, loc, p, Axis::Column, eps);
  if (op.getIterations() == 1)
    return p;
  Value lb = arith::ConstantIndexOp::create(b, loc, 1);
  Value ub = arith::ConstantIndexOp::create(b, loc, op.getIterations());
  Value step = arith::ConstantIndexOp::create(b, loc, 1);
  return normalizePairs(b, loc, p, lb, ub, step, eps);
}

//===----------------------------------------------------------------------===//
// pre_apply / post_res
//===----------------------------------------------------------------------===//

/// u[..., c] = sum_i pre[..., i] * x[..., i, c].
static Value lowerPreApply(OpBuilder &b, PreApplyOp op) {
  return sumStreams(b, op.getLoc(), op.getX(), op.getPre(), op.getType());
}

/// x_next[..., j, c] = post[..., j] * y[..., c] + sum_i comb[..., i, j] *
/// x[..., i, c].
static Value lowerPostRes(OpBuilder &b, PostResOp op) {
  Location loc = op.getLoc();
  Value x = op.getX();
  RankedTensorType resultType = op.getType();
  unsigned lead = leadingRank(x, 2);
  int64_t n = resultType.getDimSize(resultType.getRank() - 2);
  int64_t c = resultType.getShape().back();

  // mixed[..., j, c] = sum_i comb[..., i, j] * x[..., i, c], in f32.
  LoopNest mixNest{b.getContext(),
                   lead,
                   {IteratorType::parallel, IteratorType::parallel,
                    IteratorType::reduction}}; // j, c, i
  AffineExpr j = mixNest.loop(0), cl = mixNest.loop(1), i = mixNest.loop(2);
  Value zero = filledF32(b, loc, resultType, lead, {n, c}, x, 0.0);
  Value mixed =
      buildGeneric(b, loc, mixNest, {op.getComb(), x}, zero,
                   {mixNest.perToken({i, j}), mixNest.perToken({i, cl}),
                    mixNest.perToken({j, cl})},
                   [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
                     Value prod = arith::MulFOp::create(
                         nb, nloc, args[0], widenToF32(nb, nloc, args[1]));
                     return arith::AddFOp::create(nb, nloc, args[2], prod);
                   });

  // out = round(post[..., j] * y[..., c] + mixed[..., j, c]).
  LoopNest outNest{b.getContext(),
                   lead,
                   {IteratorType::parallel, IteratorType::parallel}}; // j, c
  AffineExpr oj = outNest.loop(0), oc = outNest.loop(1);
  Type elem = resultType.getElementType();
  return buildGeneric(
      b, loc, outNest, {op.getPost(), op.getY(), mixed},
      emptyTensor(b, loc, resultType, x),
      {outNest.perToken({oj}), outNest.perToken({oc}),
       outNest.perToken({oj, oc}), outNest.perToken({oj, oc})},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value written = arith::MulFOp::create(nb, nloc, args[0],
                                              widenToF32(nb, nloc, args[1]));
        Value sum = arith::AddFOp::create(nb, nloc, written, args[2]);
        if (elem.isF32())
          return sum;
        return arith::TruncFOp::create(nb, nloc, elem, sum);
      });
}

//===----------------------------------------------------------------------===//
// rms_norm
//===----------------------------------------------------------------------===//

/// r[...] = rsqrt(sum_c u[..., c]^2 / C + eps) per token of u [..., C], as
/// normFactor evaluates it (overflow-free, like norm_project's).
static Value rmsFactor(OpBuilder &b, Location loc, Value u, float eps) {
  auto uType = cast<RankedTensorType>(u.getType());
  unsigned lead = leadingRank(u, 1);
  Value sqrsum = sumOfSquares(b, loc, u, uType, lead);
  Value scaled = sumOfSquares(b, loc, u, uType, lead, kOverflowScale);
  LoopNest perToken{b.getContext(), lead, {}};
  AffineMap id = perToken.perToken({});
  return buildGeneric(
      b, loc, perToken, {sqrsum, scaled}, emptyTensor(b, loc,
      cast<RankedTensorType>(sqrsum.getType()), u), {id, id, id},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        return normFactor(nb, nloc, args[0], args[1], uType.getShape().back(),
                          eps);
      });
}

/// out[..., c] = round(u[..., c] * r * weight[c]).
static Value lowerRmsNorm(OpBuilder &b, RmsNormOp op) {
  Location loc = op.getLoc();
  Value u = op.getU();
  RankedTensorType type = op.getType();
  Value r = rmsFactor(b, loc, u, op.getEps().convertToFloat());
  LoopNest nest{b.getContext(), leadingRank(u, 1), {IteratorType::parallel}};
  AffineExpr c = nest.loop(0);
  Type elem = type.getElementType();
  return buildGeneric(
      b, loc, nest, {u, r, op.getWeight()}, emptyTensor(b, loc, type, u),
      {nest.perToken({c}), nest.perToken({}), nest.shared({c}),
       nest.perToken({c})},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value v = arith::MulFOp::create(nb, nloc, widenToF32(nb, nloc, args[0]),
                                        args[1]);
        v = arith::MulFOp::create(nb, nloc, v, widenToF32(nb, nloc, args[2]));
        return elem.isF32() ? v : arith::TruncFOp::create(nb, nloc, elem, v);
      });
}

//===----------------------------------------------------------------------===//
// Gradients (spec section 5)
//===----------------------------------------------------------------------===//

/// `type` with its trailing dims replaced by `trailing` and element type f32
/// (an f32 intermediate with the op's token dims).
static RankedTensorType f32WithTrailing(RankedTensorType type, unsigned lead,
                                        ArrayRef<int64_t> trailing) {
  SmallVector<int64_t> shape(type.getShape().take_front(lead));
  llvm::append_range(shape, trailing);
  return RankedTensorType::get(shape, Float32Type::get(type.getContext()));
}

/// dx, dfn of norm_project: with r = rsqrt(sqrsum/K + eps) and m = v @ fn^T,
/// dm = dmix * r, dS = -(sum_m dmix * m) * r^3 / (2K),
/// dx = dm @ fn + 2 v dS (one rounding), dfn = sum over tokens of dm^T v.
static SmallVector<Value> lowerNormProjectGrad(OpBuilder &b,
                                               NormProjectGradOp op) {
  Location loc = op.getLoc();
  Value x = op.getX();
  RankedTensorType xType = op.getX().getType();
  unsigned lead = leadingRank(x, 2);
  int64_t n = xType.getDimSize(xType.getRank() - 2);
  int64_t c = xType.getShape().back();
  int64_t k = n * c, m = numMixes(n);
  MLIRContext *ctx = b.getContext();
  float eps = op.getEps().convertToFloat();

  // The forward's pieces, recomputed exactly as norm_project computes them.
  RankedTensorType mixType = f32WithTrailing(xType, lead, {m});
  Value sqrsum = sumOfSquares(b, loc, x, xType, lead);
  Value scaled = sumOfSquares(b, loc, x, xType, lead, kOverflowScale);
  Value dot = projectStreams(b, loc, x, op.getFn(), mixType, lead);
  LoopNest tokens{ctx, lead, {}};
  AffineMap perToken = tokens.perToken({});
  RankedTensorType perTokenType = f32WithTrailing(xType, lead, {});
  Value r = buildGeneric(
      b, loc, tokens, {sqrsum, scaled}, emptyTensor(b, loc, perTokenType, x),
      {perToken, perToken, perToken},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        return normFactor(nb, nloc, args[0], args[1], k, eps);
      });
  // Where the sum of squares overflowed, r^3 underflows: dS is then carried
  // as dS / 2^-96 (from r / 2^-96 and q * 2^-96) and v as 2^-96 v, exactly
  // rescaled; vScale is that factor of v, 1 elsewhere.
  auto overflowed = [&](OpBuilder &nb, Location nloc, Value sum) {
    return arith::CmpFOp::create(
        nb, nloc, arith::CmpFPredicate::OEQ, sum,
        f32Const(nb, nloc, std::numeric_limits<double>::infinity()));
  };
  Value vScale = buildGeneric(
      b, loc, tokens, sqrsum, emptyTensor(b, loc, perTokenType, x),
      {perToken, perToken},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        return arith::SelectOp::create(nb, nloc,
                                       overflowed(nb, nloc, args[0]),
                                       f32Const(nb, nloc, kOverflowScale),
                                       f32Const(nb, nloc, 1.0));
      });

  // dS from q = sum_m dmix * m.
  LoopNest overMixes{ctx, lead, {IteratorType::reduction}}; // m
  AffineMap mixMap = overMixes.perToken({overMixes.loop(0)});
  Value q =
      buildGeneric(b, loc, overMixes, {op.getDmix(), dot},
                   filledF32(b, loc, xType, lead, {}, x, 0.0),
                   {mixMap, mixMap, overMixes.perToken({})},
                   [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
                     Value prod =
                         arith::MulFOp::create(nb, nloc, args[0], args[1]);
                     return arith::AddFOp::create(nb, nloc, args[2], prod);
                   });
  auto negQr3 = [&](OpBuilder &nb, Location nloc, Value q, Value r) {
    Value r2 = arith::MulFOp::create(nb, nloc, r, r);
    Value r3 = arith::MulFOp::create(nb, nloc, r2, r);
    Value qr3 = arith::MulFOp::create(nb, nloc, q, r3);
    Value over2K = arith::DivFOp::create(
        nb, nloc, qr3, f32Const(nb, nloc, 2.0 * static_cast<double>(k)));
    return arith::NegFOp::create(nb, nloc, over2K);
  };
  Value dS = buildGeneric(
      b, loc, tokens, {q, r, sqrsum}, emptyTensor(b, loc, perTokenType, x),
      {perToken, perToken, perToken, perToken},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value plain = negQr3(nb, nloc, args[0], args[1]);
        Value inv = f32Const(nb, nloc, 1.0 / kOverflowScale);
        Value scale = f32Const(nb, nloc, kOverflowScale);
        Value rescued = arith::MulFOp::create(
            nb, nloc,
            negQr3(nb, nloc, arith::MulFOp::create(nb, nloc, args[0], scale),
                   arith::MulFOp::create(nb, nloc, args[1], inv)),
            scale);
        return arith::SelectOp::create(
            nb, nloc, overflowed(nb, nloc, args[2]), rescued, plain);
      });

  // dm = dmix * r.
  LoopNest mixes{ctx, lead, {IteratorType::parallel}}; // m
  AffineMap mixesMap = mixes.perToken({mixes.loop(0)});
  Value dm = buildGeneric(
      b, loc, mixes, {op.getDmix(), r}, emptyTensor(b, loc, mixType, x),
      {mixesMap, mixes.perToken({}), mixesMap},
      [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        return arith::MulFOp::create(nb, nloc, args[0], args[1]);
      });

  // fn viewed as [M, n, C] (the stream-major flattening).
  auto fn3Type = RankedTensorType::get({m, n, c}, b.getF32Type());
  Value fn3 = tensor::ExpandShapeOp::create(
      b, loc, fn3Type, op.getFn(),
      SmallVector<ReassociationIndices>{{0}, {1, 2}});

  // dx = round(sum_m dm[m] * fn[m, i, c] + 2 v[i, c] dS).
  LoopNest back{ctx,
                lead,
                {IteratorType::parallel, IteratorType::parallel,
                 IteratorType::reduction}}; // i, c, m
  AffineExpr i = back.loop(0), cl = back.loop(1), ml = back.loop(2);
  Value acc = buildGeneric(
      b, loc, back, {dm, fn3}, filledF32(b, loc, xType, lead, {n, c}, x, 0.0),
      {back.perToken({ml}), back.shared({ml, i, cl}), back.perToken({i, cl})},
      [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value prod = arith::MulFOp::create(nb, nloc, args[0], args[1]);
        return arith::AddFOp::create(nb, nloc, args[2], prod);
      });
  LoopNest streams{
      ctx, lead, {IteratorType::parallel, IteratorType::parallel}}; // i, c
  AffineMap streamMap = streams.perToken({streams.loop(0), streams.loop(1)});
  Type elem = xType.getElementType();
  Value dx = buildGeneric(
      b, loc, streams, {x, dS, vScale, acc}, emptyTensor(b, loc, xType, x),
      {streamMap, streams.perToken({}), streams.perToken({}), streamMap,
       streamMap},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value twoDS =
            arith::MulFOp::create(nb, nloc, f32Const(nb, nloc, 2.0), args[1]);
        Value v = arith::MulFOp::create(nb, nloc, widenToF32(nb, nloc, args[0]),
                                        args[2]);
        Value norm = arith::MulFOp::create(nb, nloc, v, twoDS);
        Value sum = arith::AddFOp::create(nb, nloc, args[3], norm);
        return elem.isF32() ? sum
                            : arith::TruncFOp::create(nb, nloc, elem, sum);
      });

  // dfn[m, i, c] = sum over tokens of dm[m] * v[i, c].
  LoopNest param{ctx,
                 lead,
                 {IteratorType::parallel, IteratorType::parallel,
                  IteratorType::parallel}, // m, i, c
                 IteratorType::reduction};
  AffineExpr pm = param.loop(0), pi = param.loop(1), pc = param.loop(2);
  Value dfn3 = buildGeneric(
      b, loc, param, {dm, x},
      fillF32(b, loc, tensor::EmptyOp::create(b, loc, fn3Type, ValueRange{}),
              0.0),
      {param.perToken({pm}), param.perToken({pi, pc}),
       param.shared({pm, pi, pc})},
      [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value prod = arith::MulFOp::create(nb, nloc, args[0],
                                           widenToF32(nb, nloc, args[1]));
        return arith::AddFOp::create(nb, nloc, args[2], prod);
      });
  Value dfn = tensor::CollapseShapeOp::create(
      b, loc, op.getFn().getType(), dfn3,
      SmallVector<ReassociationIndices>{{0}, {1, 2}});
  return {dx, dfn};
}

/// dmix, dscale, dbase of split_mixes. The M mixes are viewed as n + 2 rows
/// of n: row 0 is pre, row 1 post, rows 2.. the logits, so every per-token
/// tensor lines up with [..., n + 2, n] and the group of row r is min(r, 2).
static SmallVector<Value> lowerSplitMixesGrad(OpBuilder &b,
                                              SplitMixesGradOp op) {
  Location loc = op.getLoc();
  MLIRContext *ctx = b.getContext();
  Value mix = op.getMix();
  RankedTensorType mixType = op.getMix().getType();
  unsigned lead = leadingRank(mix, 1);
  int64_t n = op.getDpre().getType().getShape().back();
  float postMult = op.getPostMult().convertToFloat();

  SmallVector<ReassociationIndices> rowsOfMix;
  for (unsigned d = 0; d < lead; ++d)
    rowsOfMix.push_back({d});
  rowsOfMix.push_back({lead, lead + 1});
  SmallVector<int64_t> mix3Shape(mixType.getShape().drop_back());
  mix3Shape.append({n + 2, n});
  auto mix3Type = RankedTensorType::get(mix3Shape, b.getF32Type());
  Value mix3 = tensor::ExpandShapeOp::create(b, loc, mix3Type, mix, rowsOfMix);
  auto base2Type = RankedTensorType::get({n + 2, n}, b.getF32Type());
  Value base2 =
      tensor::ExpandShapeOp::create(b, loc, base2Type, op.getBase(),
                                    SmallVector<ReassociationIndices>{{0, 1}});

  LoopNest rows{
      ctx, lead, {IteratorType::parallel, IteratorType::parallel}}; // r, j
  AffineExpr rl = rows.loop(0), jl = rows.loop(1);
  AffineMap rowMap = rows.perToken({rl, jl});
  // scale[min(r, 2)] for the row index r.
  auto groupScale = [&](OpBuilder &nb, Location nloc, Value row) -> Value {
    Value group = arith::MinUIOp::create(
        nb, nloc, row, arith::ConstantIndexOp::create(nb, nloc, 2));
    return tensor::ExtractOp::create(nb, nloc, op.getScale(), group);
  };

  // da: dpre * s(1-s), dpost * post_mult * s(1-s), dlogits. The logits row
  // r - 2 is read with tensor.extract (clamped for the pre and post rows,
  // whose value the select drops): it is no affine map of r.
  Value da = buildGeneric(
      b, loc, rows, {mix3, base2, op.getDpre(), op.getDpost()},
      emptyTensor(b, loc, mix3Type, mix),
      {rowMap, rows.shared({rl, jl}), rows.perToken({jl}), rows.perToken({jl}),
       rowMap},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value row = linalg::IndexOp::create(nb, nloc, lead);
        Value col = linalg::IndexOp::create(nb, nloc, lead + 1);
        Value scaled =
            arith::MulFOp::create(nb, nloc, args[0], groupScale(nb, nloc, row));
        Value a = arith::AddFOp::create(nb, nloc, scaled, args[1]);
        Value sig = sigmoidF32(nb, nloc, a);
        Value slope = arith::MulFOp::create(
            nb, nloc, sig,
            arith::SubFOp::create(nb, nloc, f32Const(nb, nloc, 1.0), sig));
        Value daPre = arith::MulFOp::create(nb, nloc, args[2], slope);
        Value daPost = arith::MulFOp::create(
            nb, nloc, args[3],
            arith::MulFOp::create(nb, nloc, f32Const(nb, nloc, postMult),
                                  slope));
        Value two = arith::ConstantIndexOp::create(nb, nloc, 2);
        Value isLogits = arith::CmpIOp::create(
            nb, nloc, arith::CmpIPredicate::uge, row, two);
        Value logitsRow = arith::SelectOp::create(
            nb, nloc, isLogits, arith::SubIOp::create(nb, nloc, row, two),
            arith::ConstantIndexOp::create(nb, nloc, 0));
        SmallVector<Value> idx;
        for (unsigned d = 0; d < lead; ++d)
          idx.push_back(linalg::IndexOp::create(nb, nloc, d));
        idx.append({logitsRow, col});
        Value daLogits =
            tensor::ExtractOp::create(nb, nloc, op.getDlogits(), idx);
        Value isPre =
            arith::CmpIOp::create(nb, nloc, arith::CmpIPredicate::eq, row,
                                  arith::ConstantIndexOp::create(nb, nloc, 0));
        Value coeff = arith::SelectOp::create(nb, nloc, isPre, daPre, daPost);
        return arith::SelectOp::create(nb, nloc, isLogits, daLogits, coeff);
      });

  // dmix = da * scale[group].
  Value dmix3 = buildGeneric(
      b, loc, rows, da, emptyTensor(b, loc, mix3Type, mix), {rowMap, rowMap},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value row = linalg::IndexOp::create(nb, nloc, lead);
        return arith::MulFOp::create(nb, nloc, args[0],
                                     groupScale(nb, nloc, row));
      });
  Value dmix =
      tensor::CollapseShapeOp::create(b, loc, mixType, dmix3, rowsOfMix);

  // dbase = sum over tokens of da.
  LoopNest overTokens{ctx,
                      lead,
                      {IteratorType::parallel, IteratorType::parallel},
                      IteratorType::reduction}; // r, j
  Value dbase2 = buildGeneric(
      b, loc, overTokens, da,
      fillF32(b, loc, tensor::EmptyOp::create(b, loc, base2Type, ValueRange{}),
              0.0),
      {overTokens.perToken({overTokens.loop(0), overTokens.loop(1)}),
       overTokens.shared({overTokens.loop(0), overTokens.loop(1)})},
      [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        return arith::AddFOp::create(nb, nloc, args[1], args[0]);
      });
  Value dbase = tensor::CollapseShapeOp::create(
      b, loc, op.getBase().getType(), dbase2,
      SmallVector<ReassociationIndices>{{0, 1}});

  // dscale[g] = sum over tokens and the rows r of group g of da * mix.
  LoopNest groups{ctx,
                  lead,
                  {IteratorType::reduction, IteratorType::reduction,
                   IteratorType::parallel}, // r, j, g
                  IteratorType::reduction};
  AffineMap groupRowMap = groups.perToken({groups.loop(0), groups.loop(1)});
  Value dscale = buildGeneric(
      b, loc, groups, {da, mix3},
      fillF32(b, loc,
              tensor::EmptyOp::create(b, loc, op.getScale().getType(),
                                      ValueRange{}),
              0.0),
      {groupRowMap, groupRowMap, groups.shared({groups.loop(2)})},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value row = linalg::IndexOp::create(nb, nloc, lead);
        Value g = linalg::IndexOp::create(nb, nloc, lead + 2);
        Value group = arith::MinUIOp::create(
            nb, nloc, row, arith::ConstantIndexOp::create(nb, nloc, 2));
        Value inGroup =
            arith::CmpIOp::create(nb, nloc, arith::CmpIPredicate::eq, group, g);
        Value prod = arith::MulFOp::create(nb, nloc, args[0], args[1]);
        Value sum = arith::AddFOp::create(nb, nloc, args[2], prod);
        return arith::SelectOp::create(nb, nloc, inGroup, sum, args[2]);
      });
  return {dmix, dscale, dbase};
}

/// out[..., i, j] = f(args at [..., i, j]) over n x n matrices of the same
/// shape as `like`; vectors are indexed by the row (`Axis::Row`) or column.
static Value
mapMatrices(OpBuilder &b, Location loc, Value like, ValueRange matrices,
            ArrayRef<std::pair<Value, Axis>> vectors,
            function_ref<Value(OpBuilder &, Location, ValueRange)> f) {
  auto type = cast<RankedTensorType>(like.getType());
  unsigned lead = type.getRank() - 2;
  LoopNest nest{
      b.getContext(), lead, {IteratorType::parallel, IteratorType::parallel}};
  AffineMap matrix = nest.perToken({nest.loop(0), nest.loop(1)});
  SmallVector<Value> inputs(matrices);
  SmallVector<AffineMap> maps(matrices.size(), matrix);
  for (auto [v, axis] : vectors) {
    inputs.push_back(v);
    maps.push_back(
        nest.perToken({axis == Axis::Row ? nest.loop(0) : nest.loop(1)}));
  }
  maps.push_back(matrix);
  return buildGeneric(b, loc, nest, inputs, emptyTensor(b, loc, type, like),
                      maps, f);
}

/// The cotangent of X for a normalisation step Y = X / (s + eps) with
/// s = sum over `axis` of X, given the cotangent g of Y:
/// (g - sum over axis of g * Y) / (s + eps).
static Value normalizeBackward(OpBuilder &b, Location loc, Value g, Value x,
                               Value y, Axis axis, float eps) {
  Value s = sumMatrix(b, loc, x, axis);
  Value gy = mapMatrices(
      b, loc, g, {g, y}, {}, [](OpBuilder &nb, Location nloc, ValueRange args) {
        return arith::MulFOp::create(nb, nloc, args[0], args[1]);
      });
  Value dot = sumMatrix(b, loc, gy, axis);
  return mapMatrices(
      b, loc, g, {g}, {{dot, axis}, {s, axis}},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value diff = arith::SubFOp::create(nb, nloc, args[0], args[1]);
        Value denom =
            arith::AddFOp::create(nb, nloc, args[2], f32Const(nb, nloc, eps));
        return arith::DivFOp::create(nb, nloc, diff, denom);
      });
}

/// dlogits of sinkhorn. The iterates are recomputed from the logits, never
/// stored: going back over the (row, column) pairs it = R-1 .. 1, the pair's
/// input (Q1 followed by it - 1 pairs, Q1 = the first column normalisation
/// of softmax + eps) is recomputed from Q1, so the work is ~R^2/2 pairs per
/// matrix and the memory a few n x n matrices. (A stored trace would need
/// slices along the token dims, which MLIR rejects when a static token dim
/// is 0.) Then the first column normalisation, then the softmax.
static Value lowerSinkhornGrad(OpBuilder &b, SinkhornGradOp op) {
  Location loc = op.getLoc();
  float eps = op.getEps().convertToFloat();
  int64_t iterations = op.getIterations();
  Value logits = op.getLogits();

  auto [exps, rowSum] = shiftedExps(b, loc, logits);
  Value p0 = mapWithVector(
      b, loc, exps, rowSum, Axis::Row,
      [](OpBuilder &nb, Location nloc, Value e, Value s) -> Value {
        return arith::DivFOp::create(nb, nloc, e, s);
      });
  Value p0Eps =
      mapMatrices(b, loc, p0, {p0}, {},
                  [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
                    return arith::AddFOp::create(nb, nloc, args[0],
                                                 f32Const(nb, nloc, eps));
                  });
  Value q1 = normalize(b, loc, p0Eps, Axis::Column, eps);

  Value g = op.getDcomb();
  if (iterations > 1) {
    Value zero = arith::ConstantIndexOp::create(b, loc, 0);
    Value one = arith::ConstantIndexOp::create(b, loc, 1);
    Value lastPair = arith::ConstantIndexOp::create(b, loc, iterations - 1);
    auto pairs = scf::ForOp::create(
        b, loc, zero, lastPair, one, ValueRange{g},
        [&](OpBuilder &nb, Location nloc, Value r, ValueRange gIn) {
          // it = iterations - 1 - r: the pair being walked back.
          Value it = arith::SubIOp::create(nb, nloc, lastPair, r);
          Value input = normalizePairs(nb, nloc, q1, one, it, one, eps);
          Value afterRow = normalize(nb, nloc, input, Axis::Row, eps);
          Value afterColumn = normalize(nb, nloc, afterRow, Axis::Column, eps);
          Value gc = normalizeBackward(nb, nloc, gIn[0], afterRow, afterColumn,
                                       Axis::Column, eps);
          Value gr =
              normalizeBackward(nb, nloc, gc, input, afterRow, Axis::Row, eps);
          scf::YieldOp::create(nb, nloc, gr);
        });
    g = pairs.getResult(0);
  }
  g = normalizeBackward(b, loc, g, p0Eps, q1, Axis::Column, eps);

  // Through the softmax: P0 * (g - sum_j g * P0).
  Value gp =
      mapMatrices(b, loc, g, {g, p0}, {},
                  [](OpBuilder &nb, Location nloc, ValueRange args) {
                    return arith::MulFOp::create(nb, nloc, args[0], args[1]);
                  });
  Value rowDot = sumMatrix(b, loc, gp, Axis::Row);
  return mapMatrices(
      b, loc, g, {g, p0}, {{rowDot, Axis::Row}},
      [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value diff = arith::SubFOp::create(nb, nloc, args[0], args[2]);
        return arith::MulFOp::create(nb, nloc, args[1], diff);
      });
}

/// du = round(r g - u r^3 S / C) with g = dout * weight and S = sum_c g u;
/// dweight = round(sum over tokens of dout u r).
static SmallVector<Value> lowerRmsNormGrad(OpBuilder &b, RmsNormGradOp op) {
  Location loc = op.getLoc();
  MLIRContext *ctx = b.getContext();
  Value u = op.getU(), weight = op.getWeight(), dout = op.getDout();
  RankedTensorType uType = op.getU().getType();
  unsigned lead = leadingRank(u, 1);
  int64_t width = uType.getShape().back();
  Value r = rmsFactor(b, loc, u, op.getEps().convertToFloat());

  LoopNest overWidth{ctx, lead, {IteratorType::reduction}}; // c
  AffineExpr sc = overWidth.loop(0);
  Value s = buildGeneric(
      b, loc, overWidth, {dout, weight, u},
      filledF32(b, loc, uType, lead, {}, u, 0.0),
      {overWidth.perToken({sc}), overWidth.shared({sc}),
       overWidth.perToken({sc}), overWidth.perToken({})},
      [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value g = arith::MulFOp::create(nb, nloc, widenToF32(nb, nloc, args[0]),
                                        widenToF32(nb, nloc, args[1]));
        Value gu =
            arith::MulFOp::create(nb, nloc, g, widenToF32(nb, nloc, args[2]));
        return arith::AddFOp::create(nb, nloc, args[3], gu);
      });

  LoopNest nest{ctx, lead, {IteratorType::parallel}}; // c
  AffineExpr c = nest.loop(0);
  Type elem = uType.getElementType();
  Value du = buildGeneric(
      b, loc, nest, {dout, weight, u, r, s}, emptyTensor(b, loc, uType, u),
      {nest.perToken({c}), nest.shared({c}), nest.perToken({c}),
       nest.perToken({}), nest.perToken({}), nest.perToken({c})},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value g = arith::MulFOp::create(nb, nloc, widenToF32(nb, nloc, args[0]),
                                        widenToF32(nb, nloc, args[1]));
        Value rr = args[3];
        Value r3 = arith::MulFOp::create(
            nb, nloc, arith::MulFOp::create(nb, nloc, rr, rr), rr);
        Value k = arith::DivFOp::create(
            nb, nloc, arith::MulFOp::create(nb, nloc, r3, args[4]),
            f32Const(nb, nloc, static_cast<double>(width)));
        Value v = arith::SubFOp::create(
            nb, nloc, arith::MulFOp::create(nb, nloc, rr, g),
            arith::MulFOp::create(nb, nloc, widenToF32(nb, nloc, args[2]), k));
        return elem.isF32() ? v : arith::TruncFOp::create(nb, nloc, elem, v);
      });

  // dweight[c] = sum over tokens of dout[..., c] * u[..., c] * r[...].
  LoopNest param{ctx, lead, {IteratorType::parallel}, IteratorType::reduction};
  AffineExpr pc = param.loop(0);
  auto accType = RankedTensorType::get({width}, b.getF32Type());
  Value acc = buildGeneric(
      b, loc, param, {dout, u, r},
      fillF32(b, loc, tensor::EmptyOp::create(b, loc, accType, ValueRange{}),
              0.0),
      {param.perToken({pc}), param.perToken({pc}), param.perToken({}),
       param.shared({pc})},
      [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value prod = arith::MulFOp::create(nb, nloc, widenToF32(nb, nloc, args[0]),
                                           widenToF32(nb, nloc, args[1]));
        prod = arith::MulFOp::create(nb, nloc, prod, args[2]);
        return arith::AddFOp::create(nb, nloc, args[3], prod);
      });
  Value dweight =
      roundToElementType(b, loc, acc, op.getWeight().getType(), weight);
  return {du, dweight};
}

/// dx[..., i, c] = round(pre[..., i] * du[..., c]),
/// dpre[..., i] = sum_c du[..., c] * x[..., i, c].
static SmallVector<Value> lowerPreApplyGrad(OpBuilder &b, PreApplyGradOp op) {
  Location loc = op.getLoc();
  Value x = op.getX();
  RankedTensorType xType = op.getX().getType();
  unsigned lead = leadingRank(x, 2);
  int64_t n = xType.getDimSize(xType.getRank() - 2);
  Type elem = xType.getElementType();

  LoopNest streams{b.getContext(),
                   lead,
                   {IteratorType::parallel, IteratorType::parallel}}; // i, c
  AffineExpr i = streams.loop(0), c = streams.loop(1);
  Value dx = buildGeneric(
      b, loc, streams, {op.getPre(), op.getDu()}, emptyTensor(b, loc, xType, x),
      {streams.perToken({i}), streams.perToken({c}), streams.perToken({i, c})},
      [&](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value prod = arith::MulFOp::create(nb, nloc, args[0],
                                           widenToF32(nb, nloc, args[1]));
        return elem.isF32() ? prod
                            : arith::TruncFOp::create(nb, nloc, elem, prod);
      });

  LoopNest overWidth{b.getContext(),
                     lead,
                     {IteratorType::parallel, IteratorType::reduction}}; // i, c
  AffineExpr wi = overWidth.loop(0), wc = overWidth.loop(1);
  Value dpre = buildGeneric(
      b, loc, overWidth, {op.getDu(), x},
      filledF32(b, loc, op.getPre().getType(), lead, {n}, op.getPre(), 0.0),
      {overWidth.perToken({wc}), overWidth.perToken({wi, wc}),
       overWidth.perToken({wi})},
      [](OpBuilder &nb, Location nloc, ValueRange args) -> Value {
        Value prod =
            arith::MulFOp::create(nb, nloc, widenToF32(nb, nloc, args[0]),
                                  widenToF32(nb, nloc, args[1]));
        return arith::AddFOp::create(nb, nloc, args[2], prod);
      });
  return {dx, dpre};
}

/// dy[c] = round(sum_j post[j] dout[j, c]), dx[i, c] = round(sum_j comb[i, j]
/// dout[j, c]), dpost[j] = sum_c y[c] dout[j, c], dcomb[i, j] = sum_c x[i, c]
/// dout[j, c], per token. Each result takes its operand's type, so its
/// accumulator takes the operand's token dims.
static SmallVector<Value> lowerPostResGrad(OpBuilder &b, PostResGradOp op) {
  Location loc = op.getLoc();
  MLIRContext *ctx = b.getContext();
  Value x = op.getX(), y = op.getY(), dout = op.getDout();
  RankedTensorType xType = op.getX().getType();
  RankedTensorType yType = op.getY().getType();
  unsigned lead = leadingRank(x, 2);
  int64_t n = xType.getDimSize(xType.getRank() - 2);
  int64_t c = xType.getShape().back();
  auto multiplyAdd = [](OpBuilder &nb, Location nloc,
                        ValueRange args) -> Value {
    Value prod = arith::MulFOp::create(nb, nloc, widenToF32(nb, nloc, args[0]),
                                       widenToF32(nb, nloc, args[1]));
    return arith::AddFOp::create(nb, nloc, args[2], prod);
  };

  // dy: loops (c, j).
  LoopNest dyNest{ctx, lead, {IteratorType::parallel, IteratorType::reduction}};
  AffineExpr yc = dyNest.loop(0), yj = dyNest.loop(1);
  Value dyAcc = buildGeneric(
      b, loc, dyNest, {op.getPost(), dout},
      filledF32(b, loc, yType, lead, {c}, y, 0.0),
      {dyNest.perToken({yj}), dyNest.perToken({yj, yc}), dyNest.perToken({yc})},
      multiplyAdd);
  Value dy = roundToElementType(b, loc, dyAcc, yType, y);

  // dx: loops (i, c, j).
  LoopNest dxNest{ctx,
                  lead,
                  {IteratorType::parallel, IteratorType::parallel,
                   IteratorType::reduction}};
  AffineExpr xi = dxNest.loop(0), xc = dxNest.loop(1), xj = dxNest.loop(2);
  Value dxAcc =
      buildGeneric(b, loc, dxNest, {op.getComb(), dout},
                   filledF32(b, loc, xType, lead, {n, c}, x, 0.0),
                   {dxNest.perToken({xi, xj}), dxNest.perToken({xj, xc}),
                    dxNest.perToken({xi, xc})},
                   multiplyAdd);
  Value dx = roundToElementType(b, loc, dxAcc, xType, x);

  // dpost: loops (j, c).
  LoopNest dpostNest{
      ctx, lead, {IteratorType::parallel, IteratorType::reduction}};
  AffineExpr pj = dpostNest.loop(0), pc = dpostNest.loop(1);
  Value dpost = buildGeneric(
      b, loc, dpostNest, {y, dout},
      filledF32(b, loc, op.getPost().getType(), lead, {n}, op.getPost(), 0.0),
      {dpostNest.perToken({pc}), dpostNest.perToken({pj, pc}),
       dpostNest.perToken({pj})},
      multiplyAdd);

  // dcomb: loops (i, j, c).
  LoopNest dcombNest{ctx,
                     lead,
                     {IteratorType::parallel, IteratorType::parallel,
                      IteratorType::reduction}};
  AffineExpr ci = dcombNest.loop(0), cj = dcombNest.loop(1),
             cc = dcombNest.loop(2);
  Value dcomb =
      buildGeneric(b, loc, dcombNest, {x, dout},
                   filledF32(b, loc, op.getComb().getType(), lead, {n, n},
                             op.getComb(), 0.0),
                   {dcombNest.perToken({ci, cc}), dcombNest.perToken({cj, cc}),
                    dcombNest.perToken({ci, cj})},
                   multiplyAdd);
  return {dy, dx, dpost, dcomb};
}

//===----------------------------------------------------------------------===//
// Patterns and the pass
//===----------------------------------------------------------------------===//

namespace {
/// Adapts one lower* function to a conversion pattern.
template <typename OpTy, auto Lower>
struct LowerOp : OpConversionPattern<OpTy> {
  using OpConversionPattern<OpTy>::OpConversionPattern;
  LogicalResult
  matchAndRewrite(OpTy op, typename OpTy::Adaptor,
                  ConversionPatternRewriter &rewriter) const override {
    auto replacement = Lower(rewriter, op);
    rewriter.replaceOp(op, replacement);
    return success();
  }
};

/// Moves the body of every mhc.fused before it and forwards the yielded
/// values: kernel grouping is meaningless on the CPU path.
void inlineFusedGroups(Operation *root) {
  IRRewriter rewriter(root->getContext());
  SmallVector<FusedOp> groups;
  root->walk([&](FusedOp op) { groups.push_back(op); });
  for (FusedOp op : groups) {
    Block &body = op.getBody().front();
    auto yield = cast<YieldOp>(body.getTerminator());
    SmallVector<Value> yielded(yield.getValues());
    rewriter.eraseOp(yield);
    rewriter.inlineBlockBefore(&body, op);
    rewriter.replaceOp(op, yielded);
  }
}

/// Diagnoses what the lowering cannot handle before anything is rewritten.
LogicalResult checkSupported(Operation *root) {
  WalkResult result = root->walk([](Operation *op) {
    if (!isa_and_nonnull<MHCDialect>(op->getDialect()))
      return WalkResult::advance();
    if (!isa<ExpandOp, CollapseOp, NormProjectOp, SplitMixesOp, SinkhornOp,
             PreApplyOp, PostResOp, NormProjectGradOp, SplitMixesGradOp,
             SinkhornGradOp, PreApplyGradOp, PostResGradOp, RmsNormOp,
             RmsNormGradOp, FusedOp, YieldOp>(op)) {
      op->emitOpError() << "has no lowering to linalg (convert-mhc-to-linalg "
                           "handles expand, collapse, norm_project, "
                           "split_mixes, sinkhorn, pre_apply, post_res, "
                           "rms_norm, their _grad ops and mhc.fused)";
      return WalkResult::interrupt();
    }
    for (Type t :
         llvm::concat<Type>(op->getOperandTypes(), op->getResultTypes())) {
      auto tensor = dyn_cast<RankedTensorType>(t);
      if (tensor && tensor.getEncoding()) {
        op->emitOpError() << "cannot be lowered to linalg: tensors with an "
                             "encoding are not supported, got "
                          << t;
        return WalkResult::interrupt();
      }
    }
    return WalkResult::advance();
  });
  return failure(result.wasInterrupted());
}

struct ConvertMHCToLinalgPass
    : mhc::impl::ConvertMHCToLinalgBase<ConvertMHCToLinalgPass> {
  using ConvertMHCToLinalgBase::ConvertMHCToLinalgBase;

  void getDependentDialects(DialectRegistry &registry) const override {
    ConvertMHCToLinalgBase::getDependentDialects(registry);
    // Sinkhorn's iterations are an scf.for carrying the matrix.
    registry.insert<scf::SCFDialect>();
  }

  void runOnOperation() override {
    Operation *root = getOperation();
    if (failed(checkSupported(root)))
      return signalPassFailure();
    inlineFusedGroups(root);
    // The CPU pipeline canonicalizes next: keep it off MLIR 22's crash.
    repairExpandShapes(root);

    MLIRContext *ctx = &getContext();
    RewritePatternSet patterns(ctx);
    patterns.add<
        LowerOp<ExpandOp, lowerExpand>, LowerOp<CollapseOp, lowerCollapse>,
        LowerOp<NormProjectOp, lowerNormProject>,
        LowerOp<SplitMixesOp, lowerSplitMixes>,
        LowerOp<SinkhornOp, lowerSinkhorn>, LowerOp<PreApplyOp, lowerPreApply>,
        LowerOp<PostResOp, lowerPostRes>,
        LowerOp<NormProjectGradOp, lowerNormProjectGrad>,
        LowerOp<SplitMixesGradOp, lowerSplitMixesGrad>,
        LowerOp<SinkhornGradOp, lowerSinkhornGrad>,
        LowerOp<PreApplyGradOp, lowerPreApplyGrad>,
        LowerOp<PostResGradOp, lowerPostResGrad>,
        LowerOp<RmsNormOp, lowerRmsNorm>,
        LowerOp<RmsNormGradOp, lowerRmsNormGrad>>(ctx);
    ConversionTarget target(*ctx);
    target.addIllegalDialect<MHCDialect>();
    target.markUnknownOpDynamicallyLegal([](Operation *) { return true; });
    if (failed(applyPartialConversion(root, target, std::move(patterns))))
      signalPassFailure();
  }
};
} // namespace
