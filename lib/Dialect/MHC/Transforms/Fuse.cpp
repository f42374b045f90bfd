//===- Fuse.cpp - --mhc-fuse: dispatch formation ---------------------------===//
//
// Groups the mhc ops of each sublayer into the kernels they will become, the
// byte-optimal schedule of spec section 7:
//
//   "post": post_res(l) + the norm_project that reads its result (the next
//           sublayer's coefficients, computed while x_next is on chip);
//   "pre":  split_mixes + sinkhorn + pre_apply, plus the norm_project that
//           feeds split_mixes when no post group took it (the first sublayer)
//           and the rms_norm of pre_apply's u (the sublayer's pre-norm).
//
// and the gradient ops of each sublayer (the shape --mhc-generate-backward
// emits: split_mixes + sinkhorn recomputed from the saved mix, post_res_grad,
// pre_apply_grad, sinkhorn_grad, split_mixes_grad, norm_project_grad and the
// two arith.addf that sum dx) into
//
//   "backward":      all of them, when nothing runs between post_res_grad
//                    and pre_apply_grad (a standalone sublayer);
//   "post_backward": split_mixes + sinkhorn + post_res_grad (dy, dpost,
//                    dcomb), before an opaque sublayer's VJP that turns dy
//                    into du (or a post_res_grad alone whose dx is unused,
//                    post and comb given), and
//   "pre_backward":  the rest after it, with clones of split_mixes, sinkhorn
//                    and post_res_grad (for post_res_grad's dx, which the
//                    kernels compute in the same pass as the other two dx).
//
// Where du comes through the sublayer's pre-norm (rms_norm_grad of u =
// pre_apply(x, pre) made again, docs/PreNorm.md), those two join the group.
//
// A "backward" or "pre_backward" group also takes the lower sublayer's
// post_res_grad when only its dy is used and its dout is the group's dx (the
// dy fold: dy is computed where dx is made). In a whole-model backward every
// result of the lower post_res_grad is used; its dy is first split off into
// a post_res_grad of its own (splitDyForFold), which the fold then takes.
// `fold-dy=false` turns both off.
//
// A group is an mhc.fused op placed where its last member was; it yields
// every member result used outside. Ops that fit no group stay as they are
// (they become standalone kernels).
//
//===----------------------------------------------------------------------===//
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mhc/Utils/LinalgBuilders.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/SetVector.h"
#include <algorithm>

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCFUSE
#include "mhc/Dialect/MHC/Transforms/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;

/// The single user of `v` of type OpTy in `block`, if any (the first one).
template <typename OpTy>
static OpTy userOfType(Value v, Block *block) {
  for (Operation *user : v.getUsers())
    if (auto op = dyn_cast<OpTy>(user); op && op->getBlock() == block)
      return op;
  return nullptr;
}

/// Moving all members to the position of the last one keeps the IR valid iff
/// no outside user of a member result sits before that position.
static bool canGroupAtLast(ArrayRef<Operation *> members) {
  Operation *last = members.front();
  for (Operation *op : members)
    if (last->isBeforeInBlock(op))
      last = op;
  llvm::SmallPtrSet<Operation *, 8> inGroup(members.begin(), members.end());
  for (Operation *op : members)
    for (Value r : op->getResults())
      for (Operation *user : r.getUsers()) {
        if (inGroup.contains(user))
          continue;
        Operation *anc = last->getBlock()->findAncestorOpInBlock(*user);
        if (!anc || anc->isBeforeInBlock(last))
          return false;
      }
  return true;
}

/// Wraps `members` (all in one block) into an mhc.fused of `kind`.
static void formGroup(StringRef kind, SmallVector<Operation *> members) {
  llvm::sort(members,
             [](Operation *a, Operation *b) { return a->isBeforeInBlock(b); });
  llvm::SmallPtrSet<Operation *, 8> inGroup(members.begin(), members.end());
  SmallVector<Value> escaping;
  for (Operation *op : members)
    for (Value r : op->getResults())
      if (llvm::any_of(r.getUsers(),
                       [&](Operation *u) { return !inGroup.contains(u); }))
        escaping.push_back(r);

  Operation *last = members.back();
  OpBuilder b(last->getContext());
  b.setInsertionPointAfter(last);
  SmallVector<Type> types = llvm::map_to_vector(
      escaping, [](Value v) { return v.getType(); });
  auto fused = FusedOp::create(b, last->getLoc(), types, kind);
  Block *body = new Block();
  fused.getBody().push_back(body);
  for (auto [v, r] : llvm::zip(escaping, fused.getResults()))
    v.replaceUsesWithIf(r, [&](OpOperand &use) {
      return !inGroup.contains(use.getOwner());
    });
  for (Operation *op : members)
    op->moveBefore(body, body->end());
  b.setInsertionPointToEnd(body);
  YieldOp::create(b, last->getLoc(), escaping);
}


/// The ops of one sublayer's backward in --mhc-generate-backward's shape.
struct SublayerBackward {
  SplitMixesOp sm;
  SinkhornOp sk;
  PostResGradOp prg;
  PreApplyGradOp pag;
  SinkhornGradOp skg;
  SplitMixesGradOp smg;
  NormProjectGradOp npg;
  arith::AddFOp firstAdd, secondAdd; // (two of the dx) + the third
  // The sublayer's pre-norm (docs/PreNorm.md): du from rms_norm_grad of u
  // made again from x and the recomputed pre (both null without it).
  RmsNormGradOp rng;
  PreApplyOp paU;
};

/// The only user of `v`, if it has exactly one.
static Operation *onlyUser(Value v) {
  return v.hasOneUse() ? *v.getUsers().begin() : nullptr;
}

/// Matches the sublayer backward around `smg`, or fails (the ops are then
/// left alone and each becomes its own kernel, or an error if it has none).
/// post_res_grad is the one whose dx is summed with the other two; its
/// dpost and dcomb feed split_mixes_grad and sinkhorn_grad, or (the
/// pre_backward half written directly) come from outside and it contributes
/// only its dx.
static FailureOr<SublayerBackward> matchSublayerBackward(SplitMixesGradOp smg) {
  SublayerBackward m;
  m.smg = smg;
  m.pag = smg.getDpre().getDefiningOp<PreApplyGradOp>();
  m.skg = smg.getDlogits().getDefiningOp<SinkhornGradOp>();
  m.npg = dyn_cast_or_null<NormProjectGradOp>(onlyUser(smg.getDmix()));
  if (!m.pag || !m.skg || !m.npg)
    return failure();
  // dx = (two of the three dx) + the third.
  auto first = dyn_cast_or_null<arith::AddFOp>(onlyUser(m.pag.getDx()));
  if (!first)
    first = dyn_cast_or_null<arith::AddFOp>(onlyUser(m.npg.getDx()));
  if (!first)
    return failure();
  m.firstAdd = first;
  m.secondAdd = dyn_cast_or_null<arith::AddFOp>(onlyUser(first.getResult()));
  if (!m.secondAdd)
    return failure();
  SmallVector<Value> summed{first.getLhs(), first.getRhs()};
  summed.push_back(m.secondAdd.getLhs() == first.getResult()
                       ? m.secondAdd.getRhs()
                       : m.secondAdd.getLhs());
  for (Value v : summed)
    if (auto prg = v.getDefiningOp<PostResGradOp>())
      m.prg = prg;
  if (!m.prg)
    return failure();
  Value dxs[3] = {m.prg.getDx(), m.pag.getDx(), m.npg.getDx()};
  if (!std::is_permutation(summed.begin(), summed.end(), std::begin(dxs)))
    return failure();
  bool ownSums = smg.getDpost() == m.prg.getDpost() &&
                 m.skg.getDcomb() == m.prg.getDcomb();
  bool onlyDx = m.prg.getDy().use_empty() && m.prg.getDpost().use_empty() &&
                m.prg.getDcomb().use_empty();
  if (!ownSums && !onlyDx)
    return failure();
  m.sm = m.skg.getLogits().getDefiningOp<SplitMixesOp>();
  m.sk = m.prg.getComb().getDefiningOp<SinkhornOp>();
  if (!m.sm || !m.sk || m.sk.getLogits() != m.sm.getLogits() ||
      m.sm.getPre() != m.pag.getPre() || m.sm.getPost() != m.prg.getPost())
    return failure();
  // One stream x, one set of coefficients, one set of attributes.
  Value x = m.npg.getX();
  if (m.pag.getX() != x || m.prg.getX() != x ||
      m.sm.getMix() != smg.getMix() || m.sm.getScale() != smg.getScale() ||
      m.sm.getBase() != smg.getBase() ||
      m.sm.getPostMult() != smg.getPostMult() ||
      m.sm.getPreEps() != smg.getPreEps() ||
      m.sk.getIterations() != m.skg.getIterations() ||
      m.sk.getEps() != m.skg.getEps())
    return failure();
  // The kernels take norm_project's m = x @ fn^T as mix / r: mix must be
  // norm_project(x, fn) itself, or the value the forward saved for it
  // (an argument labelled mhc.saved, as --mhc-generate-backward writes).
  Value mix = smg.getMix();
  if (auto np = mix.getDefiningOp<NormProjectOp>()) {
    if (np.getX() != x || np.getFn() != m.npg.getFn() ||
        np.getEps() != m.npg.getEps())
      return failure();
  } else if (auto arg = dyn_cast<BlockArgument>(mix)) {
    auto func = dyn_cast<func::FuncOp>(arg.getOwner()->getParentOp());
    if (!func || !func.getArgAttr(arg.getArgNumber(), "mhc.saved"))
      return failure();
  } else {
    return failure();
  }
  for (Operation *op : {m.sm.getOperation(), m.sk.getOperation(),
                        m.prg.getOperation(), m.pag.getOperation(),
                        m.skg.getOperation(), m.npg.getOperation(),
                        m.firstAdd.getOperation(), m.secondAdd.getOperation()})
    if (op->getBlock() != smg->getBlock())
      return failure();
  // du through the pre-norm: rms_norm_grad of u = pre_apply(x, pre), each
  // read only there (else the norm's ops stay out and become lone kernels).
  if (auto rng = m.pag.getDu().getDefiningOp<RmsNormGradOp>()) {
    auto paU = rng.getU().getDefiningOp<PreApplyOp>();
    if (rng.getDu().hasOneUse() && paU && paU.getU().hasOneUse() &&
        paU.getX() == x && paU.getPre() == m.sm.getPre() &&
        rng->getBlock() == smg->getBlock() &&
        paU->getBlock() == smg->getBlock()) {
      m.rng = rng;
      m.paU = paU;
    }
  }
  return m;
}

/// True if `v` is computed from `op`'s results (in `op`'s block).
static bool dependsOn(Value v, Operation *op) {
  SmallVector<Value> work{v};
  llvm::SmallPtrSet<Operation *, 32> seen;
  while (!work.empty()) {
    Operation *def = work.pop_back_val().getDefiningOp();
    if (!def || def->getBlock() != op->getBlock() || !seen.insert(def).second)
      continue;
    if (def == op)
      return true;
    if (def->isBeforeInBlock(op))
      continue;
    llvm::append_range(work, def->getOperands());
  }
  return false;
}

/// The lower sublayer's post_res_grad, when only its dy is used and its dout
/// is this sublayer's dx: dy = sum_j post[j] dx[j] is then computed where dx
/// is made (the cols kernel), while dx is on chip, instead of by a rows pass
/// that reads dx again (docs/GPU.md, "The dy fold").
static PostResGradOp lowerDyOf(SublayerBackward &m) {
  Value dx = m.secondAdd.getResult();
  for (Operation *user : dx.getUsers()) {
    auto prg = dyn_cast<PostResGradOp>(user);
    if (prg && prg->getBlock() == m.secondAdd->getBlock() &&
        prg.getDout() == dx && prg.getX().getType() == dx.getType() &&
        prg.getDx().use_empty() && prg.getDpost().use_empty() &&
        prg.getDcomb().use_empty() && !prg.getDy().use_empty())
      return prg;
  }
  return nullptr;
}

/// In a whole-model backward (--mhc-generate-backward) every result of a
/// sublayer's post_res_grad is used: dy by its sublayer's VJP, the rest by its
/// own backward. When its dout is the dx of a matched sublayer above
/// (`dxAbove`), dy moves to a clone with the same operands of which only dy
/// is used, which the fold puts into the group above (lowerDyOf); the
/// original, dy unused, no longer precedes the VJP, and the sublayer forms one
/// "backward" group after it, whose rows pass computes dpost and dcomb
/// (what mhc.torch's hc_joint_backward runs). Same math: the clone is the op.
static void splitDyForFold(SublayerBackward &m,
                           const llvm::DenseSet<Value> &dxAbove) {
  PostResGradOp prg = m.prg;
  if (prg.getDy().use_empty() || prg.getDpost() != m.smg.getDpost() ||
      !dxAbove.contains(prg.getDout()) ||
      prg.getX().getType() != prg.getDout().getType())
    return;
  OpBuilder b(prg);
  // Its own post (a split_mixes clone: the original's results must stay
  // inside the sublayer's group) and an empty comb: dy = sum_j post[j] dout[j]
  // does not read comb, and the fold's kernel takes only post (the shape
  // mhc.torch's *_lower functions have).
  auto sm = cast<SplitMixesOp>(b.clone(*m.sm));
  Value comb = emptyTensor(b, prg.getLoc(),
                           cast<RankedTensorType>(prg.getComb().getType()),
                           prg.getX());
  auto dyOnly = cast<PostResGradOp>(b.clone(*prg));
  dyOnly.getPostMutable().assign(sm.getPost());
  dyOnly.getCombMutable().assign(comb);
  prg.getDy().replaceAllUsesWith(dyOnly.getDy());
}

/// Forms the backward group(s) of one matched sublayer.
static void formBackward(SublayerBackward &m, bool foldDy) {
  SmallVector<Operation *> tail;
  if (m.rng)
    tail.append({m.paU, m.rng});
  tail.append({m.pag, m.skg, m.smg, m.npg, m.firstAdd, m.secondAdd});
  if (PostResGradOp lower = foldDy ? lowerDyOf(m) : nullptr)
    tail.push_back(lower);
  if (m.prg.getDpost() != m.smg.getDpost()) {
    // Written as the second half already: dpost and dcomb come from outside.
    SmallVector<Operation *> all{m.sm, m.sk, m.prg};
    all.append(tail);
    if (canGroupAtLast(all))
      formGroup("pre_backward", all);
    return;
  }
  if (!dependsOn(m.pag.getDu(), m.prg)) {
    SmallVector<Operation *> all{m.sm, m.sk, m.prg};
    all.append(tail);
    if (canGroupAtLast(all))
      formGroup("backward", all);
    return;
  }
  // An opaque F's VJP turns dy into du: split at it. The second group gets
  // its own split_mixes, sinkhorn and post_res_grad (for post_res_grad's
  // dx); the first computes dy, dpost and dcomb.
  OpBuilder b(m.paU ? m.paU.getOperation() : m.pag.getOperation());
  auto sm = cast<SplitMixesOp>(b.clone(*m.sm));
  auto sk = cast<SinkhornOp>(b.clone(*m.sk));
  sk->setOperand(0, sm.getLogits());
  auto prg = cast<PostResGradOp>(b.clone(*m.prg));
  prg.getPostMutable().assign(sm.getPost());
  prg.getCombMutable().assign(sk.getComb());
  m.pag.getPreMutable().assign(sm.getPre());
  if (m.paU)
    m.paU.getPreMutable().assign(sm.getPre());
  m.skg.getLogitsMutable().assign(sm.getLogits());
  m.prg.getDx().replaceUsesWithIf(prg.getDx(), [&](OpOperand &use) {
    return use.getOwner() == m.firstAdd || use.getOwner() == m.secondAdd;
  });
  SmallVector<Operation *> first{m.sm, m.sk, m.prg};
  SmallVector<Operation *> second{sm, sk, prg};
  second.append(tail);
  if (canGroupAtLast(first))
    formGroup("post_backward", first);
  if (canGroupAtLast(second))
    formGroup("pre_backward", second);
}

/// True for an op that an earlier --mhc-fuse already put into a group:
/// running the pass again leaves such groups alone (it is idempotent).
static bool inGroupAlready(Operation *op) {
  return op->getParentOfType<FusedOp>() != nullptr;
}

namespace {
struct MHCFusePass : mhc::impl::MHCFuseBase<MHCFusePass> {
  using MHCFuseBase::MHCFuseBase;

  void runOnOperation() override {
    llvm::SmallPtrSet<Operation *, 16> taken;

    // Backward groups: each sublayer's gradient ops.
    SmallVector<SublayerBackward> backward;
    getOperation().walk([&](SplitMixesGradOp smg) {
      if (inGroupAlready(smg))
        return;
      FailureOr<SublayerBackward> m = matchSublayerBackward(smg);
      if (succeeded(m))
        backward.push_back(*m);
    });
    if (foldDy) {
      llvm::DenseSet<Value> dxOfMatched;
      for (SublayerBackward &m : backward)
        dxOfMatched.insert(m.secondAdd.getResult());
      for (SublayerBackward &m : backward)
        splitDyForFold(m, dxOfMatched);
    }
    for (SublayerBackward &m : backward)
      formBackward(m, foldDy);
    // A post_res_grad of its own whose dx is not needed: the first half
    // (dy, dpost, dcomb) with post and comb given.
    SmallVector<Operation *> lonePostGrads;
    getOperation().walk([&](PostResGradOp prg) {
      if (!inGroupAlready(prg) && prg.getDx().use_empty())
        lonePostGrads.push_back(prg);
    });
    for (Operation *prg : lonePostGrads)
      formGroup("post_backward", {prg});

    // Post groups first: they claim the next sublayer's norm_project.
    SmallVector<SmallVector<Operation *>> postGroups;
    getOperation().walk([&](PostResOp post) {
      if (inGroupAlready(post))
        return;
      SmallVector<Operation *> members{post};
      if (auto np = userOfType<NormProjectOp>(post.getResult(),
                                              post->getBlock())) {
        members.push_back(np);
        if (!canGroupAtLast(members))
          members.pop_back();
      }
      for (Operation *op : members)
        taken.insert(op);
      postGroups.push_back(members);
    });

    // Pre groups: split_mixes [+ sinkhorn] + pre_apply [+ norm_project].
    SmallVector<SmallVector<Operation *>> preGroups;
    getOperation().walk([&](PreApplyOp apply) {
      if (inGroupAlready(apply))
        return;
      auto split = apply.getPre().getDefiningOp<SplitMixesOp>();
      if (!split || split->getBlock() != apply->getBlock() ||
          taken.contains(split))
        return;
      SmallVector<Operation *> members{split, apply};
      if (auto sk = userOfType<SinkhornOp>(split.getLogits(),
                                           split->getBlock());
          sk && !taken.contains(sk))
        members.push_back(sk);
      if (!canGroupAtLast(members))
        return;
      // The sublayer's pre-norm of u (docs/PreNorm.md): u need not leave.
      if (auto rn = userOfType<RmsNormOp>(apply.getU(), apply->getBlock())) {
        members.push_back(rn);
        if (!canGroupAtLast(members))
          members.pop_back();
      }
      auto np = split.getMix().getDefiningOp<NormProjectOp>();
      if (np && np->getBlock() == split->getBlock() && !taken.contains(np)) {
        members.push_back(np);
        if (!canGroupAtLast(members))
          members.pop_back();
      }
      for (Operation *op : members)
        taken.insert(op);
      preGroups.push_back(members);
    });

    for (auto &members : postGroups)
      formGroup("post", members);
    for (auto &members : preGroups)
      formGroup("pre", members);
  }
};
} // namespace
