//===- GenerateBackward.cpp - --mhc-generate-backward ---------------------===//
//
// Reverse-mode differentiation of functions made of mhc ops and opaque calls.
// For @f it emits, leaving @f unchanged,
//
//   @f_forward(inputs...) -> (results..., saved...)
//   @f_backward(inputs..., saved..., result cotangents...) -> input cotangents
//
// in four steps:
//  1. check that every op can be differentiated, before anything is written;
//  2. activity: the ops some returned value depends on;
//  3. plan: every primal value a gradient op reads is a function input, a
//     value the forward saves, or recomputed in the backward (option `save`);
//  4. emit the backward, walking the ops in reverse. The cotangent of a value
//     is summed (arith.addf) once its first user in the forward has been
//     processed, so the three cotangents of a sublayer's x are added right
//     after its norm_project_grad: the regular per-sublayer shape the GPU
//     fusion matches.
//
// docs/Gradients.md explains the choices and what they cost per token.
//
//===----------------------------------------------------------------------===//
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/TypeSwitch.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCGENERATEBACKWARD
#include "mhc/Dialect/MHC/Transforms/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;
using namespace mlir::mhc;

namespace {

constexpr StringLiteral kPassName = "mhc-generate-backward";

bool isForwardMHCOp(Operation *op) {
  return isa<ExpandOp, CollapseOp, NormProjectOp, SplitMixesOp, SinkhornOp,
             PreApplyOp, PostResOp, RmsNormOp>(op);
}

bool isFloatTensor(Type type) {
  auto tensor = dyn_cast<RankedTensorType>(type);
  return tensor && isa<FloatType>(tensor.getElementType());
}

std::string forwardName(func::FuncOp f) {
  return (f.getSymName() + "_forward").str();
}
std::string backwardName(func::FuncOp f) {
  return (f.getSymName() + "_backward").str();
}

/// The vector-Jacobian product of the callee of `call`: the function named by
/// the callee's `mhc.vjp` attribute, else @<callee>_vjp. It must have the
/// type (operands..., result cotangents...) -> (operand cotangents...).
FailureOr<func::FuncOp> lookupVJP(func::CallOp call,
                                  const SymbolTable &symbols) {
  auto callee = symbols.lookup<func::FuncOp>(call.getCallee());
  if (!callee)
    return call.emitError()
           << kPassName << ": no function @" << call.getCallee();
  for (Type t :
       llvm::concat<Type>(call.getOperandTypes(), call.getResultTypes()))
    if (!isFloatTensor(t))
      return call.emitError()
             << kPassName << ": the operands and results of a differentiated "
             << "call must be ranked float tensors, got " << t;
  std::string name = (call.getCallee() + "_vjp").str();
  if (Attribute attr = callee->getAttr("mhc.vjp")) {
    auto ref = dyn_cast<FlatSymbolRefAttr>(attr);
    if (!ref) {
      InFlightDiagnostic diag =
          call.emitError() << kPassName << ": the 'mhc.vjp' attribute of @"
                           << call.getCallee()
                           << " must name a function (@name), got " << attr;
      diag.attachNote(callee.getLoc()) << "callee defined here";
      return diag;
    }
    name = ref.getValue().str();
  }
  SmallVector<Type> vjpInputs(call.getOperandTypes());
  llvm::append_range(vjpInputs, call.getResultTypes());
  auto expected =
      FunctionType::get(call.getContext(), vjpInputs, call.getOperandTypes());
  auto vjp = symbols.lookup<func::FuncOp>(name);
  if (!vjp) {
    InFlightDiagnostic diag =
        call.emitError() << kPassName << ": @" << call.getCallee()
                         << " is opaque; its vector-Jacobian product @" << name
                         << " : " << expected
                         << " (operands, then cotangents of the results -> "
                            "cotangents of the operands) must exist; name "
                            "another function with the callee's 'mhc.vjp' "
                            "attribute";
    diag.attachNote(callee.getLoc()) << "callee defined here";
    return diag;
  }
  if (vjp.getFunctionType() != expected) {
    InFlightDiagnostic diag =
        call.emitError() << kPassName << ": the vector-Jacobian product @"
                         << name << " of @" << call.getCallee() << " has type "
                         << vjp.getFunctionType() << ", expected " << expected;
    diag.attachNote(vjp.getLoc()) << "defined here";
    return diag;
  }
  return vjp;
}

/// Step 1: everything the backward generation relies on, checked up front.
LogicalResult checkDifferentiable(func::FuncOp f, const SymbolTable &symbols) {
  if (f.isExternal())
    return f.emitError() << kPassName << ": @" << f.getSymName()
                         << " has no body to differentiate";
  if (!f.getBody().hasOneBlock())
    return f.emitError() << kPassName << ": @" << f.getSymName()
                         << " has several blocks; only straight-line "
                            "functions can be differentiated";
  for (auto [i, type] : llvm::enumerate(f.getArgumentTypes()))
    if (!isFloatTensor(type))
      return f.emitError() << kPassName << ": argument " << i << " of @"
                           << f.getSymName()
                           << " is not a ranked float tensor: " << type;
  for (auto [i, type] : llvm::enumerate(f.getResultTypes()))
    if (!isFloatTensor(type))
      return f.emitError() << kPassName << ": result " << i << " of @"
                           << f.getSymName()
                           << " is not a ranked float tensor: " << type;
  for (StringRef name : {forwardName(f), backwardName(f)})
    if (symbols.lookup(name))
      return f.emitError() << kPassName << ": cannot generate @" << name
                           << " for @" << f.getSymName()
                           << ": the name is taken";
  for (Operation &op : f.getBody().front()) {
    if (auto sinkhorn = dyn_cast<SinkhornOp>(op)) {
      if (sinkhorn.getIterations() > kMaxSinkhornGradIterations)
        return op.emitError()
               << kPassName << ": sinkhorn_grad supports at most "
               << kMaxSinkhornGradIterations << " iterations, got "
               << sinkhorn.getIterations();
      continue;
    }
    if (isForwardMHCOp(&op) || isa<arith::ConstantOp, func::ReturnOp>(op))
      continue;
    if (auto call = dyn_cast<func::CallOp>(op)) {
      if (failed(lookupVJP(call, symbols)))
        return failure();
      continue;
    }
    return op.emitError()
           << kPassName << ": cannot differentiate '" << op.getName()
           << "' (supported: mhc.expand, mhc.collapse, mhc.norm_project, "
              "mhc.split_mixes, mhc.sinkhorn, mhc.pre_apply, mhc.post_res, "
              "mhc.rms_norm, arith.constant, and func.call of a function with a "
              "vector-Jacobian product; run this pass before --mhc-fuse)";
  }
  return success();
}

/// The primal values the gradient of `op` reads.
SmallVector<Value> primalOperands(Operation *op) {
  return TypeSwitch<Operation *, SmallVector<Value>>(op)
      .Case([](NormProjectOp o) -> SmallVector<Value> {
        return {o.getX(), o.getFn()};
      })
      .Case([](SplitMixesOp o) -> SmallVector<Value> {
        return {o.getMix(), o.getScale(), o.getBase()};
      })
      .Case([](SinkhornOp o) -> SmallVector<Value> { return {o.getLogits()}; })
      .Case([](PreApplyOp o) -> SmallVector<Value> {
        return {o.getX(), o.getPre()};
      })
      .Case([](PostResOp o) -> SmallVector<Value> {
        return {o.getY(), o.getX(), o.getPost(), o.getComb()};
      })
      .Case([](RmsNormOp o) -> SmallVector<Value> {
        return {o.getU(), o.getWeight()};
      })
      .Case([](func::CallOp o) -> SmallVector<Value> {
        return SmallVector<Value>(o.getOperands());
      })
      .Default([](Operation *) -> SmallVector<Value> { return {}; });
}

/// A name for a saved value a user can match with the forward: the sublayer
/// is the index of the op among the ops of its kind in the function.
std::string savedLabel(Value v, const DenseMap<Operation *, unsigned> &index) {
  auto result = cast<OpResult>(v);
  Operation *op = result.getOwner();
  std::string label;
  llvm::raw_string_ostream os(label);
  unsigned k = index.lookup(op);
  TypeSwitch<Operation *>(op)
      .Case([&](NormProjectOp) { os << "sublayer " << k << ": mix"; })
      .Case([&](SplitMixesOp) {
        static const char *names[] = {"pre", "post", "logits"};
        os << "sublayer " << k << ": " << names[result.getResultNumber()];
      })
      .Case([&](SinkhornOp) { os << "sublayer " << k << ": comb"; })
      .Case([&](PreApplyOp) { os << "sublayer " << k << ": u"; })
      .Case([&](PostResOp) { os << "sublayer " << k << ": x_next"; })
      .Case([&](RmsNormOp) { os << "rms_norm " << k << ": result"; })
      .Case([&](ExpandOp) { os << "expand " << k << ": x"; })
      .Case([&](CollapseOp) { os << "collapse " << k << ": h"; })
      .Case([&](func::CallOp call) {
        os << "call " << k << " (@" << call.getCallee() << "): result "
           << result.getResultNumber();
      })
      .Default([&](Operation *) { os << "value"; });
  return label;
}

/// A zero tensor of `type`; its dynamic (token) dims are read from `leader`,
/// whose leading dims are the same tokens.
Value zeroTensor(OpBuilder &b, Location loc, RankedTensorType type,
                 Value leader) {
  TypedAttr zero = b.getFloatAttr(type.getElementType(), 0.0);
  if (type.hasStaticShape())
    return arith::ConstantOp::create(b, loc,
                                     DenseElementsAttr::get(type, zero));
  SmallVector<Value> sizes;
  for (int64_t d = 0; d < type.getRank(); ++d)
    if (type.isDynamicDim(d))
      sizes.push_back(tensor::DimOp::create(b, loc, leader, d));
  Value scalar = arith::ConstantOp::create(b, loc, zero);
  return tensor::SplatOp::create(b, loc, type, scalar, sizes);
}

/// Steps 2-4 for one function.
class BackwardGenerator {
public:
  BackwardGenerator(func::FuncOp f, BackwardSave save)
      : f(f), save(save), body(f.getBody().front()),
        ret(cast<func::ReturnOp>(body.getTerminator())) {}

  void run(const SymbolTable &symbols) {
    findActiveOps();
    plan();
    func::FuncOp forward = emitForward();
    emitBackward(forward, symbols);
  }

private:
  func::FuncOp f;
  BackwardSave save;
  Block &body;
  func::ReturnOp ret;

  llvm::SmallPtrSet<Operation *, 32> active;
  /// The first op in the forward (an active op or the return) that reads a
  /// value and so contributes to its cotangent.
  DenseMap<Value, Operation *> firstUser;
  /// Values the forward returns for the backward, in forward order.
  SmallVector<Value> saved;
  DenseMap<Operation *, unsigned> kindIndex;

  // Backward state.
  OpBuilder *b = nullptr;
  IRMapping primal; // forward value -> backward value (input, saved, clone)
  DenseMap<Value, SmallVector<Value>> contributions;
  DenseMap<Value, Value> cotangent; // summed, once all users are processed

  bool contributes(Operation *user) {
    return user == ret.getOperation() || active.contains(user);
  }

  /// Step 2: an op is active when a result reaches the return.
  void findActiveOps() {
    for (Operation &op : llvm::reverse(body.without_terminator())) {
      if (isa<arith::ConstantOp>(op))
        continue;
      for (Value r : op.getResults())
        if (llvm::any_of(r.getUsers(),
                         [&](Operation *u) { return contributes(u); }))
          active.insert(&op);
    }
    for (Operation &op : body)
      if (contributes(&op))
        for (Value v : op.getOperands())
          firstUser.try_emplace(v, &op);
    llvm::StringMap<unsigned> counts;
    for (Operation &op : body)
      kindIndex[&op] = counts[op.getName().getStringRef()]++;
  }

  /// Whether the backward recomputes `op` rather than reading its results
  /// from the forward.
  bool recomputes(Operation *op) const {
    // A constant is free; expand is a broadcast, cheaper to redo than to keep.
    if (isa<arith::ConstantOp, ExpandOp>(op))
      return true;
    switch (save) {
    case BackwardSave::Mixes:
      // u feeding only the sublayer's pre-norm: the backward needs it for
      // rms_norm_grad alone, and the GPU kernels that read x anyway make it
      // again (docs/PreNorm.md) instead of keeping T x C of it.
      if (auto apply = dyn_cast<PreApplyOp>(op))
        return llvm::all_of(apply.getU().getUsers(),
                            [](Operation *u) { return isa<RmsNormOp>(u); });
      return isa<SplitMixesOp, SinkhornOp>(op);
    case BackwardSave::All:
      return false;
    case BackwardSave::Inputs:
      return isForwardMHCOp(op);
    }
    llvm_unreachable("unknown save mode");
  }

  /// Step 3: decides how the backward gets each primal value it reads.
  void plan() {
    llvm::SmallPtrSet<Value, 32> planned;
    llvm::SetVector<Value> toSave;
    std::function<void(Value)> require = [&](Value v) {
      if (isa<BlockArgument>(v) || !planned.insert(v).second)
        return;
      Operation *def = v.getDefiningOp();
      if (recomputes(def)) {
        for (Value operand : def->getOperands())
          require(operand);
        return;
      }
      toSave.insert(v);
    };
    for (Operation *op : active) {
      for (Value v : primalOperands(op))
        require(v);
      // A zero cotangent of a dynamic call result takes its sizes from it.
      if (isa<func::CallOp>(op))
        for (Value r : op->getResults())
          if (!firstUser.count(r) &&
              !cast<RankedTensorType>(r.getType()).hasStaticShape())
            require(r);
    }
    saved = toSave.takeVector();
    llvm::sort(saved, [](Value a, Value b) {
      auto ra = cast<OpResult>(a), rb = cast<OpResult>(b);
      if (ra.getOwner() != rb.getOwner())
        return ra.getOwner()->isBeforeInBlock(rb.getOwner());
      return ra.getResultNumber() < rb.getResultNumber();
    });
  }

  StringAttr label(Value v) {
    return StringAttr::get(f.getContext(), savedLabel(v, kindIndex));
  }

  /// @f_forward: a copy of @f that also returns the saved values.
  func::FuncOp emitForward() {
    IRMapping map;
    auto forward = cast<func::FuncOp>(f->clone(map));
    forward.setSymName(forwardName(f));
    f->getBlock()->getOperations().insertAfter(f->getIterator(), forward);
    auto forwardRet =
        cast<func::ReturnOp>(forward.getBody().front().getTerminator());
    SmallVector<Value> results(forwardRet.getOperands());
    SmallVector<DictionaryAttr> resultAttrs;
    for (unsigned i = 0; i < f.getNumResults(); ++i)
      resultAttrs.push_back(DictionaryAttr::get(
          f.getContext(), cast<FunctionOpInterface>(*f).getResultAttrs(i)));
    for (Value v : saved) {
      results.push_back(map.lookup(v));
      resultAttrs.push_back(DictionaryAttr::get(
          f.getContext(), {NamedAttribute("mhc.saved", label(v))}));
    }
    forwardRet->setOperands(results);
    forward.setType(FunctionType::get(f.getContext(), f.getArgumentTypes(),
                                      TypeRange(ValueRange(results))));
    forward.setAllResultAttrs(resultAttrs);
    forward->setAttr("mhc.forward_of", f.getSymNameAttr());
    return forward;
  }

  /// The backward value of forward value `v`, recomputing its producer (and,
  /// recursively, its operands) at the current point when it is neither an
  /// input nor saved.
  Value materialize(Value v) {
    if (Value known = primal.lookupOrNull(v))
      return known;
    Operation *def = v.getDefiningOp();
    for (Value operand : def->getOperands())
      materialize(operand);
    b->clone(*def, primal);
    return primal.lookup(v);
  }

  void contribute(Value v, Value cot) {
    if (!v.getDefiningOp<arith::ConstantOp>())
      contributions[v].push_back(cot);
  }

  /// Sums the cotangents of the operands of `user` whose last contribution it
  /// was (it is their first user in the forward).
  void finishOperands(Operation *user) {
    for (Value v : user->getOperands()) {
      if (firstUser.lookup(v) != user || cotangent.count(v))
        continue;
      auto it = contributions.find(v);
      if (it == contributions.end())
        continue;
      Value sum = it->second.front();
      for (Value c : ArrayRef<Value>(it->second).drop_front())
        sum = arith::AddFOp::create(*b, v.getLoc(), sum, c);
      cotangent[v] = sum;
    }
  }

  /// The cotangent of result `r` of an active op, or zeros when no returned
  /// value depends on it; dynamic sizes come from `leader`.
  Value resultCotangent(Value r, Value leader) {
    if (Value cot = cotangent.lookup(r))
      return cot;
    return zeroTensor(*b, r.getLoc(), cast<RankedTensorType>(r.getType()),
                      leader);
  }

  /// `v` with type `type` (a cast between static and dynamic token dims).
  Value castTo(Value v, Type type) {
    if (v.getType() == type)
      return v;
    return tensor::CastOp::create(*b, v.getLoc(), type, v);
  }

  /// Emits the gradient of one active forward op and records the cotangents
  /// of its operands. Operands are materialized one statement at a time so
  /// that the order of the emitted ops does not depend on the compiler.
  void differentiate(Operation *op, const SymbolTable &symbols) {
    Location loc = op->getLoc();
    OpBuilder &ob = *b;
    TypeSwitch<Operation *>(op)
        .Case([&](NormProjectOp o) {
          Value x = materialize(o.getX());
          Value fn = materialize(o.getFn());
          Value dmix = resultCotangent(o.getMix(), x);
          auto g =
              NormProjectGradOp::create(ob, loc, x, fn, dmix, o.getEpsAttr());
          contribute(o.getX(), g.getDx());
          contribute(o.getFn(), g.getDfn());
        })
        .Case([&](SplitMixesOp o) {
          Value mix = materialize(o.getMix());
          Value scale = materialize(o.getScale());
          Value base = materialize(o.getBase());
          Value dpre = resultCotangent(o.getPre(), mix);
          Value dpost = resultCotangent(o.getPost(), mix);
          Value dlogits = resultCotangent(o.getLogits(), mix);
          auto g = SplitMixesGradOp::create(ob, loc, mix, scale, base, dpre,
                                            dpost, dlogits, o.getPostMultAttr(),
                                            o.getPreEpsAttr());
          contribute(o.getMix(), g.getDmix());
          contribute(o.getScale(), g.getDscale());
          contribute(o.getBase(), g.getDbase());
        })
        .Case([&](SinkhornOp o) {
          Value logits = materialize(o.getLogits());
          // sinkhorn_grad's operands share one type; the forward's result
          // may differ from its operand in static token dims.
          Value dcomb =
              castTo(resultCotangent(o.getComb(), logits), logits.getType());
          auto g = SinkhornGradOp::create(
              ob, loc, logits, dcomb, o.getIterationsAttr(), o.getEpsAttr());
          contribute(o.getLogits(), g.getDlogits());
        })
        .Case([&](PreApplyOp o) {
          Value x = materialize(o.getX());
          Value pre = materialize(o.getPre());
          Value du = resultCotangent(o.getU(), x);
          auto g = PreApplyGradOp::create(ob, loc, x, pre, du);
          contribute(o.getX(), g.getDx());
          contribute(o.getPre(), g.getDpre());
        })
        .Case([&](PostResOp o) {
          Value y = materialize(o.getY());
          Value x = materialize(o.getX());
          Value post = materialize(o.getPost());
          Value comb = materialize(o.getComb());
          Value dout = resultCotangent(o.getResult(), x);
          auto g = PostResGradOp::create(ob, loc, y, x, post, comb, dout);
          contribute(o.getY(), g.getDy());
          contribute(o.getX(), g.getDx());
          contribute(o.getPost(), g.getDpost());
          contribute(o.getComb(), g.getDcomb());
        })
        .Case([&](RmsNormOp o) {
          Value u = materialize(o.getU());
          Value weight = materialize(o.getWeight());
          Value dout = resultCotangent(o.getResult(), u);
          auto g = RmsNormGradOp::create(ob, loc, u, weight, dout,
                                         o.getEpsAttr());
          contribute(o.getU(), g.getDu());
          contribute(o.getWeight(), g.getDweight());
        })
        .Case([&](ExpandOp o) {
          // The gradient of a broadcast is the sum over the streams.
          Value dh = CollapseOp::create(ob, loc, o.getInput().getType(),
                                        cotangent.lookup(o.getResult()));
          contribute(o.getInput(), dh);
        })
        .Case([&](CollapseOp o) {
          // The gradient of the sum over the streams is a broadcast.
          auto inType = o.getInput().getType();
          Value dx = ExpandOp::create(
              ob, loc, inType, cotangent.lookup(o.getResult()),
              ob.getI64IntegerAttr(inType.getDimSize(inType.getRank() - 2)));
          contribute(o.getInput(), dx);
        })
        .Case([&](func::CallOp call) {
          func::FuncOp vjp = *lookupVJP(call, symbols);
          SmallVector<Value> args;
          for (Value operand : call.getOperands())
            args.push_back(materialize(operand));
          for (Value r : call.getResults()) {
            // A result nothing returned depends on gets a zero cotangent; a
            // dynamic one takes its sizes from the saved result (see plan).
            bool needsSizes =
                !cotangent.count(r) &&
                !cast<RankedTensorType>(r.getType()).hasStaticShape();
            args.push_back(
                resultCotangent(r, needsSizes ? materialize(r) : Value()));
          }
          auto vjpCall = func::CallOp::create(ob, loc, vjp, args);
          for (auto [operand, cot] :
               llvm::zip(call.getOperands(), vjpCall.getResults()))
            contribute(operand, cot);
        });
  }

  void emitBackward(func::FuncOp forward, const SymbolTable &symbols) {
    MLIRContext *ctx = f.getContext();
    unsigned numArgs = f.getNumArguments(), numSaved = saved.size();
    SmallVector<Type> inputs(f.getArgumentTypes());
    for (Value v : saved)
      inputs.push_back(v.getType());
    llvm::append_range(inputs, f.getResultTypes());

    OpBuilder mb(ctx);
    mb.setInsertionPointAfter(forward);
    auto backward = func::FuncOp::create(
        mb, f.getLoc(), backwardName(f),
        FunctionType::get(ctx, inputs, f.getArgumentTypes()));
    backward.setVisibility(f.getVisibility());
    backward->setAttr("mhc.backward_of", f.getSymNameAttr());
    for (unsigned i = 0; i < numArgs; ++i)
      backward.setArgAttrs(i, cast<FunctionOpInterface>(*f).getArgAttrs(i));
    for (auto [i, v] : llvm::enumerate(saved))
      backward.setArgAttr(numArgs + i, "mhc.saved", label(v));
    for (unsigned k = 0; k < f.getNumResults(); ++k)
      backward.setArgAttr(numArgs + numSaved + k, "mhc.cotangent_of",
                          mb.getI64IntegerAttr(k));
    for (unsigned i = 0; i < numArgs; ++i)
      backward.setResultAttr(i, "mhc.gradient_of", mb.getI64IntegerAttr(i));

    Block *entry = backward.addEntryBlock();
    OpBuilder builder = OpBuilder::atBlockEnd(entry);
    b = &builder;
    for (unsigned i = 0; i < numArgs; ++i)
      primal.map(f.getArgument(i), entry->getArgument(i));
    for (auto [i, v] : llvm::enumerate(saved))
      primal.map(v, entry->getArgument(numArgs + i));

    // The result cotangents seed the walk.
    for (auto [k, v] : llvm::enumerate(ret.getOperands()))
      contribute(v, entry->getArgument(numArgs + numSaved + k));
    finishOperands(ret);
    for (Operation &op : llvm::reverse(body.without_terminator())) {
      if (!active.contains(&op))
        continue;
      differentiate(&op, symbols);
      finishOperands(&op);
    }

    SmallVector<Value> gradients;
    for (unsigned i = 0; i < numArgs; ++i) {
      Value arg = entry->getArgument(i);
      Value cot = cotangent.lookup(f.getArgument(i));
      gradients.push_back(
          cot ? cot
              : zeroTensor(builder, f.getLoc(),
                           cast<RankedTensorType>(arg.getType()), arg));
    }
    func::ReturnOp::create(builder, ret.getLoc(), gradients);
  }
};

/// True when an earlier run of the pass generated @f_forward and @f_backward
/// for `f` (they name it in mhc.forward_of / mhc.backward_of): such an `f` is
/// skipped, so running the pass again leaves the module unchanged.
bool alreadyDifferentiated(func::FuncOp f, const SymbolTable &symbols) {
  auto generatedFor = [&](const std::string &name, StringRef attr) {
    Operation *op = symbols.lookup(name);
    auto of = op ? op->getAttrOfType<StringAttr>(attr) : StringAttr();
    return of && of.getValue() == f.getSymName();
  };
  return generatedFor(forwardName(f), "mhc.forward_of") &&
         generatedFor(backwardName(f), "mhc.backward_of");
}

struct MHCGenerateBackwardPass
    : mhc::impl::MHCGenerateBackwardBase<MHCGenerateBackwardPass> {
  using MHCGenerateBackwardBase::MHCGenerateBackwardBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    SymbolTable symbols(module);
    SmallVector<func::FuncOp> targets;
    if (functions.empty()) {
      for (auto f : module.getOps<func::FuncOp>())
        if (!f.isExternal() && !f->hasAttr("mhc.forward_of") &&
            !f->hasAttr("mhc.backward_of") &&
            f.walk([](Operation *op) {
               return isa_and_nonnull<MHCDialect>(op->getDialect())
                          ? WalkResult::interrupt()
                          : WalkResult::advance();
             }).wasInterrupted())
          targets.push_back(f);
    } else {
      for (const std::string &name : functions) {
        auto f = symbols.lookup<func::FuncOp>(name);
        if (!f) {
          module.emitError() << kPassName << ": no function @" << name
                             << " (option 'functions')";
          return signalPassFailure();
        }
        if (!llvm::is_contained(targets, f))
          targets.push_back(f);
      }
    }
    llvm::erase_if(targets, [&](func::FuncOp f) {
      return alreadyDifferentiated(f, symbols);
    });
    // Nothing is written unless every function can be differentiated.
    for (func::FuncOp f : targets)
      if (failed(checkDifferentiable(f, symbols)))
        return signalPassFailure();
    for (func::FuncOp f : targets)
      BackwardGenerator(f, save).run(symbols);
  }
};

} // namespace
