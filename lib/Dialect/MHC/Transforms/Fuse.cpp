//===- Fuse.cpp - --mhc-fuse: dispatch formation ---------------------------===//
//
// Groups the mhc ops of each sublayer into the kernels they will become, the
// byte-optimal schedule of spec section 7:
//
//   "post": post_res(l) + the norm_project that reads its result (the next
//           sublayer's coefficients, computed while x_next is on chip);
//   "pre":  split_mixes + sinkhorn + pre_apply, plus the norm_project that
//           feeds split_mixes when no post group took it (the first sublayer).
//
// A group is an mhc.fused op placed where its last member was; it yields
// every member result used outside. Ops that fit no group stay as they are
// (they become standalone kernels).
//
//===----------------------------------------------------------------------===//
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/SetVector.h"

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

namespace {
struct MHCFusePass : mhc::impl::MHCFuseBase<MHCFusePass> {
  using MHCFuseBase::MHCFuseBase;

  void runOnOperation() override {
    llvm::SmallPtrSet<Operation *, 16> taken;

    // Post groups first: they claim the next sublayer's norm_project.
    SmallVector<SmallVector<Operation *>> postGroups;
    getOperation().walk([&](PostResOp post) {
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
