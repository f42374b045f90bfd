//===- MHCDialect.td - the mhc dialect ---------------------*- tablegen -*-===//
#ifndef MHC_DIALECT_TD
#define MHC_DIALECT_TD

include "mlir/IR/OpBase.td"

def MHC_Dialect : Dialect {
  let name = "mhc";
  let cppNamespace = "::mlir::mhc";
  // Canonicalization patterns create arith and tensor ops.
  // Folds (e.g. Sinkhorn of a constant) materialize as arith.constant.
  let hasConstantMaterializer = 1;
  // #mhc.schedule, attached to kernel groups as `mhc.schedule`.
  let useDefaultAttributePrinterParser = 1;
  let hasOperationAttrVerify = 1;
  let dependentDialects = ["::mlir::arith::ArithDialect",
                           "::mlir::tensor::TensorDialect"];
  let summary = "Manifold-Constrained Hyper-Connections (mHC)";
  let description = [{
    The `mhc` dialect models DeepSeek's Manifold-Constrained Hyper-Connections.
    A transformer's single residual stream `h` of width `C` is widened to `n`
    parallel streams `x : [..., n, C]`. Per token and per sublayer three small
    mappings are computed from `x` itself:

    * `pre`  (`n` weights): how the streams are mixed into the sublayer input,
    * `post` (`n` weights): how the sublayer output is written back per stream,
    * `comb` (`n x n`): how streams mix among themselves; it is projected onto
      the doubly-stochastic matrices with Sinkhorn-Knopp, which keeps every
      product of such matrices a non-expansive averaging.

    One sublayer in this dialect reads:

    ```mlir
    %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
    %pre, %post, %logits = mhc.split_mixes %mix, %scale, %base : ...
    %comb = mhc.sinkhorn %logits : tensor<?x4x4xf32> -> tensor<?x4x4xf32>
    %u = mhc.pre_apply %x, %pre : ...            // input of the sublayer F
    %y = ... F(%u) ...
    %xn = mhc.post_res %y, %x, %post, %comb : ...
    ```

    Orientation: `comb[i][j]` is the weight from source stream `i` into
    destination stream `j` (the transpose of the paper's `H_res`).
    Leading dimensions `...` are any number of static or dynamic token
    dimensions; `n` and `C` are static. Activations are bf16, f16 or f32 and
    every reduction accumulates in f32; coefficients are f32.
  }];
}

class MHC_Op<string mnemonic, list<Trait> traits = []>
    : Op<MHC_Dialect, mnemonic, traits>;

#endif // MHC_DIALECT_TD
