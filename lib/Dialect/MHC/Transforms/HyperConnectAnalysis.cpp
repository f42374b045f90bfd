//===- HyperConnectAnalysis.cpp - find residual chains --------------------===//
//
// A residual add is `r = x + y` where y depends on x: x is the residual
// operand and y = F(x) the branch. F is every op that depends on x and feeds
// y. The block is rewritable only if nothing F computes is used outside F
// (other than by the add). Blocks chain when the result of one is the
// residual of the next, possibly through dtype conversions (extf/truncf).
//
//===----------------------------------------------------------------------===//
#include "HyperConnectAnalysis.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Tosa/IR/TosaOps.h"
#include "mlir/IR/Matchers.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace mlir::mhc::hyperconnect;

namespace {

/// An add that looked like a candidate: its two operands, or why it is not
/// usable (broadcasting, mixed types).
struct AddMatch {
  bool isAdd = false;
  Value lhs, rhs;
  std::string why; // non-empty: an add, but not a usable one
};

bool allIdentityParallel(linalg::LinalgOp op) {
  return llvm::all_of(op.getIndexingMapsArray(),
                      [](AffineMap m) { return m.isIdentity(); }) &&
         llvm::all_of(op.getIteratorTypesArray(), [](utils::IteratorType t) {
           return t == utils::IteratorType::parallel;
         });
}

/// `v` with a multiplication by the constant 1.0 peeled off (torch-mlir
/// writes `a + alpha * b` with alpha = 1 into the add's payload).
Value peelUnitScale(Value v) {
  auto mul = v.getDefiningOp<arith::MulFOp>();
  if (!mul)
    return v;
  for (int i = 0; i < 2; ++i) {
    Value c = mul->getOperand(i);
    while (auto conv = c.getDefiningOp<arith::TruncFOp>())
      c = conv.getIn();
    while (auto conv = c.getDefiningOp<arith::ExtFOp>())
      c = conv.getIn();
    FloatAttr attr;
    if (matchPattern(c, m_Constant(&attr)) && attr.getValueAsDouble() == 1.0)
      return mul->getOperand(1 - i);
  }
  return v;
}

/// True if the payload of `generic` is `yield(addf(in0, in1))` in either
/// operand order (a unit scale on one side allowed).
bool isAddPayload(linalg::GenericOp generic) {
  Block &body = generic.getRegion().front();
  auto yield = cast<linalg::YieldOp>(body.getTerminator());
  if (yield.getNumOperands() != 1)
    return false;
  auto add = yield.getOperand(0).getDefiningOp<arith::AddFOp>();
  if (!add || add->getBlock() != &body)
    return false;
  Value a = peelUnitScale(add.getLhs()), b = peelUnitScale(add.getRhs());
  Value in0 = body.getArgument(0), in1 = body.getArgument(1);
  if (!((a == in0 && b == in1) || (a == in1 && b == in0)))
    return false;
  // Nothing else in the payload but the add, the unit scales and constants.
  for (Operation &op : body.without_terminator())
    if (&op != add.getOperation() && !isa<arith::MulFOp>(op) &&
        !op.hasTrait<OpTrait::ConstantLike>() &&
        !isa<arith::TruncFOp, arith::ExtFOp>(op))
      return false;
  return true;
}

AddMatch matchAdd(Operation *op) {
  AddMatch m;
  auto sameTypes = [&](Value a, Value b, Value r) {
    if (a.getType() == r.getType() && b.getType() == r.getType())
      return true;
    auto ta = dyn_cast<ShapedType>(a.getType());
    auto tb = dyn_cast<ShapedType>(b.getType());
    auto tr = dyn_cast<ShapedType>(r.getType());
    m.why = (ta && tb && tr && (ta.getShape() != tr.getShape() ||
                                tb.getShape() != tr.getShape()))
                ? "the operands broadcast (shapes differ from the result's)"
                : "the operand and result types differ";
    return false;
  };
  if (auto add = dyn_cast<arith::AddFOp>(op)) {
    if (!isa<RankedTensorType>(add.getType()))
      return m;
    m.isAdd = true;
    m.lhs = add.getLhs();
    m.rhs = add.getRhs();
    return m;
  }
  if (auto add = dyn_cast<tosa::AddOp>(op)) {
    m.isAdd = true;
    m.lhs = add.getInput1();
    m.rhs = add.getInput2();
    if (!isa<RankedTensorType>(add.getType())) {
      m.why = "the result is not a ranked tensor";
      return m;
    }
    if (!isa<FloatType>(getElementTypeOrSelf(add.getType()))) {
      m.isAdd = false;
      return m;
    }
    sameTypes(m.lhs, m.rhs, add.getResult());
    return m;
  }
  auto linalgOp = dyn_cast<linalg::LinalgOp>(op);
  if (!linalgOp || !isa<linalg::AddOp, linalg::GenericOp>(op) ||
      linalgOp.getNumDpsInputs() != 2 || linalgOp.getNumDpsInits() != 1 ||
      op->getNumResults() != 1 || !linalgOp.hasPureTensorSemantics())
    return m;
  if (!isa<FloatType>(getElementTypeOrSelf(op->getResult(0).getType())))
    return m;
  if (auto generic = dyn_cast<linalg::GenericOp>(op))
    if (!isAddPayload(generic))
      return m;
  m.isAdd = true;
  m.lhs = linalgOp.getDpsInputs()[0];
  m.rhs = linalgOp.getDpsInputs()[1];
  if (!sameTypes(m.lhs, m.rhs, op->getResult(0)))
    return m;
  if (!allIdentityParallel(linalgOp))
    m.why = "the operands broadcast (indexing maps are not all identities)";
  return m;
}

/// Program positions of the ops of one block, and bounded dependence walks
/// over them. A value can only depend on ops placed at or after the first
/// use of the value it is traced to, so each walk stops there: a residual
/// add's walk then covers its own block, not the whole model above it.
class DependenceWalker {
public:
  DependenceWalker(Block *top, uint64_t &steps) : top(top), steps(steps) {
    unsigned i = 0;
    for (Operation &op : *top)
      position[&op] = i++;
  }

  /// Position of the first op of the block that uses `v` (directly or in a
  /// nested region); the end of the block if there is none.
  unsigned firstUse(Value v) {
    auto [it, inserted] = firstUseMemo.try_emplace(v, position.size());
    if (!inserted)
      return it->second;
    for (Operation *user : v.getUsers()) {
      ++steps;
      if (Operation *owner = top->findAncestorOpInBlock(*user))
        it->second = std::min(it->second, position.lookup(owner));
    }
    return it->second;
  }

  /// Collects into `cone` the ops of the block that `v` depends on and that
  /// are placed at or after the first use of `target`; returns whether `v`
  /// depends on `target` (or is it).
  bool dependsOn(Value v, Value target, DenseSet<Operation *> &cone) {
    unsigned from = firstUse(target);
    bool found = v == target;
    SmallVector<Value> work{v};
    while (!work.empty()) {
      Value cur = work.pop_back_val();
      if (isa<BlockArgument>(cur))
        continue;
      Operation *def = top->findAncestorOpInBlock(*cur.getDefiningOp());
      if (!def || position.lookup(def) < from || !cone.insert(def).second)
        continue;
      // Operands of the op and of everything nested in it (captured values).
      def->walk([&](Operation *nested) {
        ++steps;
        for (Value operand : nested->getOperands()) {
          found |= operand == target;
          work.push_back(operand);
        }
      });
    }
    return found;
  }

private:
  Block *top;
  uint64_t &steps;
  DenseMap<Operation *, unsigned> position;
  DenseMap<Value, unsigned> firstUseMemo;
};

bool isSupportedStreamType(Type t, std::string &why) {
  auto type = dyn_cast<RankedTensorType>(t);
  if (!type || type.getRank() < 1) {
    why = "the stream is not a ranked tensor of rank >= 1";
    return false;
  }
  if (!type.getElementType().isBF16() && !type.getElementType().isF16() &&
      !type.getElementType().isF32()) {
    why = "the stream's element type is not bf16, f16 or f32";
    return false;
  }
  if (ShapedType::isDynamic(type.getShape().back())) {
    why = "the stream's last dim (the width C) is dynamic";
    return false;
  }
  return true;
}

std::string describe(Operation *op) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << "'" << op->getName() << "'";
  return s;
}

} // namespace

bool mlir::mhc::hyperconnect::keepsStreamShape(Operation *op) {
  return !isa<tensor::CastOp, tensor::ExpandShapeOp, tensor::CollapseShapeOp>(op);
}

Value mlir::mhc::hyperconnect::streamViewSource(Operation *op) {
  if (!op)
    return {};
  auto sameShape = [](Value a, Value b) {
    auto ta = dyn_cast<RankedTensorType>(a.getType());
    auto tb = dyn_cast<RankedTensorType>(b.getType());
    return ta && tb && ta.getShape() == tb.getShape();
  };
  // A reshape that keeps the last dim (the width C) as a group of its own:
  // the widened stream [..., n, C] can take the same reshape.
  auto lastDimAlone = [](ArrayRef<ReassociationIndices> groups,
                         RankedTensorType src, RankedTensorType dst) {
    return !groups.empty() && groups.back().size() == 1 &&
           !ShapedType::isDynamic(src.getShape().back()) &&
           src.getShape().back() == dst.getShape().back();
  };
  if (auto cast = dyn_cast<tensor::CastOp>(op)) {
    auto src = dyn_cast<RankedTensorType>(cast.getSource().getType());
    auto dst = dyn_cast<RankedTensorType>(cast.getType());
    return src && dst && src.getRank() == dst.getRank() && src.getRank() >= 1 &&
                   src.getShape().back() == dst.getShape().back()
               ? cast.getSource()
               : Value();
  }
  if (auto collapse = dyn_cast<tensor::CollapseShapeOp>(op))
    return lastDimAlone(collapse.getReassociationIndices(),
                        collapse.getSrcType(), collapse.getResultType())
               ? collapse.getSrc()
               : Value();
  if (auto expand = dyn_cast<tensor::ExpandShapeOp>(op))
    return lastDimAlone(expand.getReassociationIndices(), expand.getSrcType(),
                        expand.getResultType())
               ? expand.getSrc()
               : Value();
  if (isa<arith::ExtFOp, arith::TruncFOp>(op))
    return sameShape(op->getOperand(0), op->getResult(0)) ? op->getOperand(0)
                                                          : Value();
  auto generic = dyn_cast<linalg::GenericOp>(op);
  if (!generic || generic.getNumDpsInputs() != 1 ||
      generic.getNumDpsInits() != 1 || generic->getNumResults() != 1 ||
      !generic.hasPureTensorSemantics() || !allIdentityParallel(generic))
    return {};
  Block &body = generic.getRegion().front();
  if (body.getOperations().size() != 2)
    return {};
  Operation &conv = body.front();
  if (!isa<arith::ExtFOp, arith::TruncFOp>(conv) ||
      conv.getOperand(0) != body.getArgument(0) ||
      body.getTerminator()->getOperand(0) != conv.getResult(0))
    return {};
  Value in = generic.getDpsInputs()[0];
  return sameShape(in, generic->getResult(0)) ? in : Value();
}

ChainAnalysis mlir::mhc::hyperconnect::analyzeFunction(func::FuncOp func,
                                                        int64_t minBlocks) {
  ChainAnalysis result;
  if (func.isExternal())
    return result;
  Block *top = &func.getBody().front();
  DependenceWalker walker(top, result.steps);

  std::vector<ResidualBlock> blocks;
  for (Operation &op : *top) {
    AddMatch m = matchAdd(&op);
    if (!m.isAdd)
      continue;
    if (!m.why.empty()) {
      result.skipped.push_back({&op, m.why});
      continue;
    }
    // The residual operand is the one the other operand depends on; look
    // through dtype conversions to the stream it carries.
    auto strip = [](Value v, SmallVector<Operation *> &path) {
      while (Value src = streamViewSource(v.getDefiningOp())) {
        path.insert(path.begin(), v.getDefiningOp());
        v = src;
      }
      return v;
    };
    ResidualBlock b;
    b.add = &op;
    b.result = op.getResult(0);
    bool found = false;
    std::string why = "neither operand depends on the other (not x + F(x))";
    for (auto [x, y] : {std::pair(m.lhs, m.rhs), std::pair(m.rhs, m.lhs)}) {
      SmallVector<Operation *> path;
      Value stream = strip(x, path);
      DenseSet<Operation *> backOps;
      if (!walker.dependsOn(y, stream, backOps))
        continue;
      SmallVector<Operation *> yPath;
      if (strip(y, yPath) == stream) {
        why = "the branch is only a conversion of the residual";
        continue;
      }
      b.residual = x;
      b.branch = y;
      b.stream = stream;
      b.path = std::move(path);
      // F: ops depending on the stream (or a path value) that feed y.
      SmallVector<Value> work{stream};
      for (Operation *p : b.path)
        work.push_back(p->getResult(0));
      while (!work.empty()) {
        Value v = work.pop_back_val();
        for (Operation *user : v.getUsers()) {
          ++result.steps;
          Operation *owner = top->findAncestorOpInBlock(*user);
          if (!owner || owner == &op || llvm::is_contained(b.path, owner) ||
              !backOps.contains(owner) || !b.body.insert(owner).second)
            continue;
          for (Value r : owner->getResults())
            work.push_back(r);
        }
      }
      found = true;
      break;
    }
    if (!found) {
      result.skipped.push_back({&op, why});
      continue;
    }
    ++result.residualAdds;
    // Nothing F computes may be used outside F (other than by the add).
    Operation *escape = nullptr;
    for (Operation *inner : b.body)
      for (Operation *user : inner->getUsers()) {
        Operation *owner = top->findAncestorOpInBlock(*user);
        if (owner != &op && !b.body.contains(owner))
          escape = owner ? owner : user;
      }
    if (escape) {
      result.skipped.push_back(
          {&op, "the branch escapes: " + describe(escape) +
                    " outside the block uses a value computed in it"});
      continue;
    }
    // Across a reshape the coefficients are computed after the last reshape
    // (where the stream has the add's shape), so F may read the stream only
    // from there on.
    for (auto [i, p] : llvm::enumerate(b.path))
      if (!keepsStreamShape(p))
        b.coeffAt = i;
    if (b.coeffAt >= 0) {
      auto readByBranch = [&](Value v) {
        return llvm::any_of(v.getUsers(), [&](Operation *u) {
          return b.body.contains(top->findAncestorOpInBlock(*u));
        });
      };
      bool early = readByBranch(b.stream);
      for (int64_t i = 0; i < b.coeffAt; ++i)
        early |= readByBranch(b.path[i]->getResult(0));
      if (early) {
        result.skipped.push_back(
            {&op, "the branch reads the stream before the reshape on the way "
                  "to the add"});
        continue;
      }
    }
    std::string typeWhy;
    if (!isSupportedStreamType(b.stream.getType(), typeWhy) ||
        !isSupportedStreamType(b.residual.getType(), typeWhy)) {
      result.skipped.push_back({&op, typeWhy});
      continue;
    }
    blocks.push_back(std::move(b));
  }

  // A stream feeding two residual adds forks: not a chain, leave both alone.
  DenseMap<Value, int> streamUses;
  for (ResidualBlock &b : blocks)
    ++streamUses[b.stream];
  std::vector<ResidualBlock> linear;
  for (ResidualBlock &b : blocks) {
    if (streamUses[b.stream] > 1)
      result.skipped.push_back(
          {b.add, "its residual input also feeds another residual add"});
    else
      linear.push_back(std::move(b));
  }

  // Link: block j follows block i when j's stream is i's result.
  DenseMap<Value, unsigned> byResult;
  for (auto [i, b] : llvm::enumerate(linear))
    byResult[b.result] = i;
  SmallVector<int> next(linear.size(), -1);
  SmallVector<bool> hasPred(linear.size(), false);
  for (auto [j, b] : llvm::enumerate(linear)) {
    auto it = byResult.find(b.stream);
    if (it == byResult.end())
      continue;
    next[it->second] = j;
    hasPred[j] = true;
  }
  for (unsigned start = 0; start < linear.size(); ++start) {
    if (hasPred[start])
      continue;
    std::vector<ResidualBlock> chain;
    for (int i = start; i >= 0; i = next[i])
      chain.push_back(std::move(linear[i]));
    if (static_cast<int64_t>(chain.size()) < minBlocks) {
      for (ResidualBlock &b : chain)
        result.skipped.push_back(
            {b.add, "it is in a chain of " + std::to_string(chain.size()) +
                        " residual block(s), fewer than min-blocks=" +
                        std::to_string(minBlocks) +
                        " (a lone x + f(x) is usually part of an "
                        "activation, e.g. GELU's x + 0.044715 x^3)"});
      continue;
    }
    result.chains.push_back(std::move(chain));
  }
  return result;
}
