//===- OutlineKernels.cpp - --mhc-outline-kernels -------------------------===//
//
// Each kernel root (an mhc.fused group or a lone mhc op) as a private
// function of its own, called where the root was: the boundary another
// compiler needs to put mhc's kernels into its program (docs/Embedding.md,
// the IREE fast route). See the pass description in
// include/mhc/Conversion/Passes.td.
//
//===----------------------------------------------------------------------===//
#include "KernelGroup.h"
#include "mhc/Conversion/Passes.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/TypeSwitch.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCOUTLINEKERNELS
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

namespace {

/// The operand whose leading dims are the tokens, and how many dims follow
/// them (the op's per-token shape).
static std::pair<Value, int64_t> tokenOperand(Operation *op) {
  return llvm::TypeSwitch<Operation *, std::pair<Value, int64_t>>(op)
      .Case([](NormProjectOp o) { return std::make_pair(o->getOperand(0), 2); })
      .Case([](SplitMixesOp o) { return std::make_pair(o->getOperand(0), 1); })
      .Case([](SinkhornOp o) { return std::make_pair(o->getOperand(0), 2); })
      .Case([](PreApplyOp o) { return std::make_pair(o->getOperand(0), 2); })
      .Case([](PostResOp o) { return std::make_pair(o->getOperand(0), 1); })
      .Case([](RmsNormOp o) { return std::make_pair(o->getOperand(0), 1); })
      .Case([](ExpandOp o) { return std::make_pair(o->getOperand(0), 1); })
      .Case([](CollapseOp o) { return std::make_pair(o->getOperand(0), 2); })
      .Default([](Operation *) { return std::make_pair(Value(), int64_t(0)); });
}

/// T, the number of tokens the group's kernel walks (the product of the
/// token dims), when it is static.
static std::optional<int64_t> staticTokenCount(const KernelGroup &group) {
  for (Operation *member : group.members) {
    auto [value, trailing] = tokenOperand(member);
    if (!value)
      continue;
    auto type = cast<RankedTensorType>(value.getType());
    int64_t tokens = 1;
    for (int64_t d = 0; d < type.getRank() - trailing; ++d) {
      if (type.isDynamicDim(d))
        return std::nullopt;
      tokens *= type.getDimSize(d);
    }
    return tokens;
  }
  return std::nullopt;
}

struct MHCOutlineKernelsPass
    : mhc::impl::MHCOutlineKernelsBase<MHCOutlineKernelsPass> {
  using MHCOutlineKernelsBase::MHCOutlineKernelsBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<Operation *> roots = collectKernelRoots(module);
    if (failed(checkRootsNotNested(module, roots, getArgument())))
      return signalPassFailure();
    SmallVector<func::FuncOp> kernels;
    OpBuilder moduleBuilder = OpBuilder::atBlockEnd(module.getBody());
    int64_t index = 0;
    for (Operation *root : roots) {
      if (!root->getParentOfType<func::FuncOp>()) {
        root->emitError("mhc-outline-kernels: an mhc op outside a function");
        return signalPassFailure();
      }
      KernelGroup group = KernelGroup::collect(root);
      // The name --convert-mhc-to-gpu gives the kernel of this root.
      std::string name = "mhc_" + group.kind() + "_" + std::to_string(index++);
      SmallVector<Type> inputTypes, resultTypes;
      for (Value v : group.inputs)
        inputTypes.push_back(v.getType());
      for (Value v : group.replaced)
        resultTypes.push_back(v.getType());
      Location loc = root->getLoc();
      auto kernel = func::FuncOp::create(
          moduleBuilder, loc, name,
          moduleBuilder.getFunctionType(inputTypes, resultTypes));
      kernel.setPrivate();
      // What a caller needs to launch the kernel itself.
      if (std::optional<int64_t> tokens = staticTokenCount(group))
        kernel->setAttr("mhc.tokens", moduleBuilder.getI64IntegerAttr(*tokens));
      Block *body = kernel.addEntryBlock();
      OpBuilder b = OpBuilder::atBlockBegin(body);
      IRMapping map;
      for (auto [outer, arg] : llvm::zip(group.inputs, body->getArguments()))
        map.map(outer, arg);
      Operation *clone = b.clone(*root, map);
      SmallVector<Value> results;
      for (Value v : group.replaced)
        results.push_back(clone->getResult(cast<OpResult>(v).getResultNumber()));
      func::ReturnOp::create(b, loc, results);

      OpBuilder at(root);
      auto call = func::CallOp::create(at, loc, kernel, group.inputs);
      for (auto [old, now] : llvm::zip(group.replaced, call.getResults()))
        old.replaceAllUsesWith(now);
      root->erase();
      kernels.push_back(kernel);
    }
    if (!kernelsOnly)
      return;
    // Only the kernels, public: the module --mhc-gpu-pipeline compiles.
    for (Operation &op : llvm::make_early_inc_range(*module.getBody()))
      if (auto f = dyn_cast<func::FuncOp>(op); !f || !llvm::is_contained(kernels, f))
        op.erase();
    for (func::FuncOp f : kernels)
      f.setPublic();
  }
};

} // namespace
