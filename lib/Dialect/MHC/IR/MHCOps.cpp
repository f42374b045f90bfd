//===- MHCOps.cpp - mhc dialect operations --------------------------------===//
//
// Verifiers check every shape relation of the spec and name the offending
// operand; folds and canonicalizations are the ones a user benefits from.
//
//===----------------------------------------------------------------------===//
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Matchers.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/IR/PatternMatch.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/raw_ostream.h"

#include <cmath>

using namespace mlir;
using namespace mlir::mhc;

//===----------------------------------------------------------------------===//
// Shape helpers shared by the verifiers
//===----------------------------------------------------------------------===//

/// "?x8x4" style rendering of a shape for diagnostics.
static std::string formatShape(ArrayRef<int64_t> shape) {
  std::string s;
  llvm::raw_string_ostream os(s);
  if (shape.empty())
    return "[]";
  llvm::interleave(
      shape, os,
      [&](int64_t d) {
        if (ShapedType::isDynamic(d))
          os << "?";
        else
          os << d;
      },
      "x");
  return s;
}

/// The leading (token) dims of `type`, dropping its `trailing` last dims.
static ArrayRef<int64_t> leadingDims(RankedTensorType type, unsigned trailing) {
  return type.getShape().drop_back(trailing);
}

/// Requires `type` to have at least `trailing` dims and those to be static.
static LogicalResult verifyTrailingStatic(Operation *op, RankedTensorType type,
                                          StringRef name, unsigned trailing,
                                          StringRef layout) {
  if (type.getRank() < trailing)
    return op->emitOpError() << "expects " << name << " of shape " << layout
                             << " (rank >= " << trailing << "), got "
                             << type;
  for (int64_t d : type.getShape().take_back(trailing))
    if (ShapedType::isDynamic(d))
      return op->emitOpError()
             << "expects the trailing dims " << layout << " of " << name
             << " to be static, got " << type;
  return success();
}

/// Leading dims of two operands must agree (a dynamic dim matches anything).
static LogicalResult verifyLeadingMatch(Operation *op, ArrayRef<int64_t> a,
                                        StringRef aName, ArrayRef<int64_t> b,
                                        StringRef bName) {
  bool ok = a.size() == b.size();
  for (auto [da, db] : llvm::zip(a, b))
    ok &= ShapedType::isDynamic(da) || ShapedType::isDynamic(db) || da == db;
  if (!ok)
    return op->emitOpError()
           << "leading dims of " << aName << " (" << formatShape(a)
           << ") do not match the leading dims of " << bName << " ("
           << formatShape(b) << ")";
  return success();
}

static LogicalResult verifyDim(Operation *op, int64_t actual, int64_t expected,
                               StringRef what) {
  if (actual != expected)
    return op->emitOpError() << "expects " << what << " to be " << expected
                             << ", got " << actual;
  return success();
}

static LogicalResult verifySameElementType(Operation *op, Type a,
                                           StringRef aName, Type b,
                                           StringRef bName) {
  Type ea = cast<ShapedType>(a).getElementType();
  Type eb = cast<ShapedType>(b).getElementType();
  if (ea != eb)
    return op->emitOpError() << "expects " << aName << " and " << bName
                             << " to have the same element type, got " << ea
                             << " and " << eb;
  return success();
}

static LogicalResult verifyNonNegative(Operation *op, FloatAttr attr,
                                       StringRef name) {
  if (!(attr.getValueAsDouble() >= 0.0))
    return op->emitOpError() << "expects '" << name
                             << "' to be non-negative, got "
                             << attr.getValueAsDouble();
  return success();
}

/// Recovers n from M = n^2 + 2n, or 0 if M is not of that form.
static int64_t streamsFromMixes(int64_t m) {
  for (int64_t n = 1; numMixes(n) <= m; ++n)
    if (numMixes(n) == m)
      return n;
  return 0;
}

//===----------------------------------------------------------------------===//
// ExpandOp
//===----------------------------------------------------------------------===//

LogicalResult ExpandOp::verify() {
  auto in = getInput().getType();
  auto out = getResult().getType();
  // I64Attr getters are unsigned: read the signed value to reject negatives.
  int64_t streams = getStreamsAttr().getInt();
  if (streams < 1)
    return emitOpError() << "expects 'streams' >= 1, got " << streams;
  if (failed(verifyTrailingStatic(*this, in, "input", 1, "[C]")) ||
      failed(verifyTrailingStatic(*this, out, "result", 2, "[n, C]")) ||
      failed(verifyLeadingMatch(*this, leadingDims(out, 2), "result",
                                leadingDims(in, 1), "input")) ||
      failed(verifyDim(*this, out.getDimSize(out.getRank() - 2), streams,
                       "the result's stream dim (= 'streams')")) ||
      failed(verifyDim(*this, out.getShape().back(), in.getShape().back(),
                       "the result's width C (= the input's)")) ||
      failed(verifySameElementType(*this, in, "input", out, "result")))
    return failure();
  return success();
}

/// Reassociation that merges the last dim of `[..., C]` with the new stream
/// dim of `[..., n, C]`; used by the n = 1 canonicalizations.
static SmallVector<ReassociationIndices> streamReassociation(int64_t rank) {
  SmallVector<ReassociationIndices> groups;
  for (int64_t i = 0; i + 1 < rank; ++i)
    groups.push_back({i});
  groups.push_back({rank - 1, rank});
  return groups;
}

namespace {
/// expand with one stream is a reshape: [..., C] -> [..., 1, C].
struct ExpandOneStream : OpRewritePattern<ExpandOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ExpandOp op,
                                PatternRewriter &rewriter) const override {
    if (op.getStreams() != 1)
      return failure();
    auto in = op.getInput().getType();
    rewriter.replaceOpWithNewOp<tensor::ExpandShapeOp>(
        op, op.getType(), op.getInput(), streamReassociation(in.getRank()));
    return success();
  }
};
} // namespace

void ExpandOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                           MLIRContext *context) {
  results.add<ExpandOneStream>(context);
}

//===----------------------------------------------------------------------===//
// CollapseOp
//===----------------------------------------------------------------------===//

LogicalResult CollapseOp::verify() {
  auto in = getInput().getType();
  auto out = getResult().getType();
  if (failed(verifyTrailingStatic(*this, in, "input", 2, "[n, C]")) ||
      failed(verifyTrailingStatic(*this, out, "result", 1, "[C]")) ||
      failed(verifyLeadingMatch(*this, leadingDims(out, 1), "result",
                                leadingDims(in, 2), "input")) ||
      failed(verifyDim(*this, out.getShape().back(), in.getShape().back(),
                       "the result's width C (= the input's)")) ||
      failed(verifySameElementType(*this, in, "input", out, "result")))
    return failure();
  return success();
}

namespace {
/// collapse with one stream is a reshape: [..., 1, C] -> [..., C].
struct CollapseOneStream : OpRewritePattern<CollapseOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(CollapseOp op,
                                PatternRewriter &rewriter) const override {
    auto in = op.getInput().getType();
    if (in.getDimSize(in.getRank() - 2) != 1)
      return failure();
    rewriter.replaceOpWithNewOp<tensor::CollapseShapeOp>(
        op, op.getType(), op.getInput(),
        streamReassociation(in.getRank() - 1));
    return success();
  }
};

/// collapse(expand(h, n)) sums n copies of h: it is n * h (one rounding, as
/// the f32-accumulated sum has).
struct CollapseOfExpand : OpRewritePattern<CollapseOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(CollapseOp op,
                                PatternRewriter &rewriter) const override {
    auto expand = op.getInput().getDefiningOp<ExpandOp>();
    if (!expand)
      return failure();
    Value h = expand.getInput();
    if (h.getType() != op.getType())
      return rewriter.notifyMatchFailure(op, "leading dims differ in staticness");
    if (expand.getStreams() == 1) {
      rewriter.replaceOp(op, h);
      return success();
    }
    auto type = op.getType();
    Location loc = op.getLoc();
    Value factor = arith::ConstantOp::create(
        rewriter, loc,
        rewriter.getFloatAttr(type.getElementType(),
                              static_cast<double>(expand.getStreams())));
    SmallVector<Value> dynamicSizes;
    for (int64_t i = 0; i < type.getRank(); ++i)
      if (type.isDynamicDim(i))
        dynamicSizes.push_back(tensor::DimOp::create(rewriter, loc, h, i));
    Value splat =
        tensor::SplatOp::create(rewriter, loc, type, factor, dynamicSizes);
    rewriter.replaceOpWithNewOp<arith::MulFOp>(op, h, splat);
    return success();
  }
};
} // namespace

void CollapseOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                             MLIRContext *context) {
  results.add<CollapseOneStream, CollapseOfExpand>(context);
}

//===----------------------------------------------------------------------===//
// NormProjectOp
//===----------------------------------------------------------------------===//

LogicalResult NormProjectOp::verify() {
  auto x = getX().getType();
  auto fn = getFn().getType();
  auto mix = getMix().getType();
  if (failed(verifyTrailingStatic(*this, x, "x", 2, "[n, C]")) ||
      failed(verifyNonNegative(*this, getEpsAttr(), "eps")))
    return failure();
  int64_t n = x.getDimSize(x.getRank() - 2), c = x.getShape().back();
  int64_t m = numMixes(n);
  if (fn.getRank() != 2 || fn.getShape() != ArrayRef<int64_t>{m, n * c})
    return emitOpError() << "expects fn of shape " << m << "x" << n * c
                         << " ([n*n + 2n, n*C] for n = " << n << ", C = " << c
                         << "), got " << fn;
  if (failed(verifyTrailingStatic(*this, mix, "mix", 1, "[M]")) ||
      failed(verifyDim(*this, mix.getShape().back(), m,
                       "the number of mixes M = n*n + 2n")) ||
      failed(verifyLeadingMatch(*this, leadingDims(mix, 1), "mix",
                                leadingDims(x, 2), "x")))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// SplitMixesOp
//===----------------------------------------------------------------------===//

LogicalResult SplitMixesOp::verify() {
  auto mix = getMix().getType();
  if (failed(verifyTrailingStatic(*this, mix, "mix", 1, "[M]")) ||
      failed(verifyNonNegative(*this, getPreEpsAttr(), "pre_eps")))
    return failure();
  int64_t m = mix.getShape().back();
  int64_t n = streamsFromMixes(m);
  if (n == 0)
    return emitOpError() << "expects the number of mixes M to be n*n + 2n "
                            "for some n >= 1 (3, 8, 15, 24, ...), got "
                         << m;
  auto scale = getScale().getType();
  if (scale.getShape() != ArrayRef<int64_t>{3})
    return emitOpError() << "expects scale of shape 3 (pre, post, res), got "
                         << scale;
  auto base = getBase().getType();
  if (base.getShape() != ArrayRef<int64_t>{m})
    return emitOpError() << "expects base of shape " << m << " (= M), got "
                         << base;
  ArrayRef<int64_t> lead = leadingDims(mix, 1);
  auto checkCoeffs = [&](RankedTensorType t, StringRef name, unsigned trailing,
                         StringRef layout) -> LogicalResult {
    if (failed(verifyTrailingStatic(*this, t, name, trailing, layout)) ||
        failed(verifyLeadingMatch(*this, leadingDims(t, trailing), name, lead,
                                  "mix")))
      return failure();
    for (int64_t d : t.getShape().take_back(trailing))
      if (d != n)
        return emitOpError() << "expects " << name << " to end in " << layout
                             << " with n = " << n << " (from M = " << m
                             << "), got " << t;
    return success();
  };
  if (failed(checkCoeffs(getPre().getType(), "pre", 1, "[n]")) ||
      failed(checkCoeffs(getPost().getType(), "post", 1, "[n]")) ||
      failed(checkCoeffs(getLogits().getType(), "logits", 2, "[n, n]")))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// SinkhornOp
//===----------------------------------------------------------------------===//

LogicalResult SinkhornOp::verify() {
  auto t = getLogits().getType();
  if (failed(verifyTrailingStatic(*this, t, "logits", 2, "[n, n]")))
    return failure();
  if (t.getDimSize(t.getRank() - 1) != t.getDimSize(t.getRank() - 2))
    return emitOpError() << "expects square n x n matrices in the last two "
                            "dims, got "
                         << t;
  int64_t iterations = getIterationsAttr().getInt(); // the getter is unsigned
  if (iterations < 1)
    return emitOpError() << "expects 'iterations' >= 1, got " << iterations;
  return verifyNonNegative(*this, getEpsAttr(), "eps");
}

void mlir::mhc::sinkhornInPlace(float *p, int64_t n, int64_t iterations,
                                float eps) {
  // Divides every line by (its sum + eps). Rows are lines of stride 1 that
  // start n apart; columns are lines of stride n that start 1 apart.
  auto normalizeLines = [&](int64_t lineStart, int64_t stride) {
    for (int64_t l = 0; l < n; ++l) {
      float *line = p + l * lineStart;
      float sum = 0.0f;
      for (int64_t k = 0; k < n; ++k)
        sum += line[k * stride];
      for (int64_t k = 0; k < n; ++k)
        line[k * stride] /= sum + eps;
    }
  };
  auto normalizeRows = [&] { normalizeLines(/*lineStart=*/n, /*stride=*/1); };
  auto normalizeColumns = [&] { normalizeLines(/*lineStart=*/1, /*stride=*/n); };
  // Row softmax (max subtracted) plus eps is the first row normalisation.
  for (int64_t i = 0; i < n; ++i) {
    float *row = p + i * n;
    float max = row[0];
    for (int64_t j = 1; j < n; ++j)
      max = std::max(max, row[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j)
      sum += row[j] = std::exp(row[j] - max);
    for (int64_t j = 0; j < n; ++j)
      row[j] = row[j] / sum + eps;
  }
  normalizeColumns();
  for (int64_t it = 1; it < iterations; ++it) {
    normalizeRows();
    normalizeColumns();
  }
}

OpFoldResult SinkhornOp::fold(FoldAdaptor adaptor) {
  auto input = dyn_cast_if_present<DenseFPElementsAttr>(adaptor.getLogits());
  auto type = getType();
  if (!input || !type.hasStaticShape())
    return {};
  SmallVector<float> values = llvm::to_vector(input.getValues<float>());
  int64_t n = type.getShape().back();
  for (size_t start = 0; start < values.size(); start += n * n)
    sinkhornInPlace(values.data() + start, n, getIterations(),
                    getEps().convertToFloat());
  return DenseElementsAttr::get(type, ArrayRef<float>(values));
}

//===----------------------------------------------------------------------===//
// PreApplyOp
//===----------------------------------------------------------------------===//

LogicalResult PreApplyOp::verify() {
  auto x = getX().getType();
  auto pre = getPre().getType();
  auto u = getU().getType();
  if (failed(verifyTrailingStatic(*this, x, "x", 2, "[n, C]")) ||
      failed(verifyTrailingStatic(*this, pre, "pre", 1, "[n]")) ||
      failed(verifyTrailingStatic(*this, u, "result", 1, "[C]")))
    return failure();
  int64_t n = x.getDimSize(x.getRank() - 2), c = x.getShape().back();
  if (failed(verifyDim(*this, pre.getShape().back(), n,
                       "the last dim of pre (= n of x)")) ||
      failed(verifyDim(*this, u.getShape().back(), c,
                       "the result's width C (= x's)")) ||
      failed(verifyLeadingMatch(*this, leadingDims(pre, 1), "pre",
                                leadingDims(x, 2), "x")) ||
      failed(verifyLeadingMatch(*this, leadingDims(u, 1), "result",
                                leadingDims(x, 2), "x")) ||
      failed(verifySameElementType(*this, x, "x", u, "result")))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// PostResOp
//===----------------------------------------------------------------------===//

LogicalResult PostResOp::verify() {
  auto y = getY().getType();
  auto x = getX().getType();
  auto post = getPost().getType();
  auto comb = getComb().getType();
  auto out = getResult().getType();
  if (failed(verifyTrailingStatic(*this, x, "x", 2, "[n, C]")) ||
      failed(verifyTrailingStatic(*this, y, "y", 1, "[C]")) ||
      failed(verifyTrailingStatic(*this, post, "post", 1, "[n]")) ||
      failed(verifyTrailingStatic(*this, comb, "comb", 2, "[n, n]")) ||
      failed(verifyTrailingStatic(*this, out, "result", 2, "[n, C]")))
    return failure();
  int64_t n = x.getDimSize(x.getRank() - 2), c = x.getShape().back();
  int64_t rank = comb.getRank();
  ArrayRef<int64_t> lead = leadingDims(x, 2);
  if (failed(verifyDim(*this, y.getShape().back(), c, "the width of y (= C of x)")) ||
      failed(verifyDim(*this, post.getShape().back(), n,
                       "the last dim of post (= n of x)")) ||
      failed(verifyDim(*this, comb.getDimSize(rank - 2), n,
                       "the source dim of comb (= n of x)")) ||
      failed(verifyDim(*this, comb.getDimSize(rank - 1), n,
                       "the destination dim of comb (= n of x)")) ||
      failed(verifyDim(*this, out.getDimSize(out.getRank() - 2), n,
                       "the result's stream dim (= n of x)")) ||
      failed(verifyDim(*this, out.getShape().back(), c,
                       "the result's width C (= x's)")) ||
      failed(verifyLeadingMatch(*this, leadingDims(y, 1), "y", lead, "x")) ||
      failed(verifyLeadingMatch(*this, leadingDims(post, 1), "post", lead, "x")) ||
      failed(verifyLeadingMatch(*this, leadingDims(comb, 2), "comb", lead, "x")) ||
      failed(verifyLeadingMatch(*this, leadingDims(out, 2), "result", lead, "x")) ||
      failed(verifySameElementType(*this, y, "y", x, "x")) ||
      failed(verifySameElementType(*this, out, "result", x, "x")))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// FusedOp
//===----------------------------------------------------------------------===//

LogicalResult FusedOp::verify() {
  if (getKind() != "pre" && getKind() != "post")
    return emitOpError() << "expects kind \"pre\" or \"post\", got \""
                         << getKind() << "\"";
  Block &body = getBody().front();
  auto yield = dyn_cast<YieldOp>(body.getTerminator());
  if (!yield)
    return emitOpError() << "expects its body to end in mhc.yield";
  if (yield.getValues().getTypes() != getResultTypes())
    return emitOpError() << "expects mhc.yield to return the result types";
  return success();
}

#define GET_OP_CLASSES
#include "mhc/Dialect/MHC/IR/MHCOps.cpp.inc"
