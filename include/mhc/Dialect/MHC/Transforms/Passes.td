//===- Passes.td - mhc dialect transformation passes -------*- tablegen -*-===//
#ifndef MHC_DIALECT_MHC_TRANSFORMS_PASSES_TD
#define MHC_DIALECT_MHC_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def MHCHyperConnect : Pass<"mhc-hyperconnect", "ModuleOp"> {
  let summary = "Rewrite an ordinary residual network into hyper-connected (mHC) form";
  let description = [{
    Finds chains of residual adds `x_{l+1} = x_l + F_l(x_l)` in the entry
    block of each function and widens the residual stream into `streams`
    hyper-connected streams.

    Matched adds: `arith.addf` on tensors, `linalg.add`, an elementwise-add
    `linalg.generic` (identity maps, parallel loops, payload `addf` of the
    two inputs, optionally one side scaled by the constant 1.0 as torch-mlir
    writes `a + 1.0 * b`) and `tosa.add` with equal shapes; either operand
    order. The residual operand x is the one the other operand y depends on,
    looked at through stream views: dtype conversions (`arith.extf`/`truncf`,
    their one-op `linalg.generic` form, float `tosa.cast`), `tensor.cast`,
    `tensor.expand_shape`/`collapse_shape` keeping the last dim C as its own
    group and static `tosa.reshape` keeping C; the views are replayed on the
    widened stream. F is every op that depends on x and feeds y; `tensor.dim`
    reads only shapes and is no dependence, and size checks (`cf.assert` and
    pure ops feeding only checks) may read F. A parallel block written
    residual-first, `(x + F1(x)) + F2(x)`, is two blocks sharing the first's
    `pre_apply`. A block is left alone when something F computes is used
    outside it (the branch escapes), when the operands broadcast, when its
    residual input also feeds another residual add, or when its chain has
    fewer than `min-blocks` blocks (a lone `x + f(x)` is usually part of an
    activation, e.g. GELU's `x + 0.044715 x^3`; a post-norm network's adds
    are chains of one).

    A function that looks like a residual network but keeps residual adds
    gets a warning, with a note per add saying where and why.

    Rewrite of a chain of k blocks:
    `mhc.expand` of the chain's start value `h` into `[..., n, C]`; per block
    the coefficient ops (mode), `mhc.pre_apply` replacing F's uses of `x_l`,
    `mhc.post_res` replacing the add; every reader of the stream outside the
    chain (the chain end's users included) reads the streams' mean: their
    pairwise f32 sum times 1/n. With identical streams the mean is the stream
    itself, so `mode=hc init=identity` (and `mode=static-hc`) computes
    exactly what the original did (bit-exact for n a power of two).
    `exit=learned` ends each chain with DeepSeek-V4's head mix instead: per
    token weights computed like `pre` from parameters `exit<k>.*` (mhc:
    `fn f32[n, nC]`, `scale f32[1]`, `base f32[n]`), whose identity init is
    the mean.

    Modes: `mhc` = `mhc.norm_project` / `mhc.split_mixes` / `mhc.sinkhorn`
    with per-layer parameters `fn f32[M, nC]`, `scale f32[3]`, `base f32[M]`
    (M = n^2 + 2n); `hc` = dynamic HC (spec 5b) in linalg/math ops: per-stream
    RMSNorm, `alpha * tanh(theta . x~) + b`, parameters `theta f32[n+2, C]`
    (rows: pre, post, res_0..res_{n-1}), `scale`, `base` (same layout as
    mhc); `static-hc` = `base` only.

    Init: `paper` = alpha 0.01; mhc: fn ~ U(-0.01, 0.01) (seeded per layer),
    base pre = -log(n-1) (sigmoid = 1/n), post = 0 (post = 1), res = 0
    (Sinkhorn gives J/n); hc: theta ~ U(-0.01, 0.01), base = HC identity
    (pre one-hot e_{l mod n}, post 1, res I); static-hc: pre = 1/n, post 1,
    res I. `identity` (hc, static-hc) = theta 0 and the HC identity base.

    Params: `arguments` appends each parameter to the function signature
    with `{mhc.param = "layer<L>.<fn|theta|scale|base>"}` (L counts blocks
    in the function); the pass fails if the function has callers.
    `constants` materialises them as `arith.constant`s.

    `remarks=true` emits one remark per other add left alone saying why, and
    a summary per function (residual adds found and converted, the analysis'
    work, which is linear in the function's size). See
    docs/HyperConnect.md.
  }];
  let dependentDialects = ["::mlir::mhc::MHCDialect",
                           "::mlir::arith::ArithDialect",
                           "::mlir::tensor::TensorDialect",
                           "::mlir::linalg::LinalgDialect",
                           "::mlir::math::MathDialect",
                           "::mlir::func::FuncDialect"];
  let options = [
    Option<"streams", "streams", "int64_t", /*default=*/"4",
           "Number of residual streams n (>= 1)">,
    Option<"mode", "mode", "::mlir::mhc::HyperConnectMode",
           /*default=*/"::mlir::mhc::HyperConnectMode::MHC",
           "Coefficient form",
           [{::llvm::cl::values(
             clEnumValN(::mlir::mhc::HyperConnectMode::MHC, "mhc",
                        "manifold-constrained: sigmoid / 2*sigmoid / Sinkhorn"),
             clEnumValN(::mlir::mhc::HyperConnectMode::HC, "hc",
                        "dynamic hyper-connections: tanh, unconstrained"),
             clEnumValN(::mlir::mhc::HyperConnectMode::StaticHC, "static-hc",
                        "constant mappings"))}]>,
    Option<"iterations", "iterations", "int64_t", /*default=*/"20",
           "Sinkhorn iterations (mode=mhc)">,
    Option<"init", "init", "::mlir::mhc::HyperConnectInit",
           /*default=*/"::mlir::mhc::HyperConnectInit::Paper",
           "Initialisation",
           [{::llvm::cl::values(
             clEnumValN(::mlir::mhc::HyperConnectInit::Paper, "paper",
                        "alpha = 0.01, small seeded random weights"),
             clEnumValN(::mlir::mhc::HyperConnectInit::Identity, "identity",
                        "mode=hc/static-hc only: the widened network "
                        "computes what the original did"))}]>,
    Option<"params", "params", "::mlir::mhc::HyperConnectParams",
           /*default=*/"::mlir::mhc::HyperConnectParams::Arguments",
           "Where the new parameters live",
           [{::llvm::cl::values(
             clEnumValN(::mlir::mhc::HyperConnectParams::Arguments,
                        "arguments", "appended to the function signature"),
             clEnumValN(::mlir::mhc::HyperConnectParams::Constants,
                        "constants", "initialised in the IR"))}]>,
    Option<"minBlocks", "min-blocks", "int64_t", /*default=*/"2",
           "Rewrite only chains of at least this many residual blocks">,
    Option<"exit", "exit", "::mlir::mhc::HyperConnectExit",
           /*default=*/"::mlir::mhc::HyperConnectExit::Mean",
           "How each chain's streams are combined at its end",
           [{::llvm::cl::values(
             clEnumValN(::mlir::mhc::HyperConnectExit::Mean, "mean",
                        "the mean of the streams (pairwise f32 sum, / n)"),
             clEnumValN(::mlir::mhc::HyperConnectExit::Learned, "learned",
                        "DeepSeek-V4's head mix: per-token weights computed "
                        "like pre from the chain's own parameters; its "
                        "identity init is the mean"))}]>,
    Option<"remarks", "remarks", "bool", /*default=*/"false",
           "Emit a remark for every add that was considered and skipped, "
           "saying why">,
  ];
}

def MHCFuse : Pass<"mhc-fuse", "func::FuncOp"> {
  let summary = "Group mhc ops into the kernels they will become (dispatch formation)";
  let description = [{
    Wraps the mhc ops of each sublayer into `mhc.fused` groups, one per GPU
    kernel (or kernel sequence): a "pre" group (norm_project + split_mixes +
    sinkhorn + pre_apply) and a "post" group (post_res, with the next
    sublayer's norm_project when it reads post_res's result); in a backward
    in --mhc-generate-backward's shape, a "backward" group per sublayer, or a
    "post_backward" and a "pre_backward" group around an opaque sublayer's
    VJP. With `fold-dy` (the default) a sublayer's backward group also
    computes the dy of the sublayer below, whose dout is its dx (the dy fold,
    docs/GPU.md): the lower sublayer then needs no post_backward group. Ops
    already inside an `mhc.fused` are left alone, so a second run gives what
    the first gave.
  }];
  let options = [
    Option<"foldDy", "fold-dy", "bool", /*default=*/"true",
           "Compute a sublayer's dy in the backward group of the sublayer "
           "above (the dy fold); off: every sublayer gets its own dy pass">
  ];
  let dependentDialects = ["::mlir::mhc::MHCDialect",
                           "::mlir::tensor::TensorDialect"];
}

def MHCGenerateBackward : Pass<"mhc-generate-backward", "ModuleOp"> {
  let summary = "Generate the gradient function of functions made of mhc ops";
  let description = [{
    For every selected function `@f` (default: every function that contains
    an mhc op) emits, next to the unchanged `@f`:

    * `@f_forward(inputs...) -> (results..., saved...)`: `@f` that also
      returns what the backward needs (result attributes
      `mhc.saved = "sublayer 0: mix"` name each saved value);
    * `@f_backward(inputs..., saved..., result cotangents...) ->
      (input cotangents...)`: the gradient of every input (activations and
      parameters; zero for an input no result depends on). Parameters used
      by several sublayers get the sum of their gradients.

    The body of `@f` may hold mhc forward ops (expand, collapse,
    norm_project, split_mixes, sinkhorn, pre_apply, post_res),
    `arith.constant` and `func.call`s of opaque functions (the sublayer F:
    attention, FFN). A call of `@F` is differentiated by calling its
    vector-Jacobian product, the function named by the callee's `mhc.vjp`
    attribute or else `@F_vjp`, which must exist with the signature
    `(F's operands..., cotangents of F's results...) -> (cotangents of F's
    operands...)`. Anything else (other ops, several blocks, non-float
    arguments, a missing VJP, taken names) is a located error and the
    module is left unchanged.

    Per sublayer the backward reads (the GPU fusion matches this shape):
    the recomputed `split_mixes` and `sinkhorn`, `post_res_grad`, the VJP
    call, `pre_apply_grad`, `sinkhorn_grad` (which recomputes the Sinkhorn
    iterates itself), `split_mixes_grad`, `norm_project_grad`, then the
    three cotangents of x summed with two `arith.addf` (x's element type).
    Gradients of expand / collapse are collapse / expand of the cotangent.

    A function whose `@f_forward` / `@f_backward` an earlier run generated
    (they carry `mhc.forward_of` / `mhc.backward_of`) is skipped, so the
    pass is idempotent.

    `save` chooses what the forward keeps and the backward recomputes; the
    activations the backward reads (the stream entering each sublayer, F's
    inputs and outputs) are kept in every mode except `inputs`. See
    docs/Gradients.md for the memory per token of each choice.
  }];
  let dependentDialects = ["::mlir::mhc::MHCDialect",
                           "::mlir::arith::ArithDialect",
                           "::mlir::tensor::TensorDialect",
                           "::mlir::func::FuncDialect"];
  let options = [
    Option<"save", "save", "::mlir::mhc::BackwardSave",
           /*default=*/"::mlir::mhc::BackwardSave::Mixes",
           "What the forward saves for the backward",
           [{::llvm::cl::values(
             clEnumValN(::mlir::mhc::BackwardSave::Mixes, "mixes",
                        "the paper's choice: each sublayer's mix (4*M bytes "
                        "per token); split_mixes and sinkhorn are recomputed, "
                        "and pre_apply where only an rms_norm reads u"),
             clEnumValN(::mlir::mhc::BackwardSave::All, "all",
                        "also pre, post, logits and comb: nothing is "
                        "recomputed but the Sinkhorn iterates"),
             clEnumValN(::mlir::mhc::BackwardSave::Inputs, "inputs",
                        "only the results of opaque calls: every mhc op "
                        "(norm_project included) is recomputed from the "
                        "inputs"))}]>,
    ListOption<"functions", "functions", "std::string",
               "Functions to differentiate (default: every function that "
               "contains an mhc op)">,
  ];
}

#endif // MHC_DIALECT_MHC_TRANSFORMS_PASSES_TD
