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
#include "mlir/Dialect/ControlFlow/IR/ControlFlowOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/Utils/Utils.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Tosa/IR/TosaOps.h"
#include "mlir/IR/Matchers.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
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
    m.why = (ta && tb && tr &&
             (ta.getShape() != tr.getShape() || tb.getShape() != tr.getShape()))
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

/// True if `use` reads only the shape of its value (tensor.dim): the widened
/// stream and the sublayer input u have the stream's token dims, so such a
/// read is no data dependence.
bool readsOnlyShape(OpOperand &use) {
  auto dim = dyn_cast<tensor::DimOp>(use.getOwner());
  return dim && use.get() == dim.getSource();
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
        for (OpOperand &operand : nested->getOpOperands()) {
          if (readsOnlyShape(operand))
            continue;
          found |= operand.get() == target;
          work.push_back(operand.get());
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
  return !isa<tensor::CastOp, tensor::ExpandShapeOp, tensor::CollapseShapeOp,
              tosa::ReshapeOp>(op);
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
  // tosa.reshape with static shapes that keeps the last dim: it only
  // regroups the token dims, so [..., n, C] can take the same regrouping.
  if (auto reshape = dyn_cast<tosa::ReshapeOp>(op)) {
    auto src = dyn_cast<RankedTensorType>(reshape.getInput1().getType());
    auto dst = dyn_cast<RankedTensorType>(reshape.getType());
    return src && dst && src.hasStaticShape() && dst.hasStaticShape() &&
                   src.getRank() >= 1 && dst.getRank() >= 1 &&
                   src.getShape().back() == dst.getShape().back()
               ? reshape.getInput1()
               : Value();
  }
  if (isa<arith::ExtFOp, arith::TruncFOp>(op))
    return sameShape(op->getOperand(0), op->getResult(0)) ? op->getOperand(0)
                                                          : Value();
  // tosa.cast between float types: a dtype conversion.
  if (auto cast = dyn_cast<tosa::CastOp>(op))
    return isa<FloatType>(getElementTypeOrSelf(cast.getInput().getType())) &&
                   isa<FloatType>(getElementTypeOrSelf(cast.getType())) &&
                   sameShape(cast.getInput(), cast.getResult())
               ? cast.getInput()
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

namespace {

/// For a block that chains with no other: the first op on the way from its
/// result (through views) to another residual add's stream, when that way
/// goes through ops that are not views (e.g. a post-norm LayerNorm); null if
/// no stream is reached within a bounded search.
Operation *nonViewLink(Block *top, Value result, const DenseSet<Value> &streams,
                       uint64_t &steps) {
  SmallVector<Value> views{result};
  SmallVector<Operation *> firstOps;
  for (size_t i = 0; i < views.size(); ++i)
    for (Operation *user : views[i].getUsers()) {
      Operation *owner = top->findAncestorOpInBlock(*user);
      if (!owner)
        continue;
      if (streamViewSource(owner) == views[i])
        views.push_back(owner->getResult(0));
      else
        firstOps.push_back(owner);
    }
  constexpr size_t kBudget = 256; // ops per search: a norm is a dozen
  for (Operation *first : firstOps) {
    SmallVector<Operation *> work{first};
    DenseSet<Operation *> seen{first};
    for (size_t i = 0; i < work.size() && i < kBudget; ++i) {
      ++steps;
      for (Value v : work[i]->getResults()) {
        if (v != result && streams.contains(v))
          return first;
        for (Operation *user : v.getUsers())
          if (Operation *owner = top->findAncestorOpInBlock(*user))
            if (seen.insert(owner).second)
              work.push_back(owner);
      }
    }
  }
  return nullptr;
}

/// The stream `v` is a view of; the view ops go to `path` in program order.
Value stripViews(Value v, SmallVector<Operation *> &path) {
  while (Value src = streamViewSource(v.getDefiningOp())) {
    path.insert(path.begin(), v.getDefiningOp());
    v = src;
  }
  return v;
}

/// Ops that only check sizes: cf.assert, and pure ops all of whose users are
/// checks. Dynamic-shape exports compute `tensor.dim` + `arith.cmpi` of
/// values inside a block and assert on them; such checks may read F.
class SizeChecks {
public:
  explicit SizeChecks(Block *top) : top(top) {}

  bool isCheck(Operation *op) {
    if (auto it = memo.find(op); it != memo.end())
      return it->second;
    bool check = isa<cf::AssertOp>(op);
    if (!check && op->getNumRegions() == 0 && op->getNumResults() > 0 &&
        isMemoryEffectFree(op)) {
      check = true;
      for (Operation *user : op->getUsers()) {
        Operation *owner = top->findAncestorOpInBlock(*user);
        if (!owner || !isCheck(owner)) {
          check = false;
          break;
        }
      }
    }
    memo[op] = check;
    return check;
  }

private:
  Block *top;
  DenseMap<Operation *, bool> memo;
};

/// True if F is elementwise (no contraction, reduction or data movement):
/// an activation's inner `x + f(x)`, not a residual block.
bool isElementwiseBranch(const llvm::SmallPtrSetImpl<Operation *> &body) {
  return llvm::all_of(body, [](Operation *op) {
    if (auto linalgOp = dyn_cast<linalg::LinalgOp>(op))
      return isa<linalg::FillOp>(op) || linalg::isElementwise(linalgOp);
    return op->hasTrait<OpTrait::Elementwise>() ||
           op->hasTrait<OpTrait::ConstantLike>() || isa<tensor::EmptyOp>(op) ||
           isa<tosa::TanhOp, tosa::SigmoidOp, tosa::ErfOp, tosa::ExpOp,
               tosa::MulOp, tosa::AddOp, tosa::SubOp, tosa::PowOp,
               tosa::ClampOp, tosa::ConstOp, tosa::ConstShapeOp>(op);
  });
}

/// A residual add being analysed: its block, and for the later adds of a
/// parallel block written residual-first, the block whose input F reads.
struct Candidate {
  ResidualBlock block;
  /// Index of the first add of its parallel block (-1: it is the first).
  int leader = -1;
  /// Non-empty once the add is left alone.
  std::string rejected;
  /// Rejected for a reason that says it is not a residual block (an
  /// activation's inner add); such adds never cause a warning.
  bool notResidual = false;
};

} // namespace

ChainAnalysis mlir::mhc::hyperconnect::analyzeFunction(func::FuncOp func,
                                                       int64_t minBlocks) {
  ChainAnalysis result;
  if (func.isExternal())
    return result;
  Block *top = &func.getBody().front();
  DependenceWalker walker(top, result.steps);
  SizeChecks checks(top);

  auto skip = [&](Operation *add, std::string why, bool residual,
                  Type streamType) {
    result.skipped.push_back({add, std::move(why), residual, streamType});
  };

  // F: the ops that depend on `stream` (or on its `path` values) and feed
  // the branch, i.e. lie in its backward `cone`.
  auto branchBody = [&](Operation *add, Value stream,
                        ArrayRef<Operation *> path,
                        const DenseSet<Operation *> &cone,
                        llvm::SmallPtrSetImpl<Operation *> &body) {
    SmallVector<Value> work{stream};
    for (Operation *p : path)
      work.push_back(p->getResult(0));
    while (!work.empty()) {
      Value v = work.pop_back_val();
      for (OpOperand &use : v.getUses()) {
        ++result.steps;
        if (readsOnlyShape(use))
          continue;
        Operation *owner = top->findAncestorOpInBlock(*use.getOwner());
        if (!owner || owner == add || llvm::is_contained(path, owner) ||
            !cone.contains(owner) || !body.insert(owner).second)
          continue;
        for (Value r : owner->getResults())
          work.push_back(r);
      }
    }
  };

  // 1. Each add: a residual add x + F(x), the later add of a parallel block
  //    written residual-first ((x + F1) + F2 with F2 reading x), or neither.
  std::vector<Candidate> cands;
  DenseMap<Value, int> byResult;
  auto rootOf = [&](int i) {
    while (cands[i].leader >= 0)
      i = cands[i].leader;
    return i;
  };
  for (Operation &op : *top) {
    AddMatch m = matchAdd(&op);
    if (!m.isAdd)
      continue;
    if (!m.why.empty()) {
      skip(&op, m.why, /*residual=*/false, {});
      continue;
    }
    Candidate c;
    ResidualBlock &b = c.block;
    b.add = &op;
    b.result = op.getResult(0);
    bool found = false;
    std::string why = "neither operand depends on the other (not x + F(x))";
    for (auto [x, y] : {std::pair(m.lhs, m.rhs), std::pair(m.rhs, m.lhs)}) {
      SmallVector<Operation *> path;
      Value stream = stripViews(x, path);
      DenseSet<Operation *> cone;
      if (!walker.dependsOn(y, stream, cone))
        continue;
      SmallVector<Operation *> yPath;
      if (stripViews(y, yPath) == stream) {
        why = "the branch is only a conversion of the residual";
        continue;
      }
      b.residual = x;
      b.branch = y;
      b.stream = stream;
      b.path = std::move(path);
      branchBody(&op, stream, b.path, cone, b.body);
      found = true;
      break;
    }
    // (x + F1(x)) + F2(x): the outer add's operands are independent, but
    // one is (a view of) a residual add's result and the other reads that
    // add's input: together they are one parallel block, x + F1 + F2.
    for (auto [x, y] : {std::pair(m.lhs, m.rhs), std::pair(m.rhs, m.lhs)}) {
      if (found)
        break;
      SmallVector<Operation *> path;
      Value stream = stripViews(x, path);
      auto it = byResult.find(stream);
      if (it == byResult.end())
        continue;
      const ResidualBlock &first = cands[rootOf(it->second)].block;
      DenseSet<Operation *> cone;
      if (!walker.dependsOn(y, first.stream, cone))
        continue;
      b.residual = x;
      b.branch = y;
      b.stream = stream;
      b.path = std::move(path);
      c.leader = it->second;
      branchBody(&op, first.stream, first.path, cone, b.body);
      found = true;
    }
    if (!found) {
      skip(&op, why, /*residual=*/false, {});
      continue;
    }
    ++result.residualAdds;
    byResult[b.result] = cands.size();
    cands.push_back(std::move(c));
  }

  // 2. Per parallel block (a lone add is one too): its F is the union of
  //    its adds' branches, plus the size checks that read it. Nothing else
  //    may read F, and the stream types must be ones mhc carries.
  auto reject = [&](int i, std::string why) {
    if (cands[i].rejected.empty())
      cands[i].rejected = std::move(why);
  };
  SmallVector<SmallVector<int>> groups(cands.size());
  for (int i = 0, e = cands.size(); i < e; ++i)
    groups[rootOf(i)].push_back(i);
  for (int root = 0, e = cands.size(); root < e; ++root) {
    ArrayRef<int> group = groups[root];
    if (group.empty())
      continue;
    llvm::SmallPtrSet<Operation *, 32> body, adds;
    for (int i : group) {
      body.insert(cands[i].block.body.begin(), cands[i].block.body.end());
      adds.insert(cands[i].block.add);
    }
    std::string why;
    SmallVector<Operation *> work(body.begin(), body.end());
    while (!work.empty() && why.empty()) {
      Operation *inner = work.pop_back_val();
      for (OpOperand &use : inner->getUses()) {
        ++result.steps;
        // F computes the same shapes from u as from x.
        if (readsOnlyShape(use))
          continue;
        Operation *user = use.getOwner();
        Operation *owner = top->findAncestorOpInBlock(*user);
        if (owner && (body.contains(owner) || adds.contains(owner)))
          continue;
        if (owner && checks.isCheck(owner)) {
          body.insert(owner);
          work.push_back(owner);
          continue;
        }
        why = "the branch escapes: " + describe(owner ? owner : user) +
              " outside the block uses a value computed in it";
        break;
      }
    }
    // Across a reshape the coefficients are computed after the last reshape
    // (where the stream has the add's shape), so F may read the stream only
    // from there on.
    ResidualBlock &first = cands[root].block;
    for (auto [i, p] : llvm::enumerate(first.path))
      if (!keepsStreamShape(p))
        first.coeffAt = i;
    auto readByBranch = [&](Value v) {
      return llvm::any_of(v.getUsers(), [&](Operation *u) {
        return body.contains(top->findAncestorOpInBlock(*u));
      });
    };
    if (why.empty() && first.coeffAt >= 0) {
      bool early = readByBranch(first.stream);
      for (int64_t i = 0; i < first.coeffAt; ++i)
        early |= readByBranch(first.path[i]->getResult(0));
      if (early)
        why = "the branch reads the stream before the reshape on the way to "
              "the add";
    }
    for (int i : group) {
      ResidualBlock &b = cands[i].block;
      if (i != root)
        for (auto [k, p] : llvm::enumerate(b.path))
          if (!keepsStreamShape(p))
            b.coeffAt = k;
      if (why.empty() && isSupportedStreamType(b.stream.getType(), why))
        isSupportedStreamType(b.residual.getType(), why);
    }
    if (!why.empty()) {
      for (int i : group)
        reject(i, group.size() > 1
                      ? "in a parallel block that cannot be converted: " + why
                      : why);
      continue;
    }
    for (int i : group)
      cands[i].block.body = body;
  }

  // 3. A stream feeding two residual adds forks: not a chain.
  DenseMap<Value, int> streamUses;
  for (Candidate &c : cands)
    if (c.rejected.empty())
      ++streamUses[c.block.stream];
  for (Candidate &c : cands)
    if (c.rejected.empty() && streamUses[c.block.stream] > 1)
      c.rejected = "its residual input also feeds another residual add";
  // A parallel block is converted whole or not at all.
  auto propagateGroupRejections = [&] {
    for (int root = 0, e = cands.size(); root < e; ++root) {
      std::string why;
      for (int i : groups[root])
        if (why.empty() && !cands[i].rejected.empty())
          why = cands[i].rejected;
      if (!why.empty())
        for (int i : groups[root])
          reject(i, "in a parallel block with an add left alone: " + why);
    }
  };
  propagateGroupRejections();

  // 4. Chains: block j follows block i when j's stream is i's result.
  SmallVector<int> live;
  for (int i = 0, e = cands.size(); i < e; ++i)
    if (cands[i].rejected.empty())
      live.push_back(i);
  DenseMap<Value, int> liveByResult;
  for (int i : live)
    liveByResult[cands[i].block.result] = i;
  DenseMap<int, int> next;
  DenseSet<int> hasPred;
  for (int j : live) {
    auto it = liveByResult.find(cands[j].block.stream);
    if (it == liveByResult.end())
      continue;
    next[it->second] = j;
    hasPred.insert(j);
  }
  // Every stream and residual input, to tell what a lone block is near.
  DenseSet<Value> streams;
  for (Candidate &c : cands)
    streams.insert(c.block.stream);
  SmallVector<std::vector<int>> chains;
  for (int start : live) {
    if (hasPred.contains(start))
      continue;
    std::vector<int> chain{start};
    for (auto it = next.find(start); it != next.end();
         it = next.find(it->second))
      chain.push_back(it->second);
    if (static_cast<int64_t>(chain.size()) >= minBlocks) {
      chains.push_back(std::move(chain));
      continue;
    }
    std::string count = "it is in a chain of " + std::to_string(chain.size()) +
                        " residual block(s), fewer than min-blocks=" +
                        std::to_string(minBlocks);
    for (int i : chain) {
      Candidate &c = cands[i];
      if (isElementwiseBranch(c.block.body)) {
        c.rejected = count + ": its branch is elementwise, like the inner add "
                             "of an activation (GELU's x + 0.044715 x^3), "
                             "not a residual block";
        c.notResidual = true;
        continue;
      }
      if (Operation *via =
              nonViewLink(top, c.block.result, streams, result.steps))
        c.rejected = count +
                     ": its result reaches the next residual add only "
                     "through " +
                     describe(via) +
                     " (e.g. a post-norm LayerNorm), and chains link through "
                     "stream views only (dtype conversions, casts, reshapes "
                     "keeping the last dim)";
      else
        c.rejected = count + ": no other residual add reads its result or "
                             "produced its residual input";
    }
  }
  propagateGroupRejections();

  for (std::vector<int> &chain : chains) {
    if (llvm::any_of(chain, [&](int i) { return !cands[i].rejected.empty(); }))
      continue; // a parallel block in it was left alone
    std::vector<ResidualBlock> blocks;
    for (int i : chain)
      blocks.push_back(std::move(cands[i].block));
    result.chains.push_back(std::move(blocks));
  }
  for (Candidate &c : cands)
    if (!c.rejected.empty())
      skip(c.block.add, c.rejected, !c.notResidual, c.block.stream.getType());
  // Program order, as the remarks and notes are read.
  DenseMap<Operation *, unsigned> order;
  unsigned n = 0;
  for (Operation &op : *top)
    order[&op] = n++;
  llvm::sort(result.skipped, [&](const auto &a, const auto &b) {
    return order.lookup(a.add) < order.lookup(b.add);
  });
  return result;
}
