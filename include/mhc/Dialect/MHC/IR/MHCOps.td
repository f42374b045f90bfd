//===- MHCOps.td - mhc dialect operations ------------------*- tablegen -*-===//
//
// Op names, operand order and attribute names are the public surface fixed by
// the mHC spec (section 9); the assembly formats are ours.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_OPS_TD
#define MHC_OPS_TD

include "mhc/Dialect/MHC/IR/MHCDialect.td"
include "mlir/IR/BuiltinAttributes.td"
include "mlir/IR/CommonAttrConstraints.td"
include "mlir/IR/CommonTypeConstraints.td"
include "mlir/Interfaces/ControlFlowInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

// Residual-stream activations: [..., n, C] or [..., C].
def MHC_ActTensor : RankedTensorOf<[BF16, F16, F32]>;
// Coefficients, weights and logits are always f32.
def MHC_F32Tensor : RankedTensorOf<[F32]>;

//===----------------------------------------------------------------------===//
// Stream entry and exit
//===----------------------------------------------------------------------===//

def MHC_ExpandOp : MHC_Op<"expand", [Pure]> {
  let summary = "replicate one residual stream into n streams";
  let description = [{
    `x[..., i, :] = h[..., :]` for every stream `i < streams`. Used once at the
    start of a hyper-connected chain (after the embedding). Its gradient sums
    over the streams.

    ```mlir
    %x = mhc.expand %h, streams = 4 : tensor<?x64xbf16> -> tensor<?x4x64xbf16>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$input, I64Attr:$streams);
  let results = (outs MHC_ActTensor:$result);
  let assemblyFormat = [{
    $input `,` `streams` `=` $streams attr-dict `:` type($input) `->` type($result)
  }];
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

def MHC_CollapseOp : MHC_Op<"collapse", [Pure]> {
  let summary = "sum the n streams back into one";
  let description = [{
    `h[..., :] = sum_i x[..., i, :]`, accumulated in f32 and rounded once to
    the element type. The plain-HC way to leave the widened stream.

    ```mlir
    %h = mhc.collapse %x : tensor<?x4x64xbf16> -> tensor<?x64xbf16>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$input);
  let results = (outs MHC_ActTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

//===----------------------------------------------------------------------===//
// Coefficients
//===----------------------------------------------------------------------===//

def MHC_NormProjectOp : MHC_Op<"norm_project", [Pure]> {
  let summary = "RMS-normalised projection of the streams onto the M = n^2+2n coefficients";
  let description = [{
    Per token, with `v = x.reshape(n*C)` in f32 (stream-major, `k = i*C + c`):

    ```
    mix = (v @ fn^T) * rsqrt(sum_k v[k]^2 / (n*C) + eps)
    ```

    `fn` is `f32[M, n*C]` with `M = n^2 + 2n`; the result is `f32[..., M]`
    ordered `[pre (n) | post (n) | res (n*n)]`.

    ```mlir
    %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$x, MHC_F32Tensor:$fn,
                       DefaultValuedAttr<F32Attr, "1.0e-6">:$eps);
  let results = (outs MHC_F32Tensor:$mix);
  let assemblyFormat = [{
    $x `,` $fn attr-dict `:` type($x) `,` type($fn) `->` type($mix)
  }];
  let hasVerifier = 1;
}

def MHC_SplitMixesOp : MHC_Op<"split_mixes", [Pure]> {
  let summary = "scale, bias and activate the coefficients into pre, post and Sinkhorn logits";
  let description = [{
    With `a = mix * [scale0]*n ++ [scale1]*n ++ [scale2]*n^2 + base`:

    ```
    pre    = sigmoid(a[0:n]) + pre_eps
    post   = sigmoid(a[n:2n]) * post_mult
    logits = a[2n:M].reshape(n, n)
    ```

    ```mlir
    %pre, %post, %logits = mhc.split_mixes %mix, %scale, %base
        : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>
        -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
    ```
  }];
  let arguments = (ins MHC_F32Tensor:$mix, MHC_F32Tensor:$scale,
                       MHC_F32Tensor:$base,
                       DefaultValuedAttr<F32Attr, "2.0">:$post_mult,
                       DefaultValuedAttr<F32Attr, "1.0e-6">:$pre_eps);
  let results = (outs MHC_F32Tensor:$pre, MHC_F32Tensor:$post,
                      MHC_F32Tensor:$logits);
  let assemblyFormat = [{
    $mix `,` $scale `,` $base attr-dict `:` type($mix) `,` type($scale) `,`
    type($base) `->` type($pre) `,` type($post) `,` type($logits)
  }];
  let hasVerifier = 1;
}

def MHC_SinkhornOp : MHC_Op<"sinkhorn", [Pure, SameOperandsAndResultType]> {
  let summary = "project n x n logits onto the doubly-stochastic matrices";
  let description = [{
    Sinkhorn-Knopp on each `n x n` matrix `L` of the input:

    ```
    P = softmax(L, over j) + eps          // row max subtracted first
    P = P / (sum_i P[i][j] + eps)         // column normalisation
    repeat iterations-1 times:
      P = P / (sum_j P[i][j] + eps)       // row
      P = P / (sum_i P[i][j] + eps)       // column
    ```

    The result `comb[i][j]` is the weight from source stream `i` into
    destination stream `j`. Folds to a constant when its input is constant.

    ```mlir
    %comb = mhc.sinkhorn %logits : tensor<?x4x4xf32>
    %c10 = mhc.sinkhorn %logits {iterations = 10 : i64} : tensor<8x4x4xf32>
    ```
  }];
  let arguments = (ins MHC_F32Tensor:$logits,
                       DefaultValuedAttr<I64Attr, "20">:$iterations,
                       DefaultValuedAttr<F32Attr, "1.0e-6">:$eps);
  let results = (outs MHC_F32Tensor:$comb);
  let assemblyFormat = "$logits attr-dict `:` type($logits)";
  let hasVerifier = 1;
  let hasFolder = 1;
}

//===----------------------------------------------------------------------===//
// Mixing
//===----------------------------------------------------------------------===//

def MHC_PreApplyOp : MHC_Op<"pre_apply", [Pure]> {
  let summary = "mix the n streams into the sublayer input";
  let description = [{
    `u[..., c] = sum_i pre[..., i] * x[..., i, c]`, accumulated in f32 and
    stored in the element type of `x`.

    ```mlir
    %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$x, MHC_F32Tensor:$pre);
  let results = (outs MHC_ActTensor:$u);
  let assemblyFormat = [{
    $x `,` $pre attr-dict `:` type($x) `,` type($pre) `->` type($u)
  }];
  let hasVerifier = 1;
}

def MHC_PostResOp : MHC_Op<"post_res", [Pure]> {
  let summary = "write the sublayer output back and mix the residual streams";
  let description = [{
    `x_next[..., j, c] = post[..., j] * y[..., c] + sum_i comb[..., i, j] * x[..., i, c]`,
    accumulated in f32 and stored in the element type of `x`.

    ```mlir
    %xn = mhc.post_res %y, %x, %post, %comb
        : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>
        -> tensor<?x4x64xbf16>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$y, MHC_ActTensor:$x,
                       MHC_F32Tensor:$post, MHC_F32Tensor:$comb);
  let results = (outs MHC_ActTensor:$result);
  let assemblyFormat = [{
    $y `,` $x `,` $post `,` $comb attr-dict `:` type($y) `,` type($x) `,`
    type($post) `,` type($comb) `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Fusion groups (formed by --mhc-fuse)
//===----------------------------------------------------------------------===//

def MHC_FusedOp : MHC_Op<"fused", [SingleBlock, RecursiveMemoryEffects]> {
  let summary = "a group of mhc ops that becomes one GPU kernel";
  let description = [{
    Formed by `--mhc-fuse`. The body holds the mhc ops of one kernel and ends
    in `mhc.yield` with the values used outside. It captures its inputs from
    the enclosing region. `kind` names the kernel: `"pre"` (norm_project,
    split_mixes, sinkhorn and pre_apply of one sublayer) or `"post"`
    (post_res, optionally with the next sublayer's norm_project).

    ```mlir
    %pre, %post, %comb, %u = mhc.fused "pre" -> tensor<?x4xf32>, ... {
      ...
      mhc.yield %p, %q, %c, %u : ...
    }
    ```
  }];
  let arguments = (ins StrAttr:$kind);
  let results = (outs Variadic<AnyType>:$results);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = [{
    $kind (`->` type($results)^)? $body attr-dict
  }];
  let hasVerifier = 1;
}

def MHC_YieldOp : MHC_Op<"yield", [Pure, Terminator, ReturnLike,
                                   HasParent<"FusedOp">]> {
  let summary = "return the values of an mhc.fused group";
  let arguments = (ins Variadic<AnyType>:$values);
  let assemblyFormat = "($values^ `:` type($values))? attr-dict";
}

#endif // MHC_OPS_TD
