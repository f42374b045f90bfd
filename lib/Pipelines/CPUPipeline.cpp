//===- CPUPipeline.cpp - --mhc-cpu-pipeline -------------------------------===//
//
// The portable reference path: mhc (and any func/arith/math/tensor/linalg/
// bufferization IR on tensors, e.g. torch-mlir's linalg-on-tensors output)
// down to the LLVM dialect, ready for mlir-runner or mlir-translate. Every
// stage is an upstream pass except the first; the order is the one upstream's
// CPU integration tests use.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/Conversion/ArithToLLVM/ArithToLLVM.h"
#include "mlir/Conversion/ControlFlowToLLVM/ControlFlowToLLVM.h"
#include "mlir/Conversion/FuncToLLVM/ConvertFuncToLLVM.h"
#include "mlir/Conversion/IndexToLLVM/IndexToLLVM.h"
#include "mlir/Conversion/MemRefToLLVM/MemRefToLLVM.h"
#include "mlir/Conversion/Passes.h"
#include "mlir/Conversion/SCFToControlFlow/SCFToControlFlow.h"
#include "mlir/Conversion/UBToLLVM/UBToLLVM.h"
#include "mlir/Dialect/Arith/Transforms/Passes.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/Bufferization/Transforms/BufferViewFlowAnalysis.h"
#include "mlir/Dialect/Bufferization/Transforms/Passes.h"
#include "mlir/Dialect/ControlFlow/IR/ControlFlow.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "mlir/Interfaces/ViewLikeInterface.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Rewrite/PatternApplicator.h"
#include "mlir/Transforms/Passes.h"
#include "llvm/ADT/EquivalenceClasses.h"

using namespace mlir;

namespace {

/// Moves each mhc op into a private function shared by every op of the same
/// kind, attributes and types, and calls it. A rewritten model has the same
/// few mhc ops in every layer; lowered in place they are lowered (and sent
/// through every later pass) once per layer, more code than the model's own
/// layers. Outlined, each kind is lowered once.
struct OutlineMHCOpsPass
    : PassWrapper<OutlineMHCOpsPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(OutlineMHCOpsPass)
  StringRef getArgument() const final { return "mhc-outline-ops"; }
  StringRef getDescription() const final {
    return "Move each mhc op into a private function shared by the ops of "
           "the same kind, attributes and types (lowered once, not once per "
           "layer)";
  }
  void getDependentDialects(DialectRegistry &registry) const override {
    registry.insert<func::FuncDialect>();
  }

  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<Operation *> ops;
    module.walk([&](Operation *op) {
      // Ops inside an mhc.fused group stay: the lowering inlines the group.
      if (isa_and_nonnull<mhc::MHCDialect>(op->getDialect()) && op->getNumRegions() == 0 &&
          op->getNumResults() > 0 &&
          !isa_and_nonnull<mhc::MHCDialect>(op->getParentOp()->getDialect()))
        ops.push_back(op);
    });
    using Key = std::tuple<OperationName, Attribute, Attribute, Type>;
    DenseMap<Key, func::FuncOp> outlined;
    SymbolTable symbols(module);
    for (Operation *op : ops) {
      auto type = FunctionType::get(&getContext(), op->getOperandTypes(),
                                    op->getResultTypes());
      Key key{op->getName(), op->getPropertiesAsAttribute(),
              op->getDiscardableAttrDictionary(), type};
      func::FuncOp &callee = outlined[key];
      if (!callee) {
        OpBuilder b = OpBuilder::atBlockEnd(module.getBody());
        std::string name = ("mhc_" + op->getName().stripDialect()).str();
        callee = func::FuncOp::create(b, op->getLoc(), name, type);
        callee.setPrivate();
        symbols.insert(callee); // renames on a clash
        Block *entry = callee.addEntryBlock();
        b.setInsertionPointToStart(entry);
        IRMapping map;
        map.map(op->getOperands(), entry->getArguments());
        Operation *copy = b.clone(*op, map);
        func::ReturnOp::create(b, op->getLoc(), copy->getResults());
      }
      OpBuilder b(op);
      auto call =
          func::CallOp::create(b, op->getLoc(), callee, op->getOperands());
      op->replaceAllUsesWith(call.getResults());
      op->erase();
    }
  }
};

/// Gives every user of a shared `tensor.empty` or `linalg.fill` result its
/// own copy. torch-mlir's exports use one `tensor.empty` (and one zero fill)
/// as the destination of hundreds of ops; one-shot bufferization then puts
/// all of them in one alias set, and its conflict analysis, which compares
/// the reads and writes of an alias set pairwise, becomes quadratic in the
/// model's depth. Separate destinations keep every alias set small; the
/// result is the same (each op still gets a fresh buffer).
struct SplitSharedDestinationsPass
    : PassWrapper<SplitSharedDestinationsPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(SplitSharedDestinationsPass)
  StringRef getArgument() const final {
    return "mhc-split-shared-destinations";
  }
  StringRef getDescription() const final {
    return "Give every user of a shared tensor.empty or linalg.fill result "
           "its own copy (keeps one-shot-bufferize's alias sets small)";
  }
  void runOnOperation() override {
    // Fills first: their copies share the fill's destination, which the
    // second round splits.
    splitAll<linalg::FillOp>();
    splitAll<tensor::EmptyOp>();
  }

  template <typename OpTy> void splitAll() {
    SmallVector<Operation *> shared;
    getOperation().walk([&](OpTy op) {
      if (op->getNumResults() == 1 && !op->getResult(0).use_empty() &&
          !op->getResult(0).hasOneUse())
        shared.push_back(op);
    });
    for (Operation *op : shared) {
      for (OpOperand &use : llvm::make_early_inc_range(
               llvm::drop_begin(op->getResult(0).getUses()))) {
        OpBuilder b(use.getOwner());
        use.set(b.clone(*op)->getResult(0));
      }
    }
  }
};

/// Splits each `bufferization.dealloc` into one dealloc per group of
/// memrefs that may alias each other. Ownership-based deallocation frees
/// every buffer of a block in one dealloc at its end, so a whole model in
/// one function gets a dealloc of thousands of memrefs, and upstream's
/// buffer-deallocation-simplification checks every pair of them for
/// aliasing (quadratic in depth). Here memrefs join a group when they have
/// the same base, when the buffer view-flow analysis lists the base of one
/// among the possible origins of the other (e.g. a loop's init and result),
/// or when both are (or may come from) block arguments. Allocations made
/// inside a block are distinct from its arguments, and so are the results
/// of a call to a function that returns buffers it allocated itself. An
/// origin the analysis cannot see through keeps the dealloc whole. Each new
/// dealloc keeps the retained list; a retained value's updated condition is
/// the disjunction of theirs, as in upstream's own split.
struct SplitDeallocsPass
    : PassWrapper<SplitDeallocsPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(SplitDeallocsPass)
  StringRef getArgument() const final { return "mhc-split-deallocs"; }
  StringRef getDescription() const final {
    return "Split bufferization.dealloc ops into one per group of memrefs "
           "that may alias (linear; upstream's simplification compares "
           "every pair)";
  }

  /// The value a memref is a view of (through view-like ops).
  static Value viewBase(Value v) {
    while (auto view = v.getDefiningOp<ViewLikeOpInterface>())
      v = view.getViewSource();
    return v;
  }

  static bool isAllocation(Value v) {
    Operation *op = v.getDefiningOp();
    return op && hasEffect<MemoryEffects::Allocate>(op, v);
  }

  /// Functions whose every return hands back distinct buffers allocated in
  /// the function: their call results are fresh allocations.
  DenseSet<Operation *> returnsFreshBuffers;

  bool isFresh(Value base) {
    if (isAllocation(base))
      return true;
    auto call = base.getDefiningOp<func::CallOp>();
    return call &&
           returnsFreshBuffers.contains(SymbolTable::lookupNearestSymbolFrom(
               call, call.getCalleeAttr()));
  }

  /// True if every memref `func` returns comes from allocations made in
  /// `func` (directly, through views or through loops), none shared by two
  /// results.
  static bool returnsOwnAllocations(func::FuncOp func) {
    if (func.isExternal())
      return false;
    BufferViewFlowAnalysis viewFlow(func);
    bool fresh = true;
    func.walk([&](func::ReturnOp ret) {
      DenseSet<Value> seen;
      for (Value v : ret.getOperands()) {
        if (!isa<BaseMemRefType>(v.getType()))
          continue;
        for (Value origin : viewFlow.resolveReverse(viewBase(v))) {
          if (isAllocation(origin))
            fresh &= seen.insert(origin).second;
          else if (viewFlow.mayBeTerminalBuffer(origin))
            fresh = false;
        }
      }
    });
    return fresh;
  }

  void runOnOperation() override {
    for (auto func : getOperation().getOps<func::FuncOp>())
      if (returnsOwnAllocations(func))
        returnsFreshBuffers.insert(func);
    getOperation().walk([&](func::FuncOp func) {
      SmallVector<bufferization::DeallocOp> deallocs;
      func.walk([&](bufferization::DeallocOp op) {
        if (!op.getMemrefs().empty())
          deallocs.push_back(op);
      });
      if (deallocs.empty())
        return;
      BufferViewFlowAnalysis viewFlow(func);
      for (bufferization::DeallocOp dealloc : deallocs)
        split(dealloc, viewFlow);
    });
  }

  void split(bufferization::DeallocOp dealloc,
             const BufferViewFlowAnalysis &viewFlow) {
    unsigned count = dealloc.getMemrefs().size();
    llvm::EquivalenceClasses<unsigned> groups;
    for (unsigned i = 0; i < count; ++i)
      groups.insert(i);
    // One group for everything that is or may be a block argument (they
    // may alias each other); `argMember` is a memref in it.
    std::optional<unsigned> argMember;
    SmallPtrSet<Block *, 2> argBlocks;
    auto joinArgs = [&](unsigned i, BlockArgument arg) {
      argBlocks.insert(arg.getOwner());
      if (argMember)
        groups.unionSets(*argMember, i);
      argMember = i;
    };
    DenseMap<Value, unsigned> byAlloc;
    SmallVector<std::pair<unsigned, Value>> unknown;
    for (auto [i, m] : llvm::enumerate(dealloc.getMemrefs())) {
      Value base = viewBase(m);
      if (isFresh(base)) {
        auto [it, inserted] = byAlloc.try_emplace(base, i);
        if (!inserted)
          groups.unionSets(it->second, i);
      } else if (auto arg = dyn_cast<BlockArgument>(base)) {
        joinArgs(i, arg);
      } else {
        unknown.push_back({i, base});
      }
    }
    for (auto [i, base] : unknown)
      for (Value origin : viewFlow.resolveReverse(base)) {
        if (isFresh(origin)) {
          auto it = byAlloc.find(origin);
          if (it != byAlloc.end())
            groups.unionSets(it->second, i);
        } else if (viewFlow.mayBeTerminalBuffer(origin)) {
          auto arg = dyn_cast<BlockArgument>(origin);
          if (!arg)
            return; // an origin nobody can see through
          joinArgs(i, arg);
        }
      }
    // An allocation outside a block whose arguments are in the dealloc may
    // have been passed in as one of them.
    for (auto [base, i] : byAlloc)
      if (argMember && llvm::any_of(argBlocks, [&](Block *b) {
            return !b->findAncestorOpInBlock(*base.getDefiningOp());
          }))
        groups.unionSets(*argMember, i);

    // One dealloc per group, in the order of their first memref.
    SmallVector<SmallVector<unsigned>> members;
    DenseMap<unsigned, unsigned> groupIndex;
    for (unsigned i = 0; i < count; ++i) {
      unsigned leader = groups.getLeaderValue(i);
      auto [it, inserted] = groupIndex.try_emplace(leader, members.size());
      if (inserted)
        members.emplace_back();
      members[it->second].push_back(i);
    }
    // A retained value provably distinct from every memref of a group
    // (fresh buffers with different bases) is not retained by that group's
    // dealloc: its updated condition there is false.
    auto distinct = [&](Value retained, ArrayRef<unsigned> group) {
      Value base = viewBase(retained);
      return isFresh(base) && llvm::all_of(group, [&](unsigned i) {
               Value mBase = viewBase(dealloc.getMemrefs()[i]);
               return isFresh(mBase) && mBase != base;
             });
    };
    SmallVector<SmallVector<unsigned>> kept(members.size());
    bool dropsAny = false;
    for (auto [g, group] : llvm::enumerate(members))
      for (auto [r, retained] : llvm::enumerate(dealloc.getRetained())) {
        if (distinct(retained, group))
          dropsAny = true;
        else
          kept[g].push_back(r);
      }
    if (members.size() < 2 && !dropsAny)
      return;
    OpBuilder b(dealloc);
    Location loc = dealloc.getLoc();
    // Per retained value, the updated conditions of the deallocs keeping it.
    SmallVector<SmallVector<Value>> updated(dealloc.getRetained().size());
    for (auto [g, group] : llvm::enumerate(members)) {
      SmallVector<Value> memrefs, conds, retained;
      for (unsigned i : group) {
        memrefs.push_back(dealloc.getMemrefs()[i]);
        conds.push_back(dealloc.getConditions()[i]);
      }
      for (unsigned r : kept[g])
        retained.push_back(dealloc.getRetained()[r]);
      auto part =
          bufferization::DeallocOp::create(b, loc, memrefs, conds, retained);
      for (auto [k, r] : llvm::enumerate(kept[g]))
        updated[r].push_back(part.getUpdatedConditions()[k]);
    }
    for (auto [r, old] : llvm::enumerate(dealloc.getUpdatedConditions())) {
      if (old.use_empty())
        continue;
      Value any = updated[r].empty()
                      ? arith::ConstantOp::create(b, loc, b.getBoolAttr(false))
                            .getResult()
                      : updated[r].front();
      for (Value next : llvm::drop_begin(updated[r]))
        any = arith::OrIOp::create(b, loc, any, next);
      old.replaceAllUsesWith(any);
    }
    dealloc.erase();
  }
};

/// convert-scf-to-cf with the ops taken last to first. Lowering a loop
/// splits its block and moves every op after the loop into the new block;
/// upstream's pass (a dialect conversion) takes the loops first to last, so
/// a function of k loops and N ops costs O(k N) moves -- quadratic in depth
/// for a whole model in one function (and, with rollback, memory to match).
/// Taken last to first, each split moves only the ops up to the next loop,
/// already lowered. The patterns are upstream's.
struct SCFToCFLastToFirstPass
    : PassWrapper<SCFToCFLastToFirstPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(SCFToCFLastToFirstPass)
  StringRef getArgument() const final { return "mhc-scf-to-cf"; }
  StringRef getDescription() const final {
    return "convert-scf-to-cf's patterns applied last op first (linear in "
           "the size of a function)";
  }
  void getDependentDialects(DialectRegistry &registry) const override {
    registry.insert<cf::ControlFlowDialect>();
  }
  void runOnOperation() override {
    RewritePatternSet set(&getContext());
    populateSCFToControlFlowConversionPatterns(set);
    FrozenRewritePatternSet patterns(std::move(set));
    PatternApplicator applicator(patterns);
    applicator.applyDefaultCostModel();
    PatternRewriter rewriter(&getContext());
    // Lowering an op can create scf ops (scf.parallel becomes scf.for):
    // repeat until none is left.
    while (true) {
      SmallVector<Operation *> ops;
      getOperation().walk([&](Operation *op) {
        if (isa_and_nonnull<scf::SCFDialect>(op->getDialect()) &&
            !op->hasTrait<OpTrait::IsTerminator>())
          ops.push_back(op);
      });
      if (ops.empty())
        return;
      // Post-order reversed: outer ops before the ops nested in them, and
      // the last op of a block first.
      bool changed = false;
      for (Operation *op : llvm::reverse(ops)) {
        rewriter.setInsertionPoint(op);
        changed |= succeeded(applicator.matchAndRewrite(op, rewriter));
      }
      if (!changed) {
        ops.front()->emitError("mhc-cpu-pipeline: cannot lower '")
            << ops.front()->getName() << "' to cf";
        return signalPassFailure();
      }
    }
  }
};

/// memref, func, cf, arith, index and ub to LLVM in one dialect conversion
/// (upstream's convert-to-llvm, with each dialect's own patterns): one walk
/// of the module instead of one per dialect. The dialects' conversion
/// interfaces are registered here so that the pipeline does not depend on
/// the tool having registered them.
struct ConvertToLLVMPass
    : PassWrapper<ConvertToLLVMPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(ConvertToLLVMPass)
  StringRef getArgument() const final { return "mhc-convert-to-llvm"; }
  StringRef getDescription() const final {
    return "convert-to-llvm and reconcile-unrealized-casts, with the "
           "conversion interfaces of memref, func, cf, arith, index and ub";
  }
  void getDependentDialects(DialectRegistry &registry) const override {
    registry.insert<LLVM::LLVMDialect>();
    registerConvertMemRefToLLVMInterface(registry);
    registerConvertFuncToLLVMInterface(registry);
    cf::registerConvertControlFlowToLLVMInterface(registry);
    arith::registerConvertArithToLLVMInterface(registry);
    index::registerConvertIndexToLLVMInterface(registry);
    ub::registerConvertUBToLLVMInterface(registry);
  }
  void runOnOperation() override {
    OpPassManager pm(ModuleOp::getOperationName());
    ConvertToLLVMPassOptions options;
    // Modify the IR in place (no rollback log): the same result, less memory.
    options.allowPatternRollback = false;
    pm.addPass(createConvertToLLVMPass(options));
    pm.addPass(createReconcileUnrealizedCastsPass());
    if (failed(runPipeline(pm, getOperation())))
      signalPassFailure();
  }
};

} // namespace

static void buildMHCCPUPipeline(OpPassManager &pm) {
  // 1. mhc -> linalg on tensors (each kind of mhc op outlined and lowered
  //    once), then tensor-level cleanups. Elementwise fusion merges chains
  //    of elementwise generics (the rounding after post_res's mix,
  //    torch-mlir's activation chains) so fewer temporaries are allocated.
  pm.addPass(std::make_unique<OutlineMHCOpsPass>());
  pm.addPass(mhc::createConvertMHCToLinalg());
  // Elementwise arith/math on whole tensors (common in hand-written tests and
  // exported models) becomes linalg.generic so that it bufferizes.
  pm.addPass(createConvertElementwiseToLinalgPass());
  // No CSE before bufferization: it would merge identical
  // bufferization.to_buffer ops, and a memref from an earlier to_buffer must
  // not be read after later ops reuse its buffer.
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createLinalgElementwiseOpFusionPass());
  pm.addPass(createCanonicalizerPass());

  // 2. Tensors -> buffers. Function boundaries get plain (identity-layout)
  //    memrefs so that callers such as mlir-runner's printMemrefF32 see
  //    ordinary descriptors; the ownership-based deallocation pipeline frees
  //    every temporary. Shared destinations are split first (small alias
  //    sets).
  pm.addPass(std::make_unique<SplitSharedDestinationsPass>());
  pm.addPass(bufferization::createEmptyTensorToAllocTensorPass());
  bufferization::OneShotBufferizePassOptions bufferize;
  bufferize.bufferizeFunctionBoundaries = true;
  // Sinkhorn's scf.for yields a freshly computed matrix each iteration.
  bufferize.allowReturnAllocsFromLoops = true;
  bufferize.functionBoundaryTypeConversion =
      bufferization::LayoutMapOption::IdentityLayoutMap;
  pm.addPass(bufferization::createOneShotBufferizePass(bufferize));
  // Upstream's buffer-deallocation-pipeline, with the big deallocs split
  // before its simplification.
  pm.addNestedPass<func::FuncOp>(memref::createExpandReallocPass(
      memref::ExpandReallocPassOptions{/*emitDeallocs=*/false}));
  pm.addNestedPass<func::FuncOp>(createCanonicalizerPass());
  pm.addNestedPass<func::FuncOp>(
      bufferization::createOwnershipBasedBufferDeallocationPass());
  pm.addNestedPass<func::FuncOp>(createCanonicalizerPass());
  pm.addPass(std::make_unique<SplitDeallocsPass>());
  pm.addNestedPass<func::FuncOp>(
      bufferization::createBufferDeallocationSimplificationPass());
  pm.addPass(bufferization::createLowerDeallocationsPass());
  pm.addNestedPass<func::FuncOp>(createCSEPass());
  pm.addNestedPass<func::FuncOp>(createCanonicalizerPass());
  pm.addPass(createConvertBufferizationToMemRefPass());

  // 3. Scalars, while the payloads are still inside the linalg ops: each of
  //    these passes walks the whole module, which is a fraction of its size
  //    before the loops are materialised. bf16 <-> f32 conversions become
  //    integer bit manipulation so the JIT never needs compiler-rt's
  //    __truncsfbf2 (f16 uses the F16C instructions or libgcc's
  //    __truncsfhf2/__extendhfsf2). Integer powers become helper functions,
  //    math ops with an LLVM intrinsic become it, the rest (erf, ...) libm
  //    calls.
  arith::ArithExpandOpsPassOptions expand;
  expand.includeBf16 = true;
  pm.addPass(arith::createArithExpandOpsPass(expand));
  pm.addPass(
      createConvertMathToFuncs()); // math.fpowi/ipowi (torch-mlir's x**k)
  pm.addPass(createConvertMathToLLVMPass());
  pm.addPass(createConvertMathToLibmPass());

  // 4. Structured ops -> loops -> branches.
  pm.addPass(createConvertLinalgToLoopsPass());
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createLowerAffinePass());
  pm.addPass(std::make_unique<SCFToCFLastToFirstPass>());

  // 5. Everything -> LLVM dialect in one conversion, then a cleanup. Region
  //    simplification is off: it finds nothing to merge in these CFGs and
  //    costs as much as the rest of the cleanup.
  pm.addPass(std::make_unique<ConvertToLLVMPass>());
  GreedyRewriteConfig cleanup;
  cleanup.setRegionSimplificationLevel(GreedySimplifyRegionLevel::Disabled);
  pm.addPass(createCanonicalizerPass(cleanup));
}

void mlir::mhc::registerMHCCPUPipeline() {
  // Its own steps, so that they can be run (and timed) one by one.
  PassRegistration<OutlineMHCOpsPass>();
  PassRegistration<SplitSharedDestinationsPass>();
  PassRegistration<SplitDeallocsPass>();
  PassRegistration<SCFToCFLastToFirstPass>();
  PassRegistration<ConvertToLLVMPass>();
  PassPipelineRegistration<>(
      "mhc-cpu-pipeline",
      "Lower mhc and func/arith/math/tensor/linalg/bufferization IR on "
      "tensors to the LLVM dialect for the CPU (the portable reference path): "
      "mhc ops outlined into one function per kind and convert-mhc-to-linalg, "
      "convert-elementwise-to-linalg, canonicalize, linalg elementwise fusion, "
      "one-shot bufferization with identity-layout function boundaries, "
      "ownership-based buffer deallocation, arith expansion including bf16, "
      "math to funcs/LLVM/libm, linalg to loops, scf to cf, then memref, "
      "func, cf, arith, index and ub to LLVM in one conversion. Compile time "
      "and memory grow linearly with the depth of a model. The output runs "
      "under `mlir-runner -e main --entry-point-result=void "
      "--shared-libs=libmlir_runner_utils.so,libmlir_c_runner_utils.so`.",
      buildMHCCPUPipeline);
}
