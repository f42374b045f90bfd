// The backward of one mHC sublayer (n = 4, C = 64, bf16) in the shapes --mhc-fuse groups,
// as mhc.torch.kernel_build writes them: the whole sublayer, and the two halves around a
// sublayer's own VJP. Shared by the fusion, schedule, lowering and PTX tests.
func.func @hc_post_backward(%y: tensor<?x64xbf16>, %x: tensor<?x4x64xbf16>, %post: tensor<?x4xf32>, %comb: tensor<?x4x4xf32>, %dxn: tensor<?x4x64xbf16>) -> (tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>) {
  %dy, %dx, %dpost, %dcomb = "mhc.post_res_grad"(%y, %x, %post, %comb, %dxn) : (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>) -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  return %dy, %dpost, %dcomb : tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>
}
func.func @hc_pre_backward(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>, %mix: tensor<?x24xf32> {mhc.saved = "mix"}, %du: tensor<?x64xbf16>,
                           %dpost: tensor<?x4xf32>, %dcomb: tensor<?x4x4xf32>, %dxn: tensor<?x4x64xbf16>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>) {
  %pre, %post, %l = "mhc.split_mixes"(%mix, %scale, %base) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>) -> (tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %comb = "mhc.sinkhorn"(%l) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  // post_res_grad for its dx only: that part does not read y.
  %c0 = arith.constant 0 : index
  %T = tensor.dim %x, %c0 : tensor<?x4x64xbf16>
  %y = tensor.empty(%T) : tensor<?x64xbf16>
  %dy_, %dxa, %dpost_, %dcomb_ = "mhc.post_res_grad"(%y, %x, %post, %comb, %dxn) : (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>) -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %dxb, %dpre = "mhc.pre_apply_grad"(%x, %pre, %du) : (tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>) -> (tensor<?x4x64xbf16>, tensor<?x4xf32>)
  %dl = "mhc.sinkhorn_grad"(%l, %dcomb) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>, tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  %dmix, %dscale, %dbase = "mhc.split_mixes_grad"(%mix, %scale, %base, %dpre, %dpost, %dl) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>) -> (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>)
  %dxc, %dfn = "mhc.norm_project_grad"(%x, %fn, %dmix) <{eps = 1.000000000e-06 : f32}> : (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>)
  %dxab = arith.addf %dxa, %dxb : tensor<?x4x64xbf16>
  %dx = arith.addf %dxab, %dxc : tensor<?x4x64xbf16>
  return %dx, %dfn, %dscale, %dbase : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>
}
func.func @hc_sublayer_backward(%x: tensor<?x4x64xbf16>, %y: tensor<?x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>, %mix: tensor<?x24xf32> {mhc.saved = "mix"},
                                %du: tensor<?x64xbf16>, %dxn: tensor<?x4x64xbf16>) -> (tensor<?x4x64xbf16>, tensor<?x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>) {
  %pre, %post, %l = "mhc.split_mixes"(%mix, %scale, %base) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>) -> (tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %comb = "mhc.sinkhorn"(%l) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  %dy, %dxa, %dpost, %dcomb = "mhc.post_res_grad"(%y, %x, %post, %comb, %dxn) : (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>) -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %dxb, %dpre = "mhc.pre_apply_grad"(%x, %pre, %du) : (tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>) -> (tensor<?x4x64xbf16>, tensor<?x4xf32>)
  %dl = "mhc.sinkhorn_grad"(%l, %dcomb) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>, tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  %dmix, %dscale, %dbase = "mhc.split_mixes_grad"(%mix, %scale, %base, %dpre, %dpost, %dl) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>) -> (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>)
  %dxc, %dfn = "mhc.norm_project_grad"(%x, %fn, %dmix) <{eps = 1.000000000e-06 : f32}> : (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>)
  %dxab = arith.addf %dxa, %dxb : tensor<?x4x64xbf16>
  %dx = arith.addf %dxab, %dxc : tensor<?x4x64xbf16>
  return %dx, %dy, %dfn, %dscale, %dbase : tensor<?x4x64xbf16>, tensor<?x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>
}
// The dy fold (mhc.torch.chain_pass): the lower sublayer's post_res_grad for its dy only, from
// this sublayer's dx, after the whole backward and after the second half.
func.func @hc_joint_backward_lower(%x: tensor<?x4x64xbf16>, %y: tensor<?x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>, %mix: tensor<?x24xf32> {mhc.saved = "mix"},
                                   %du: tensor<?x64xbf16>, %dxn: tensor<?x4x64xbf16>, %post_lower: tensor<?x4xf32>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x64xbf16>) {
  %pre, %post, %l = "mhc.split_mixes"(%mix, %scale, %base) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>) -> (tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %comb = "mhc.sinkhorn"(%l) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  %dy, %dxa, %dpost, %dcomb = "mhc.post_res_grad"(%y, %x, %post, %comb, %dxn) : (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>) -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %dxb, %dpre = "mhc.pre_apply_grad"(%x, %pre, %du) : (tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>) -> (tensor<?x4x64xbf16>, tensor<?x4xf32>)
  %dl = "mhc.sinkhorn_grad"(%l, %dcomb) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>, tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  %dmix, %dscale, %dbase = "mhc.split_mixes_grad"(%mix, %scale, %base, %dpre, %dpost, %dl) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>) -> (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>)
  %dxc, %dfn = "mhc.norm_project_grad"(%x, %fn, %dmix) <{eps = 1.000000000e-06 : f32}> : (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>)
  %dxab = arith.addf %dxa, %dxb : tensor<?x4x64xbf16>
  %dx = arith.addf %dxab, %dxc : tensor<?x4x64xbf16>
  %c0_lower = arith.constant 0 : index
  %T_lower = tensor.dim %x, %c0_lower : tensor<?x4x64xbf16>
  %comb_lower = tensor.empty(%T_lower) : tensor<?x4x4xf32>
  %dy_lower, %dxl_, %dpl_, %dcl_ = "mhc.post_res_grad"(%du, %x, %post_lower, %comb_lower, %dx) : (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>) -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  return %dx, %dfn, %dscale, %dbase, %dy_lower : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x64xbf16>
}
func.func @hc_pre_backward_lower(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>, %mix: tensor<?x24xf32> {mhc.saved = "mix"}, %du: tensor<?x64xbf16>,
                                 %dpost: tensor<?x4xf32>, %dcomb: tensor<?x4x4xf32>, %dxn: tensor<?x4x64xbf16>, %post_lower: tensor<?x4xf32>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x64xbf16>) {
  %pre, %post, %l = "mhc.split_mixes"(%mix, %scale, %base) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>) -> (tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %comb = "mhc.sinkhorn"(%l) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  %c0 = arith.constant 0 : index
  %T = tensor.dim %x, %c0 : tensor<?x4x64xbf16>
  %y = tensor.empty(%T) : tensor<?x64xbf16>
  %dy_, %dxa, %dpost_, %dcomb_ = "mhc.post_res_grad"(%y, %x, %post, %comb, %dxn) : (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>) -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  %dxb, %dpre = "mhc.pre_apply_grad"(%x, %pre, %du) : (tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>) -> (tensor<?x4x64xbf16>, tensor<?x4xf32>)
  %dl = "mhc.sinkhorn_grad"(%l, %dcomb) <{eps = 1.000000000e-06 : f32, iterations = 20 : i64}> : (tensor<?x4x4xf32>, tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
  %dmix, %dscale, %dbase = "mhc.split_mixes_grad"(%mix, %scale, %base, %dpre, %dpost, %dl) <{post_mult = 2.000000000e+00 : f32, pre_eps = 1.000000000e-06 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>) -> (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>)
  %dxc, %dfn = "mhc.norm_project_grad"(%x, %fn, %dmix) <{eps = 1.000000000e-06 : f32}> : (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>)
  %dxab = arith.addf %dxa, %dxb : tensor<?x4x64xbf16>
  %dx = arith.addf %dxab, %dxc : tensor<?x4x64xbf16>
  %c0_lower = arith.constant 0 : index
  %T_lower = tensor.dim %x, %c0_lower : tensor<?x4x64xbf16>
  %comb_lower = tensor.empty(%T_lower) : tensor<?x4x4xf32>
  %dy_lower, %dxl_, %dpl_, %dcl_ = "mhc.post_res_grad"(%du, %x, %post_lower, %comb_lower, %dx) : (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>) -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
  return %dx, %dfn, %dscale, %dbase, %dy_lower : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x64xbf16>
}
