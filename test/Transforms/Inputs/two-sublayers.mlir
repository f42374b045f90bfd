// Two mHC sublayers chained through opaque calls (attention, FFN), the shape
// --mhc-hyperconnect gives a transformer block; its --mhc-generate-backward
// is a whole-model backward (test/Transforms/mhc-fuse.mlir, WHOLE).
func.func private @attn(tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func private @attn_vjp(tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func private @ffn(tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func private @ffn_vjp(tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func @two_sublayers(%x0: tensor<?x4x64xbf16>, %fn0: tensor<24x256xf32>, %s0: tensor<3xf32>, %b0: tensor<24xf32>,
                         %fn1: tensor<24x256xf32>, %s1: tensor<3xf32>, %b1: tensor<24xf32>) -> tensor<?x4x64xbf16> {
  %mix0 = mhc.norm_project %x0, %fn0 : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre0, %post0, %l0 = mhc.split_mixes %mix0, %s0, %b0 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %c0 = mhc.sinkhorn %l0 : tensor<?x4x4xf32>
  %u0 = mhc.pre_apply %x0, %pre0 : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %y0 = func.call @attn(%u0) : (tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %x1 = mhc.post_res %y0, %x0, %post0, %c0 : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
  %mix1 = mhc.norm_project %x1, %fn1 : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre1, %post1, %l1 = mhc.split_mixes %mix1, %s1, %b1 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %c1 = mhc.sinkhorn %l1 : tensor<?x4x4xf32>
  %u1 = mhc.pre_apply %x1, %pre1 : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %y1 = func.call @ffn(%u1) : (tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %x2 = mhc.post_res %y1, %x1, %post1, %c1 : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
  return %x2 : tensor<?x4x64xbf16>
}
