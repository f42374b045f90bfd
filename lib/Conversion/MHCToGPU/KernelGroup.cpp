//===- KernelGroup.cpp - kernel groups and the family registry -----------===//
#include "KernelGroup.h"
#include "mlir/Interfaces/FunctionInterfaces.h"
#include "llvm/ADT/SetVector.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

KernelGroup KernelGroup::collect(Operation *root) {
  KernelGroup g;
  g.root = root;
  if (auto fused = dyn_cast<FusedOp>(root)) {
    for (Operation &op : fused.getBody().front().without_terminator())
      g.members.push_back(&op);
    auto yield = cast<YieldOp>(fused.getBody().front().getTerminator());
    g.outputs = SmallVector<Value>(yield.getValues());
  } else {
    g.members.push_back(root);
    g.outputs = SmallVector<Value>(root->getResults());
  }
  g.replaced = SmallVector<Value>(root->getResults());
  llvm::SmallPtrSet<Operation *, 8> inGroup(g.members.begin(),
                                            g.members.end());
  llvm::SetVector<Value> ins;
  for (Operation *op : g.members)
    for (Value v : op->getOperands())
      if (!inGroup.contains(v.getDefiningOp()))
        ins.insert(v);
  g.inputs = ins.takeVector();
  return g;
}

bool KernelGroup::isInternal(Value v) const {
  Operation *def = v.getDefiningOp();
  return def && llvm::is_contained(members, def);
}

std::string KernelGroup::kind() const {
  if (auto fused = dyn_cast<FusedOp>(root))
    return fused.getKind().str();
  return root->getName().stripDialect().str();
}

Schedule Schedule::fromAttr(ScheduleAttr attr) {
  return {attr.getTileTokens(), attr.getChunkColumns(), attr.getThreads(),
          attr.getVectorWidth(), attr.getBlocksPerSm(),
          attr.getTokenSplits()};
}

ScheduleAttr Schedule::toAttr(MLIRContext *ctx) const {
  return ScheduleAttr::get(ctx, tileTokens, chunkColumns, threads,
                           vectorWidth, blocksPerSM, tokenSplits);
}

ScheduleOptions gpu_kernels::scheduleOptionsFor(Operation *root,
                                               int64_t tileTokens,
                                               bool prepareFn) {
  ScheduleOptions options;
  options.tileTokens = tileTokens;
  options.prepareFn = prepareFn;
  if (auto func = root->getParentOfType<FunctionOpInterface>())
    if (auto hint = func->getAttrOfType<IntegerAttr>(kMaxTokensAttrName))
      options.maxTokens = hint.getInt(); // positive: checked by the dialect
  return options;
}

std::optional<GroupSchedule> gpu_kernels::readSchedule(Operation *root) {
  Attribute attr = root->getAttr(kScheduleAttrName);
  if (!attr)
    return std::nullopt;
  GroupSchedule schedule;
  if (auto one = dyn_cast<ScheduleAttr>(attr)) {
    schedule.push_back(Schedule::fromAttr(one));
    return schedule;
  }
  for (Attribute a : cast<ArrayAttr>(attr)) // checked by the dialect
    schedule.push_back(Schedule::fromAttr(cast<ScheduleAttr>(a)));
  return schedule;
}

void gpu_kernels::writeSchedule(Operation *root, ArrayRef<Schedule> schedule) {
  MLIRContext *ctx = root->getContext();
  if (schedule.size() == 1) {
    root->setAttr(kScheduleAttrName, schedule.front().toAttr(ctx));
    return;
  }
  SmallVector<Attribute> list;
  for (const Schedule &s : schedule)
    list.push_back(s.toAttr(ctx));
  root->setAttr(kScheduleAttrName, ArrayAttr::get(ctx, list));
}

const KernelFamily *gpu_kernels::findKernelFamily(const KernelGroup &group) {
  // A family accepts a group by its members; an empty group (a hand-written
  // mhc.fused that only yields) would be accepted by all of them.
  if (group.members.empty())
    return group.root->emitOpError(
               "holds no op to compute: a kernel group needs at least one "
               "mhc op"),
           nullptr;
  for (const KernelFamily *family : kernelFamilies())
    if (family->accepts(group))
      return family;
  // The pre-norm's gradient has GPU kernels only inside a sublayer's
  // (pre_)backward group (docs/PreNorm.md): say so rather than "cannot".
  for (Operation *op : group.members)
    if (isa<RmsNormGradOp>(op))
      return op->emitOpError("has no GPU kernel outside a (pre_)backward "
                             "group (the CPU path, --mhc-cpu-pipeline, "
                             "computes it)"),
             nullptr;
  for (Operation *op : group.members)
    if (!llvm::any_of(kernelFamilies(), [&](const KernelFamily *f) {
          KernelGroup alone = KernelGroup::collect(op);
          return f->accepts(alone);
        }))
      return op->emitOpError("cannot be placed in a GPU kernel"), nullptr;
  group.root->emitOpError("mixes ops that no single GPU kernel computes");
  return nullptr;
}

LogicalResult gpu_kernels::checkRootsNotNested(ModuleOp module,
                                               ArrayRef<Operation *> roots,
                                               StringRef pass) {
  for (Operation *root : roots)
    if (root->getParentOfType<ModuleOp>() != module)
      return root->emitError()
             << pass << ": an mhc op inside a nested module; run " << pass
             << " on that module (--pass-pipeline='builtin.module("
                "builtin.module("
             << pass << "))')";
  return success();
}

SmallVector<Operation *> gpu_kernels::collectKernelRoots(Operation *module) {
  SmallVector<Operation *> roots;
  module->walk<WalkOrder::PreOrder>([&](Operation *op) {
    if (isa<FusedOp>(op)) {
      roots.push_back(op);
      return WalkResult::skip();
    }
    if (isa_and_nonnull<MHCDialect>(op->getDialect()) && !isa<YieldOp>(op))
      roots.push_back(op);
    return WalkResult::advance();
  });
  return roots;
}
