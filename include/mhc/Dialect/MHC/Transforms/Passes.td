//===- Passes.td - mhc dialect transformation passes -------*- tablegen -*-===//
#ifndef MHC_DIALECT_MHC_TRANSFORMS_PASSES_TD
#define MHC_DIALECT_MHC_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def MHCHyperConnect : Pass<"mhc-hyperconnect", "ModuleOp"> {
  let summary = "Rewrite an ordinary residual network into hyper-connected (mHC) form";
  let description = [{
    Finds chains of residual adds `x_{l+1} = x_l + F_l(x_l)` in each function
    and widens the residual stream into `streams` hyper-connected streams:
    `mhc.expand` at the start of the chain, per block the coefficient ops and
    `mhc.pre_apply` feeding what was F's input, `mhc.post_res` in place of the
    add, and `mhc.collapse` before the stream's final users.
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
    Option<"mode", "mode", "std::string", /*default=*/"\"mhc\"",
           "Coefficient form: 'mhc' (sigmoid / 2*sigmoid / Sinkhorn), 'hc' "
           "(dynamic hyper-connections, tanh, unconstrained) or 'static-hc' "
           "(constant mappings)">,
    Option<"iterations", "iterations", "int64_t", /*default=*/"20",
           "Sinkhorn iterations (mode=mhc)">,
    Option<"init", "init", "std::string", /*default=*/"\"paper\"",
           "Initialisation: 'paper' (alpha = 0.01) or 'identity' (the widened "
           "network computes what the original did)">,
    Option<"params", "params", "std::string", /*default=*/"\"arguments\"",
           "Where the new parameters live: 'arguments' (appended to the "
           "function signature) or 'constants' (initialised in the IR)">,
    Option<"remarks", "remarks", "bool", /*default=*/"false",
           "Emit a remark for every add that was considered and skipped, "
           "saying why">,
  ];
}

def MHCFuse : Pass<"mhc-fuse", "func::FuncOp"> {
  let summary = "Group mhc ops into the kernels they will become (dispatch formation)";
  let description = [{
    Wraps the mhc ops of each sublayer into `mhc.fused` groups, one per GPU
    kernel: a "pre" group (norm_project + split_mixes + sinkhorn + pre_apply)
    and a "post" group (post_res, with the next sublayer's norm_project when
    it reads post_res's result).
  }];
  let dependentDialects = ["::mlir::mhc::MHCDialect"];
}

#endif // MHC_DIALECT_MHC_TRANSFORMS_PASSES_TD
