// One mHC sublayer (n = 4 streams, width C = 4096, bf16 residual, any token
// count), split the way the GPU path fuses it (spec section 7):
//   norm_project  the first layer's coefficients projection
//   pre           split_mixes + sinkhorn + pre_apply from this layer's mix
//   post          post_res of this layer + norm_project of the next layer
// so that the steady state of a layer is pre(l) + post(l).
//
// Build (docs/Runtime.md):
//   python -m mhc.compiler gpu examples/aot/sublayer.mlir -o out/libsublayer_C4096.so --pipeline mhc
// Other widths: replace 4096 (and 16384 = 4 * C).
module {
  func.func @norm_project(%x: tensor<?x4x4096xbf16>, %fn: tensor<24x16384xf32>)
      -> tensor<?x24xf32> {
    %mix = mhc.norm_project %x, %fn : tensor<?x4x4096xbf16>, tensor<24x16384xf32> -> tensor<?x24xf32>
    return %mix : tensor<?x24xf32>
  }

  func.func @pre(%x: tensor<?x4x4096xbf16>, %mix: tensor<?x24xf32>, %scale: tensor<3xf32>,
                 %base: tensor<24xf32>)
      -> (tensor<?x4096xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>) {
    %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
    %comb = mhc.sinkhorn %l : tensor<?x4x4xf32>
    %u = mhc.pre_apply %x, %pre : tensor<?x4x4096xbf16>, tensor<?x4xf32> -> tensor<?x4096xbf16>
    return %u, %post, %comb : tensor<?x4096xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>
  }

  func.func @post(%y: tensor<?x4096xbf16>, %x: tensor<?x4x4096xbf16>, %post: tensor<?x4xf32>,
                  %comb: tensor<?x4x4xf32>, %fn_next: tensor<24x16384xf32>)
      -> (tensor<?x4x4096xbf16>, tensor<?x24xf32>) {
    %xn = mhc.post_res %y, %x, %post, %comb : tensor<?x4096xbf16>, tensor<?x4x4096xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x4096xbf16>
    %mix = mhc.norm_project %xn, %fn_next : tensor<?x4x4096xbf16>, tensor<24x16384xf32> -> tensor<?x24xf32>
    return %xn, %mix : tensor<?x4x4096xbf16>, tensor<?x24xf32>
  }
}
