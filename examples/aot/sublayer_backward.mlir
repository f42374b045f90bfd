// The backward of one mHC sublayer (n = 4, C = 4096, bf16), for the AOT route: compiled by
// `python3 -m mhc.compiler gpu ... --pipeline mhc` (examples/aot/build.sh) into a shared
// library with the C interface `_mlir_ciface_hc_sublayer_backward`. It takes the forward's
// inputs, its saved mix (`mhc.saved`: the fused kernels recompute split_mixes and the
// Sinkhorn iterates from it) and the cotangents du (of the sublayer's input u) and dxn (of
// x_next), and returns dx, dy, dfn, dscale, dbase; --mhc-fuse makes one backward group of
// three kernels (rows, cols, params; docs/GPU.md "Backward kernels").
func.func @hc_sublayer_backward(%x: tensor<?x4x4096xbf16>, %y: tensor<?x4096xbf16>, %fn: tensor<24x16384xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>, %mix: tensor<?x24xf32> {mhc.saved = "mix"},
                                %du: tensor<?x4096xbf16>, %dxn: tensor<?x4x4096xbf16>) -> (tensor<?x4x4096xbf16>, tensor<?x4096xbf16>, tensor<24x16384xf32>, tensor<3xf32>, tensor<24xf32>) {
  %pre, %post, %l = "mhc.split_mixes"(%mix, %scale, %base) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>) -> (tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %comb = "mhc.sinkhorn"(%l) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  %dy, %dxa, %dpost, %dcomb = "mhc.post_res_grad"(%y, %x, %post, %comb, %dxn) : (tensor<?x4096xbf16>, tensor<?x4x4096xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x4096xbf16>) -> (tensor<?x4096xbf16>, tensor<?x4x4096xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %dxb, %dpre = "mhc.pre_apply_grad"(%x, %pre, %du) : (tensor<?x4x4096xbf16>, tensor<?x4xf32>, tensor<?x4096xbf16>) -> (tensor<?x4x4096xbf16>, tensor<?x4xf32>)
  %dl = "mhc.sinkhorn_grad"(%l, %dcomb) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>, tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  %dmix, %dscale, %dbase = "mhc.split_mixes_grad"(%mix, %scale, %base, %dpre, %dpost, %dl) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>) -> (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>)
  %dxc, %dfn = "mhc.norm_project_grad"(%x, %fn, %dmix) <{eps = 1.000000000e-06 : f32}> : (tensor<?x4x4096xbf16>, tensor<24x16384xf32>, tensor<?x24xf32>) -> (tensor<?x4x4096xbf16>, tensor<24x16384xf32>)
  %dxab = arith.addf %dxa, %dxb : tensor<?x4x4096xbf16>
  %dx = arith.addf %dxab, %dxc : tensor<?x4x4096xbf16>
  return %dx, %dy, %dfn, %dscale, %dbase : tensor<?x4x4096xbf16>, tensor<?x4096xbf16>, tensor<24x16384xf32>, tensor<3xf32>, tensor<24xf32>
}

