// A sublayer's backward whose du comes through the pre-norm, as
// --mhc-generate-backward writes it (u made again from x and the recomputed pre;
// test/Transforms/mhc-fuse.mlir's @prenorm_backward): the GPU tests' input.
func.func private @attn_vjp(tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func @prenorm_backward(%arg0: tensor<?x4x64xbf16>, %arg1: tensor<24x256xf32>, %arg2: tensor<3xf32>, %arg3: tensor<24xf32>, %arg4: tensor<64xbf16>, %arg5: tensor<?x24xf32> {mhc.saved = "sublayer 0: mix"}, %arg6: tensor<?x64xbf16> {mhc.saved = "rms_norm 0: result"}, %arg7: tensor<?x64xbf16> {mhc.saved = "call 0 (@attn): result 0"}, %arg8: tensor<?x4x64xbf16> {mhc.cotangent_of = 0 : i64}) -> (tensor<?x4x64xbf16> {mhc.gradient_of = 0 : i64}, tensor<24x256xf32> {mhc.gradient_of = 1 : i64}, tensor<3xf32> {mhc.gradient_of = 2 : i64}, tensor<24xf32> {mhc.gradient_of = 3 : i64}, tensor<64xbf16> {mhc.gradient_of = 4 : i64}) {
  %pre, %post, %logits = mhc.split_mixes %arg5, %arg2, %arg3 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %0 = mhc.sinkhorn %logits : tensor<?x4x4xf32>
  %dy, %dx, %dpost, %dcomb = mhc.post_res_grad %arg7, %arg0, %post, %0, %arg8 : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>
  %1 = call @attn_vjp(%arg6, %dy) : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %2 = mhc.pre_apply %arg0, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %du, %dweight = mhc.rms_norm_grad %2, %arg4, %1 : tensor<?x64xbf16>, tensor<64xbf16>, tensor<?x64xbf16>
  %dx_0, %dpre = mhc.pre_apply_grad %arg0, %pre, %du : tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>
  %3 = mhc.sinkhorn_grad %logits, %dcomb : tensor<?x4x4xf32>
  %dmix, %dscale, %dbase = mhc.split_mixes_grad %arg5, %arg2, %arg3, %dpre, %dpost, %3 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %dx_1, %dfn = mhc.norm_project_grad %arg0, %arg1, %dmix : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>
  %4 = arith.addf %dx, %dx_0 : tensor<?x4x64xbf16>
  %5 = arith.addf %4, %dx_1 : tensor<?x4x64xbf16>
  return %5, %dfn, %dscale, %dbase, %dweight : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>, tensor<64xbf16>
}
