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

def MHC_RmsNormOp : MHC_Op<"rms_norm", [Pure, AllTypesMatch<["u", "result"]>]> {
  let summary = "the sublayer's RMSNorm of its input u (fusable with pre_apply)";
  let description = [{
    The pre-norm that a sublayer applies to its input, as `torch.nn.RMSNorm`
    does, so that the GPU path can compute it in the kernel that writes `u`
    (not part of the spec's ops: an extension, docs/PreNorm.md). Per token,
    in f32:

    ```
    r             = rsqrt(sum_c u[..., c]^2 / C + eps)
    out[..., c]   = u[..., c] * r * weight[c]      // rounded once to u's type
    ```

    `weight` is `[C]`, of u's element type or f32 (a model's parameter).

    ```mlir
    %o = mhc.rms_norm %u, %w {eps = 1.0e-06 : f32}
        : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$u, MHC_ActTensor:$weight,
                       DefaultValuedAttr<F32Attr, "1.0e-6">:$eps);
  let results = (outs MHC_ActTensor:$result);
  let assemblyFormat = [{
    $u `,` $weight attr-dict `:` type($u) `,` type($weight) `->` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Gradients (vector-Jacobian products, spec section 5)
//
// One op per forward op (expand and collapse are each other's transpose).
// Operands: the forward op's operands in its order, then the cotangents of
// its results in result order. Results: the cotangents of the operands in
// operand order, each of exactly its operand's type; the parameter gradients
// (dfn, dscale, dbase) are summed over all token dims. Attributes are the
// forward op's, with the same defaults. Every reduction accumulates in f32
// and each activation-typed result element is rounded once.
//===----------------------------------------------------------------------===//

def MHC_NormProjectGradOp : MHC_Op<"norm_project_grad", [Pure,
    AllTypesMatch<["x", "dx"]>, AllTypesMatch<["fn", "dfn"]>]> {
  let summary = "gradient of mhc.norm_project";
  let description = [{
    Per token, with `v = x.reshape(n*C)` in f32, `K = n*C`,
    `r = rsqrt(sum_k v[k]^2 / K + eps)` and `m = v @ fn^T`:

    ```
    dm  = dmix * r
    dS  = -(sum_m dmix[m] * m[m]) * r^3 / (2K)
    dx  = (dm @ fn + 2 * v * dS).reshape(n, C)      // rounded once to x's type
    dfn = sum over all tokens of dm^T (x) v          // f32[M, n*C]
    ```

    ```mlir
    %dx, %dfn = mhc.norm_project_grad %x, %fn, %dmix
        : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$x, MHC_F32Tensor:$fn,
                       MHC_F32Tensor:$dmix,
                       DefaultValuedAttr<F32Attr, "1.0e-6">:$eps);
  let results = (outs MHC_ActTensor:$dx, MHC_F32Tensor:$dfn);
  let assemblyFormat = [{
    $x `,` $fn `,` $dmix attr-dict `:` type($x) `,` type($fn) `,` type($dmix)
  }];
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

def MHC_SplitMixesGradOp : MHC_Op<"split_mixes_grad", [Pure,
    AllTypesMatch<["mix", "dmix"]>, AllTypesMatch<["scale", "dscale"]>,
    AllTypesMatch<["base", "dbase"]>]> {
  let summary = "gradient of mhc.split_mixes";
  let description = [{
    With `a = mix * [scale0]*n ++ [scale1]*n ++ [scale2]*n^2 + base` and
    `s = sigmoid(a)`, per token:

    ```
    da[0:n]   = dpre * s * (1 - s)
    da[n:2n]  = dpost * post_mult * s * (1 - s)    // = dpost * post * (1 - post/post_mult)
    da[2n:M]  = dlogits.reshape(n*n)
    dmix      = da * [scale0]*n ++ [scale1]*n ++ [scale2]*n^2
    dscale[g] = sum over all tokens of sum_{k in group g} da[k] * mix[k]
    dbase     = sum over all tokens of da
    ```

    `pre_eps` does not enter the gradient; it is kept so that the op carries
    its forward op's attributes.

    ```mlir
    %dmix, %dscale, %dbase = mhc.split_mixes_grad %mix, %scale, %base, %dpre, %dpost, %dlogits
        : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>,
          tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
    ```
  }];
  let arguments = (ins MHC_F32Tensor:$mix, MHC_F32Tensor:$scale,
                       MHC_F32Tensor:$base, MHC_F32Tensor:$dpre,
                       MHC_F32Tensor:$dpost, MHC_F32Tensor:$dlogits,
                       DefaultValuedAttr<F32Attr, "2.0">:$post_mult,
                       DefaultValuedAttr<F32Attr, "1.0e-6">:$pre_eps);
  let results = (outs MHC_F32Tensor:$dmix, MHC_F32Tensor:$dscale,
                      MHC_F32Tensor:$dbase);
  let assemblyFormat = [{
    $mix `,` $scale `,` $base `,` $dpre `,` $dpost `,` $dlogits attr-dict `:`
    type($mix) `,` type($scale) `,` type($base) `,` type($dpre) `,`
    type($dpost) `,` type($dlogits)
  }];
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

def MHC_SinkhornGradOp : MHC_Op<"sinkhorn_grad", [Pure,
    AllTypesMatch<["logits", "dcomb", "dlogits"]>]> {
  let summary = "gradient of mhc.sinkhorn, recomputing the iterates";
  let description = [{
    Recomputes the forward iterates from `logits` (they are never an input)
    and walks the normalisations backwards. For a step `Y = X / (s + eps)`
    with `s = sum_axis X`, the cotangent `g` of `Y` becomes

    ```
    g = (g - sum_axis(g * Y)) / (s + eps)        // broadcast along the axis
    ```

    starting from `g = dcomb` at the last column normalisation; through the
    softmax (`P0 = softmax(logits, over j)`, its `+ eps` passes `g` through):

    ```
    dlogits = P0 * (g - sum_j g * P0)
    ```

    `iterations` is at most 1000. Folds to a constant when both operands are
    constant (up to a bounded amount of compile-time work).

    ```mlir
    %dlogits = mhc.sinkhorn_grad %logits, %dcomb : tensor<?x4x4xf32>
    ```
  }];
  let arguments = (ins MHC_F32Tensor:$logits, MHC_F32Tensor:$dcomb,
                       DefaultValuedAttr<I64Attr, "20">:$iterations,
                       DefaultValuedAttr<F32Attr, "1.0e-6">:$eps);
  let results = (outs MHC_F32Tensor:$dlogits);
  let assemblyFormat = "$logits `,` $dcomb attr-dict `:` type($logits)";
  let hasVerifier = 1;
  let hasFolder = 1;
  let hasCanonicalizer = 1;
}

def MHC_PreApplyGradOp : MHC_Op<"pre_apply_grad", [Pure,
    AllTypesMatch<["x", "dx"]>, AllTypesMatch<["pre", "dpre"]>]> {
  let summary = "gradient of mhc.pre_apply";
  let description = [{
    ```
    dx[..., i, c] = pre[..., i] * du[..., c]          // rounded once to x's type
    dpre[..., i]  = sum_c du[..., c] * x[..., i, c]   // f32
    ```

    `du` has the element type of `x`.

    ```mlir
    %dx, %dpre = mhc.pre_apply_grad %x, %pre, %du
        : tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$x, MHC_F32Tensor:$pre,
                       MHC_ActTensor:$du);
  let results = (outs MHC_ActTensor:$dx, MHC_F32Tensor:$dpre);
  let assemblyFormat = [{
    $x `,` $pre `,` $du attr-dict `:` type($x) `,` type($pre) `,` type($du)
  }];
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

def MHC_PostResGradOp : MHC_Op<"post_res_grad", [Pure,
    AllTypesMatch<["y", "dy"]>, AllTypesMatch<["x", "dx"]>,
    AllTypesMatch<["post", "dpost"]>, AllTypesMatch<["comb", "dcomb"]>]> {
  let summary = "gradient of mhc.post_res";
  let description = [{
    With `dout` the cotangent of `x_next`:

    ```
    dy[..., c]       = sum_j post[..., j] * dout[..., j, c]     // rounded once
    dx[..., i, c]    = sum_j comb[..., i, j] * dout[..., j, c]  // rounded once
    dpost[..., j]    = sum_c y[..., c] * dout[..., j, c]        // f32
    dcomb[..., i, j] = sum_c x[..., i, c] * dout[..., j, c]     // f32
    ```

    `dout` has the element type of `x`.

    ```mlir
    %dy, %dx, %dpost, %dcomb = mhc.post_res_grad %y, %x, %post, %comb, %dout
        : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>,
          tensor<?x4x4xf32>, tensor<?x4x64xbf16>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$y, MHC_ActTensor:$x,
                       MHC_F32Tensor:$post, MHC_F32Tensor:$comb,
                       MHC_ActTensor:$dout);
  let results = (outs MHC_ActTensor:$dy, MHC_ActTensor:$dx,
                      MHC_F32Tensor:$dpost, MHC_F32Tensor:$dcomb);
  let assemblyFormat = [{
    $y `,` $x `,` $post `,` $comb `,` $dout attr-dict `:` type($y) `,`
    type($x) `,` type($post) `,` type($comb) `,` type($dout)
  }];
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

def MHC_RmsNormGradOp : MHC_Op<"rms_norm_grad", [Pure,
    AllTypesMatch<["u", "du"]>, AllTypesMatch<["weight", "dweight"]>]> {
  let summary = "gradient of mhc.rms_norm";
  let description = [{
    With `r` as in mhc.rms_norm, `g = dout * weight` and
    `S = sum_c g[..., c] * u[..., c]`, in f32:

    ```
    du[..., c]  = r * g[..., c] - u[..., c] * r^3 * S / C   // rounded once
    dweight[c]  = sum over all tokens of dout[..., c] * u[..., c] * r
                                                  // rounded once to weight's type
    ```

    `dout` has u's type.

    ```mlir
    %du, %dw = mhc.rms_norm_grad %u, %w, %dout {eps = 1.0e-06 : f32}
        : tensor<?x64xbf16>, tensor<64xbf16>, tensor<?x64xbf16>
    ```
  }];
  let arguments = (ins MHC_ActTensor:$u, MHC_ActTensor:$weight,
                       MHC_ActTensor:$dout,
                       DefaultValuedAttr<F32Attr, "1.0e-6">:$eps);
  let results = (outs MHC_ActTensor:$du, MHC_ActTensor:$dweight);
  let assemblyFormat = [{
    $u `,` $weight `,` $dout attr-dict `:` type($u) `,` type($weight) `,`
    type($dout)
  }];
  let hasVerifier = 1;
  let hasCanonicalizer = 1;
}

//===----------------------------------------------------------------------===//
// Fusion groups (formed by --mhc-fuse)
//===----------------------------------------------------------------------===//

def MHC_FusedOp : MHC_Op<"fused", [SingleBlock, RecursiveMemoryEffects]> {
  let summary = "a group of mhc ops that the GPU path lowers together";
  let description = [{
    Formed by `--mhc-fuse`. The body holds the mhc ops of one kernel group
    and ends in `mhc.yield` with the values used outside. It captures its
    inputs from the enclosing region. `kind` names the group: `"pre"`
    (norm_project, split_mixes, sinkhorn and pre_apply of one sublayer),
    `"post"` (post_res, optionally with the next sublayer's norm_project),
    `"backward"` (all gradient ops of one sublayer, with the split_mixes and
    sinkhorn they recompute and the two arith.addf that sum dx),
    `"post_backward"` / `"pre_backward"` (the same split at an opaque
    sublayer's VJP). A forward group becomes one GPU kernel (with a
    norm_project, by default after a small kernel that prepares fn), a
    backward group up to three (docs/GPU.md).

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
