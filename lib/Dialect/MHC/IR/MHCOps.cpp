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
#include "llvm/Support/MathExtras.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <cmath>
#include <vector>

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

/// Float attributes are finite: an infinite eps or post_mult would turn
/// every coefficient into 0 or inf, a confident wrong answer (NaN is
/// rejected too).
static LogicalResult verifyFinite(Operation *op, FloatAttr attr,
                                  StringRef name) {
  if (!std::isfinite(attr.getValueAsDouble()))
    return op->emitOpError() << "expects '" << name << "' to be finite, got "
                             << attr.getValueAsDouble();
  return success();
}

static LogicalResult verifyNonNegative(Operation *op, FloatAttr attr,
                                       StringRef name) {
  if (failed(verifyFinite(op, attr, name)))
    return failure();
  if (!(attr.getValueAsDouble() >= 0.0))
    return op->emitOpError() << "expects '" << name
                             << "' to be non-negative, got "
                             << attr.getValueAsDouble();
  return success();
}

/// Recovers n from M = n^2 + 2n, or 0 if M is not of that form. M + 1 =
/// (n + 1)^2, so only the integers next to sqrt(M + 1) - 1 can match (a loop
/// up to n would take seconds for a huge static dim).
static int64_t streamsFromMixes(int64_t m) {
  int64_t guess = static_cast<int64_t>(std::sqrt(static_cast<double>(m) + 1.0));
  for (int64_t n = std::max<int64_t>(1, guess - 2); n <= guess + 1; ++n) {
    int64_t mixes;
    if (!llvm::MulOverflow(n, n + 2, mixes) && mixes == m)
      return n;
  }
  return 0;
}

/// The stream count n and width C of a [..., n, C] tensor: at least one
/// stream of at least one element (the lowerings divide by n*C and index
/// stream 0), and n*C (the width of the flattened streams) and M = n*n + 2n
/// fit in int64 for huge static dims.
static LogicalResult verifyStreamSizes(Operation *op, int64_t n, int64_t c) {
  if (n < 1)
    return op->emitOpError() << "expects at least one stream (n >= 1), got "
                                "n = "
                             << n;
  if (c < 1)
    return op->emitOpError() << "expects streams of width C >= 1, got C = "
                             << c;
  int64_t product;
  if (llvm::MulOverflow(n, c, product) || llvm::MulOverflow(n, n + 2, product))
    return op->emitOpError() << "expects n*C and n*n + 2n to fit in 64 bits, "
                                "got n = "
                             << n << ", C = " << c;
  return success();
}

/// Static element counts of every operand and result stay far from int64
/// overflow (2^48 elements is a petabyte of f32): the lowerings multiply
/// token, stream and byte counts in 64-bit index arithmetic.
static LogicalResult verifyElementCounts(Operation *op) {
  constexpr int64_t kMaxElements = int64_t(1) << 48;
  auto check = [&](Type type, StringRef what, size_t index) -> LogicalResult {
    auto shaped = dyn_cast<ShapedType>(type);
    if (!shaped || !shaped.hasRank())
      return success();
    int64_t count = 1;
    for (int64_t d : shaped.getShape()) {
      if (ShapedType::isDynamic(d))
        continue;
      if (llvm::MulOverflow(count, d, count) || count > kMaxElements)
        return op->emitOpError()
               << "expects at most 2^48 elements in a tensor, got " << what
               << " #" << index << " of type " << type;
    }
    return success();
  };
  for (auto [i, type] : llvm::enumerate(op->getOperandTypes()))
    if (failed(check(type, "operand", i)))
      return failure();
  for (auto [i, type] : llvm::enumerate(op->getResultTypes()))
    if (failed(check(type, "result", i)))
      return failure();
  return success();
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
      failed(verifySameElementType(*this, in, "input", out, "result")) ||
      failed(verifyStreamSizes(*this, streams, in.getShape().back())))
    return failure();
  return verifyElementCounts(*this);
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
      failed(verifySameElementType(*this, in, "input", out, "result")) ||
      failed(verifyStreamSizes(*this, in.getDimSize(in.getRank() - 2),
                               in.getShape().back())))
    return failure();
  return verifyElementCounts(*this);
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

/// The shape relations shared by norm_project and norm_project_grad: x
/// [..., n, C], fn [M, n*C] with M = n*n + 2n, eps >= 0, and a per-token
/// [..., M] tensor with x's leading dims (mix, or its cotangent), named
/// `name`; `mDescription` says what its last dim must be.
static LogicalResult verifyNormProjectShapes(Operation *op,
                                             RankedTensorType x,
                                             RankedTensorType fn,
                                             FloatAttr eps,
                                             RankedTensorType mix,
                                             StringRef name,
                                             StringRef mDescription) {
  if (failed(verifyTrailingStatic(op, x, "x", 2, "[n, C]")) ||
      failed(verifyNonNegative(op, eps, "eps")))
    return failure();
  int64_t n = x.getDimSize(x.getRank() - 2), c = x.getShape().back();
  if (failed(verifyStreamSizes(op, n, c)))
    return failure();
  int64_t m = numMixes(n);
  if (fn.getRank() != 2 || fn.getShape() != ArrayRef<int64_t>{m, n * c})
    return op->emitOpError()
           << "expects fn of shape " << m << "x" << n * c
           << " ([n*n + 2n, n*C] for n = " << n << ", C = " << c << "), got "
           << fn;
  if (failed(verifyTrailingStatic(op, mix, name, 1, "[M]")) ||
      failed(verifyDim(op, mix.getShape().back(), m, mDescription)) ||
      failed(verifyLeadingMatch(op, leadingDims(mix, 1), name,
                                leadingDims(x, 2), "x")))
    return failure();
  return success();
}

LogicalResult NormProjectOp::verify() {
  if (failed(verifyNormProjectShapes(*this, getX().getType(),
                                     getFn().getType(), getEpsAttr(),
                                     getMix().getType(), "mix",
                                     "the number of mixes M = n*n + 2n")))
    return failure();
  return verifyElementCounts(*this);
}

//===----------------------------------------------------------------------===//
// SplitMixesOp
//===----------------------------------------------------------------------===//

/// The shape relations shared by split_mixes and split_mixes_grad: mix
/// [..., M] with M = n*n + 2n, scale [3], base [M], and three per-token
/// tensors [..., n], [..., n], [..., n, n] with mix's leading dims (the
/// coefficients, or their cotangents), named in `names`.
static LogicalResult
verifySplitMixesShapes(Operation *op, RankedTensorType mix,
                       RankedTensorType scale, RankedTensorType base,
                       FloatAttr preEps, FloatAttr postMult,
                       std::array<RankedTensorType, 3> coefficients,
                       std::array<StringRef, 3> names) {
  if (failed(verifyTrailingStatic(op, mix, "mix", 1, "[M]")) ||
      failed(verifyNonNegative(op, preEps, "pre_eps")) ||
      failed(verifyFinite(op, postMult, "post_mult")))
    return failure();
  int64_t m = mix.getShape().back();
  int64_t n = streamsFromMixes(m);
  if (n == 0)
    return op->emitOpError() << "expects the number of mixes M to be n*n + 2n "
                                "for some n >= 1 (3, 8, 15, 24, ...), got "
                             << m;
  if (scale.getShape() != ArrayRef<int64_t>{3})
    return op->emitOpError()
           << "expects scale of shape 3 (pre, post, res), got " << scale;
  if (base.getShape() != ArrayRef<int64_t>{m})
    return op->emitOpError()
           << "expects base of shape " << m << " (= M), got " << base;
  ArrayRef<int64_t> lead = leadingDims(mix, 1);
  auto checkCoeffs = [&](RankedTensorType t, StringRef name, unsigned trailing,
                         StringRef layout) -> LogicalResult {
    if (failed(verifyTrailingStatic(op, t, name, trailing, layout)) ||
        failed(verifyLeadingMatch(op, leadingDims(t, trailing), name, lead,
                                  "mix")))
      return failure();
    for (int64_t d : t.getShape().take_back(trailing))
      if (d != n)
        return op->emitOpError()
               << "expects " << name << " to end in " << layout
               << " with n = " << n << " (from M = " << m << "), got " << t;
    return success();
  };
  if (failed(checkCoeffs(coefficients[0], names[0], 1, "[n]")) ||
      failed(checkCoeffs(coefficients[1], names[1], 1, "[n]")) ||
      failed(checkCoeffs(coefficients[2], names[2], 2, "[n, n]")))
    return failure();
  return success();
}

LogicalResult SplitMixesOp::verify() {
  if (failed(verifySplitMixesShapes(
          *this, getMix().getType(), getScale().getType(), getBase().getType(),
          getPreEpsAttr(), getPostMultAttr(),
          {getPre().getType(), getPost().getType(), getLogits().getType()},
          {"pre", "post", "logits"})))
    return failure();
  return verifyElementCounts(*this);
}

//===----------------------------------------------------------------------===//
// SinkhornOp
//===----------------------------------------------------------------------===//

/// Compile-time work a Sinkhorn folder may do: elements x iterations. 2^22
/// is about a second of folding at worst; a larger constant stays an op and
/// is computed at run time.
static bool withinFoldBudget(int64_t numElements, int64_t iterations) {
  constexpr int64_t kMaxFoldWork = int64_t(1) << 22;
  int64_t work;
  return !llvm::MulOverflow(numElements, iterations, work) &&
         work <= kMaxFoldWork;
}

/// The checks shared by sinkhorn and sinkhorn_grad: square trailing n x n
/// logits, iterations >= 1, eps >= 0.
static LogicalResult verifySinkhornShapes(Operation *op, RankedTensorType t,
                                          IntegerAttr iterationsAttr,
                                          FloatAttr eps) {
  if (failed(verifyTrailingStatic(op, t, "logits", 2, "[n, n]")))
    return failure();
  if (t.getDimSize(t.getRank() - 1) != t.getDimSize(t.getRank() - 2))
    return op->emitOpError() << "expects square n x n matrices in the last "
                                "two dims, got "
                             << t;
  if (t.getDimSize(t.getRank() - 1) < 1)
    return op->emitOpError() << "expects n >= 1 (non-empty n x n matrices), "
                                "got "
                             << t;
  int64_t iterations = iterationsAttr.getInt(); // the getter is unsigned
  if (iterations < 1)
    return op->emitOpError() << "expects 'iterations' >= 1, got " << iterations;
  return verifyNonNegative(op, eps, "eps");
}

LogicalResult SinkhornOp::verify() {
  if (failed(verifySinkhornShapes(*this, getLogits().getType(),
                                  getIterationsAttr(), getEpsAttr())))
    return failure();
  return verifyElementCounts(*this);
}

/// Divides every row (`columns` false) or column of the row-major n x n
/// matrix `p` by (its sum + eps).
static void normalizeLines(float *p, int64_t n, bool columns, float eps) {
  // Rows are lines of stride 1 that start n apart; columns are lines of
  // stride n that start 1 apart.
  int64_t lineStart = columns ? 1 : n, stride = columns ? n : 1;
  for (int64_t l = 0; l < n; ++l) {
    float *line = p + l * lineStart;
    float sum = 0.0f;
    for (int64_t k = 0; k < n; ++k)
      sum += line[k * stride];
    for (int64_t k = 0; k < n; ++k)
      line[k * stride] /= sum + eps;
  }
}

/// Row softmax with the row max subtracted, in place.
static void softmaxRows(float *p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float *row = p + i * n;
    float max = row[0];
    for (int64_t j = 1; j < n; ++j)
      max = std::max(max, row[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j)
      sum += row[j] = std::exp(row[j] - max);
    for (int64_t j = 0; j < n; ++j)
      row[j] = row[j] / sum;
  }
}

void mlir::mhc::sinkhornInPlace(float *p, int64_t n, int64_t iterations,
                                float eps) {
  // Row softmax (max subtracted) plus eps is the first row normalisation.
  softmaxRows(p, n);
  for (int64_t k = 0; k < n * n; ++k)
    p[k] += eps;
  normalizeLines(p, n, /*columns=*/true, eps);
  for (int64_t it = 1; it < iterations; ++it) {
    normalizeLines(p, n, /*columns=*/false, eps);
    normalizeLines(p, n, /*columns=*/true, eps);
  }
}

void mlir::mhc::sinkhornGradInPlace(const float *logits, float *g, int64_t n,
                                    int64_t iterations, float eps) {
  int64_t size = n * n;
  std::vector<float> p0(logits, logits + size);
  softmaxRows(p0.data(), n);
  // states[k] is the input of normalisation step k and states[k + 1] its
  // result; step 0 normalises the columns, then rows and columns alternate.
  int64_t steps = 2 * iterations - 1;
  std::vector<float> states((steps + 1) * size);
  for (int64_t k = 0; k < size; ++k)
    states[k] = p0[k] + eps;
  auto isColumnStep = [](int64_t step) { return step % 2 == 0; };
  for (int64_t step = 0; step < steps; ++step) {
    float *next = states.data() + (step + 1) * size;
    std::copy_n(states.data() + step * size, size, next);
    normalizeLines(next, n, isColumnStep(step), eps);
  }
  // Y = X / (s + eps), s = sum of the line of X: the cotangent of X is
  // (g - sum of the line of g * Y) / (s + eps).
  for (int64_t step = steps - 1; step >= 0; --step) {
    const float *x = states.data() + step * size;
    const float *y = x + size;
    bool columns = isColumnStep(step);
    int64_t lineStart = columns ? 1 : n, stride = columns ? n : 1;
    for (int64_t l = 0; l < n; ++l) {
      int64_t first = l * lineStart;
      float sum = 0.0f, dot = 0.0f;
      for (int64_t k = 0; k < n; ++k) {
        sum += x[first + k * stride];
        dot += g[first + k * stride] * y[first + k * stride];
      }
      for (int64_t k = 0; k < n; ++k)
        g[first + k * stride] = (g[first + k * stride] - dot) / (sum + eps);
    }
  }
  // Through the softmax (its "+ eps" passes g through).
  for (int64_t i = 0; i < n; ++i) {
    float dot = 0.0f;
    for (int64_t j = 0; j < n; ++j)
      dot += g[i * n + j] * p0[i * n + j];
    for (int64_t j = 0; j < n; ++j)
      g[i * n + j] = p0[i * n + j] * (g[i * n + j] - dot);
  }
}

OpFoldResult SinkhornOp::fold(FoldAdaptor adaptor) {
  auto input = dyn_cast_if_present<DenseFPElementsAttr>(adaptor.getLogits());
  auto type = getType();
  if (!input || !type.hasStaticShape() ||
      !withinFoldBudget(type.getNumElements(), getIterations()))
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

/// The shape relations shared by pre_apply and pre_apply_grad: x [..., n, C],
/// pre [..., n] and a per-token [..., C] tensor (u, or its cotangent), named
/// `name`, all with x's leading dims; `widthDescription` names its C. The
/// element types are each op's own check.
static LogicalResult verifyPreApplyShapes(Operation *op, RankedTensorType x,
                                          RankedTensorType pre,
                                          RankedTensorType u, StringRef name,
                                          StringRef widthDescription) {
  if (failed(verifyTrailingStatic(op, x, "x", 2, "[n, C]")) ||
      failed(verifyTrailingStatic(op, pre, "pre", 1, "[n]")) ||
      failed(verifyTrailingStatic(op, u, name, 1, "[C]")))
    return failure();
  int64_t n = x.getDimSize(x.getRank() - 2), c = x.getShape().back();
  if (failed(verifyStreamSizes(op, n, c)))
    return failure();
  if (failed(verifyDim(op, pre.getShape().back(), n,
                       "the last dim of pre (= n of x)")) ||
      failed(verifyDim(op, u.getShape().back(), c, widthDescription)) ||
      failed(verifyLeadingMatch(op, leadingDims(pre, 1), "pre",
                                leadingDims(x, 2), "x")) ||
      failed(verifyLeadingMatch(op, leadingDims(u, 1), name,
                                leadingDims(x, 2), "x")))
    return failure();
  return success();
}

LogicalResult PreApplyOp::verify() {
  auto x = getX().getType();
  auto u = getU().getType();
  if (failed(verifyPreApplyShapes(*this, x, getPre().getType(), u, "result",
                                  "the result's width C (= x's)")) ||
      failed(verifySameElementType(*this, x, "x", u, "result")))
    return failure();
  return verifyElementCounts(*this);
}

//===----------------------------------------------------------------------===//
// RmsNormOp
//===----------------------------------------------------------------------===//

/// The relations shared by rms_norm and rms_norm_grad: u [..., C] with a
/// static C >= 1, weight [C] of u's element type or f32, and a finite,
/// non-negative eps.
static LogicalResult verifyRmsNormShapes(Operation *op, RankedTensorType u,
                                         RankedTensorType weight,
                                         FloatAttr eps) {
  if (failed(verifyTrailingStatic(op, u, "u", 1, "[C]")))
    return failure();
  int64_t c = u.getShape().back();
  if (c < 1)
    return op->emitOpError() << "expects u of width C >= 1, got C = " << c;
  if (weight.getRank() != 1)
    return op->emitOpError() << "expects weight of shape [C], got " << weight;
  if (failed(verifyDim(op, weight.getDimSize(0), c,
                       "the size of weight (= C of u)")))
    return failure();
  Type we = weight.getElementType();
  if (we != u.getElementType() && !we.isF32())
    return op->emitOpError() << "expects weight of u's element type or f32, "
                                "got "
                             << we << " with u of " << u.getElementType();
  return verifyNonNegative(op, eps, "eps");
}

LogicalResult RmsNormOp::verify() {
  if (failed(verifyRmsNormShapes(*this, getU().getType(),
                                 getWeight().getType(), getEpsAttr())))
    return failure();
  return verifyElementCounts(*this);
}

//===----------------------------------------------------------------------===//
// PostResOp
//===----------------------------------------------------------------------===//

/// The shape relations shared by post_res and post_res_grad: y [..., C],
/// x [..., n, C], post [..., n], comb [..., n, n] and a per-token [..., n, C]
/// tensor (the result, or its cotangent) named `name`, all with x's leading
/// dims and y's and `name`'s element type x's; `streamDescription` and
/// `widthDescription` name its n and C.
static LogicalResult verifyPostResShapes(Operation *op, RankedTensorType y,
                                         RankedTensorType x,
                                         RankedTensorType post,
                                         RankedTensorType comb,
                                         RankedTensorType out, StringRef name,
                                         StringRef streamDescription,
                                         StringRef widthDescription) {
  if (failed(verifyTrailingStatic(op, x, "x", 2, "[n, C]")) ||
      failed(verifyTrailingStatic(op, y, "y", 1, "[C]")) ||
      failed(verifyTrailingStatic(op, post, "post", 1, "[n]")) ||
      failed(verifyTrailingStatic(op, comb, "comb", 2, "[n, n]")) ||
      failed(verifyTrailingStatic(op, out, name, 2, "[n, C]")))
    return failure();
  int64_t n = x.getDimSize(x.getRank() - 2), c = x.getShape().back();
  if (failed(verifyStreamSizes(op, n, c)))
    return failure();
  int64_t rank = comb.getRank();
  ArrayRef<int64_t> lead = leadingDims(x, 2);
  if (failed(verifyDim(op, y.getShape().back(), c,
                       "the width of y (= C of x)")) ||
      failed(verifyDim(op, post.getShape().back(), n,
                       "the last dim of post (= n of x)")) ||
      failed(verifyDim(op, comb.getDimSize(rank - 2), n,
                       "the source dim of comb (= n of x)")) ||
      failed(verifyDim(op, comb.getDimSize(rank - 1), n,
                       "the destination dim of comb (= n of x)")) ||
      failed(verifyDim(op, out.getDimSize(out.getRank() - 2), n,
                       streamDescription)) ||
      failed(verifyDim(op, out.getShape().back(), c, widthDescription)) ||
      failed(verifyLeadingMatch(op, leadingDims(y, 1), "y", lead, "x")) ||
      failed(verifyLeadingMatch(op, leadingDims(post, 1), "post", lead, "x")) ||
      failed(verifyLeadingMatch(op, leadingDims(comb, 2), "comb", lead, "x")) ||
      failed(verifyLeadingMatch(op, leadingDims(out, 2), name, lead, "x")) ||
      failed(verifySameElementType(op, y, "y", x, "x")) ||
      failed(verifySameElementType(op, out, name, x, "x")))
    return failure();
  return success();
}

LogicalResult PostResOp::verify() {
  if (failed(verifyPostResShapes(
          *this, getY().getType(), getX().getType(), getPost().getType(),
          getComb().getType(), getResult().getType(), "result",
          "the result's stream dim (= n of x)",
          "the result's width C (= x's)")))
    return failure();
  return verifyElementCounts(*this);
}

//===----------------------------------------------------------------------===//
// Gradient ops
//===----------------------------------------------------------------------===//

/// A zero tensor of `like`'s type; dynamic dims are read from `like`.
static Value zerosLike(OpBuilder &b, Location loc, Value like) {
  auto type = cast<RankedTensorType>(like.getType());
  TypedAttr zero = b.getFloatAttr(type.getElementType(), 0.0);
  if (type.hasStaticShape())
    return arith::ConstantOp::create(b, loc,
                                     DenseElementsAttr::get(type, zero));
  SmallVector<Value> dynamicSizes;
  for (int64_t i = 0; i < type.getRank(); ++i)
    if (type.isDynamicDim(i))
      dynamicSizes.push_back(tensor::DimOp::create(b, loc, like, i));
  Value scalar = arith::ConstantOp::create(b, loc, zero);
  return tensor::SplatOp::create(b, loc, type, scalar, dynamicSizes);
}

/// Whether `v` is all zeros: a zero constant or a splat of zero, possibly
/// behind tensor.casts (how a zero of a dynamic shape is written).
static bool isZeroTensor(Value v) {
  while (auto cast = v.getDefiningOp<tensor::CastOp>())
    v = cast.getSource();
  if (auto splat = v.getDefiningOp<tensor::SplatOp>())
    v = splat.getInput();
  return matchPattern(v, m_AnyZeroFloat());
}

namespace {
/// A vector-Jacobian product is linear in the cotangents: when all of them
/// are zero constants, every gradient is zero. (With non-finite primal
/// values the computed op could give NaN where this gives 0, as symbolic
/// zeros do in autodiff systems.) Every gradient op lists its cotangents
/// after its forward operands, and result k is the cotangent of operand k.
template <typename OpTy> struct ZeroCotangents : OpRewritePattern<OpTy> {
  using OpRewritePattern<OpTy>::OpRewritePattern;
  LogicalResult matchAndRewrite(OpTy op,
                                PatternRewriter &rewriter) const override {
    unsigned numResults = op->getNumResults();
    for (Value cotangent : op->getOperands().drop_front(numResults))
      if (!isZeroTensor(cotangent))
        return failure();
    SmallVector<Value> zeros;
    for (Value primal : op->getOperands().take_front(numResults))
      zeros.push_back(zerosLike(rewriter, op.getLoc(), primal));
    rewriter.replaceOp(op, zeros);
    return success();
  }
};
} // namespace

LogicalResult NormProjectGradOp::verify() {
  if (failed(verifyNormProjectShapes(*this, getX().getType(),
                                     getFn().getType(), getEpsAttr(),
                                     getDmix().getType(), "dmix",
                                     "the last dim of dmix (M = n*n + 2n)")))
    return failure();
  return verifyElementCounts(*this);
}

void NormProjectGradOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                                    MLIRContext *context) {
  results.add<ZeroCotangents<NormProjectGradOp>>(context);
}

LogicalResult SplitMixesGradOp::verify() {
  if (failed(verifySplitMixesShapes(
          *this, getMix().getType(), getScale().getType(), getBase().getType(),
          getPreEpsAttr(), getPostMultAttr(),
          {getDpre().getType(), getDpost().getType(), getDlogits().getType()},
          {"dpre", "dpost", "dlogits"})))
    return failure();
  return verifyElementCounts(*this);
}

void SplitMixesGradOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                                   MLIRContext *context) {
  results.add<ZeroCotangents<SplitMixesGradOp>>(context);
}

LogicalResult SinkhornGradOp::verify() {
  if (failed(verifySinkhornShapes(*this, getLogits().getType(),
                                  getIterationsAttr(), getEpsAttr())))
    return failure();
  int64_t iterations = getIterationsAttr().getInt();
  if (iterations > kMaxSinkhornGradIterations)
    return emitOpError() << "expects 'iterations' <= "
                         << kMaxSinkhornGradIterations
                         << " (the backward replays every normalisation), got "
                         << iterations;
  return verifyElementCounts(*this);
}

OpFoldResult SinkhornGradOp::fold(FoldAdaptor adaptor) {
  auto logits = dyn_cast_if_present<DenseFPElementsAttr>(adaptor.getLogits());
  auto dcomb = dyn_cast_if_present<DenseFPElementsAttr>(adaptor.getDcomb());
  auto type = getType();
  if (!logits || !dcomb || !type.hasStaticShape() ||
      !withinFoldBudget(type.getNumElements(), getIterations()))
    return {};
  SmallVector<float> l = llvm::to_vector(logits.getValues<float>());
  SmallVector<float> g = llvm::to_vector(dcomb.getValues<float>());
  int64_t n = type.getShape().back();
  for (size_t start = 0; start < g.size(); start += n * n)
    sinkhornGradInPlace(l.data() + start, g.data() + start, n, getIterations(),
                        getEps().convertToFloat());
  return DenseElementsAttr::get(type, ArrayRef<float>(g));
}

void SinkhornGradOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                                 MLIRContext *context) {
  results.add<ZeroCotangents<SinkhornGradOp>>(context);
}

LogicalResult PreApplyGradOp::verify() {
  auto x = getX().getType();
  auto du = getDu().getType();
  if (failed(verifyPreApplyShapes(*this, x, getPre().getType(), du, "du",
                                  "the width of du (= C of x)")) ||
      failed(verifySameElementType(*this, du, "du", x, "x")))
    return failure();
  return verifyElementCounts(*this);
}

void PreApplyGradOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                                 MLIRContext *context) {
  results.add<ZeroCotangents<PreApplyGradOp>>(context);
}

LogicalResult RmsNormGradOp::verify() {
  auto u = getU().getType();
  auto dout = getDout().getType();
  if (failed(verifyRmsNormShapes(*this, u, getWeight().getType(),
                                 getEpsAttr())) ||
      failed(verifySameElementType(*this, dout, "dout", u, "u")))
    return failure();
  if (dout.getRank() != u.getRank())
    return emitOpError() << "expects dout of u's rank, got " << dout
                         << " with u " << u;
  if (failed(verifyDim(*this, dout.getShape().back(), u.getShape().back(),
                       "the width of dout (= C of u)")) ||
      failed(verifyLeadingMatch(*this, leadingDims(dout, 1), "dout",
                                leadingDims(u, 1), "u")))
    return failure();
  return verifyElementCounts(*this);
}

void RmsNormGradOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                                MLIRContext *context) {
  results.add<ZeroCotangents<RmsNormGradOp>>(context);
}

LogicalResult PostResGradOp::verify() {
  if (failed(verifyPostResShapes(
          *this, getY().getType(), getX().getType(), getPost().getType(),
          getComb().getType(), getDout().getType(), "dout",
          "the stream dim of dout (= n of x)", "the width of dout (= C of x)")))
    return failure();
  return verifyElementCounts(*this);
}

void PostResGradOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                                MLIRContext *context) {
  results.add<ZeroCotangents<PostResGradOp>>(context);
}

//===----------------------------------------------------------------------===//
// FusedOp
//===----------------------------------------------------------------------===//

LogicalResult FusedOp::verify() {
  static const StringRef kinds[] = {"pre", "post", "backward",
                                    "post_backward", "pre_backward"};
  if (!llvm::is_contained(kinds, getKind()))
    return emitOpError() << "expects kind \"pre\", \"post\", \"backward\", "
                            "\"post_backward\" or \"pre_backward\", got \""
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
