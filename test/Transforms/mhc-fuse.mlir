// RUN: mhc-opt %s --mhc-fuse --split-input-file | FileCheck %s
// Idempotent: a second run leaves the groups as they are.
// RUN: mhc-opt %s --mhc-fuse --mhc-fuse --split-input-file | FileCheck %s

// Two sublayers: the first norm_project has no post group before it, so it
// joins the first "pre" group; the second is computed in the first "post"
// group while x_next is on chip.

// CHECK-LABEL: func.func @two_sublayers
// pre is consumed inside the group only, so it is not yielded.
// CHECK:      %[[PRE0:.*]]:3 = mhc.fused "pre" -> tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x64xbf16> {
// CHECK-NEXT:   mhc.norm_project
// CHECK-NEXT:   mhc.split_mixes
// CHECK-NEXT:   mhc.sinkhorn
// CHECK-NEXT:   mhc.pre_apply
// CHECK-NEXT:   mhc.yield
// CHECK-NEXT: }
// CHECK:      %[[POST0:.*]]:2 = mhc.fused "post" -> tensor<?x4x64xbf16>, tensor<?x24xf32> {
// CHECK-NEXT:   %[[XN:.*]] = mhc.post_res %arg5, %arg0, %[[PRE0]]#0, %[[PRE0]]#1
// CHECK-NEXT:   %[[MIX:.*]] = mhc.norm_project %[[XN]], %arg1
// CHECK-NEXT:   mhc.yield %[[XN]], %[[MIX]]
// CHECK-NEXT: }
// CHECK:      %[[PRE1:.*]]:3 = mhc.fused "pre" -> tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x64xbf16> {
// CHECK-NEXT:   mhc.split_mixes %[[POST0]]#1
// CHECK-NEXT:   mhc.sinkhorn
// CHECK-NEXT:   mhc.pre_apply %[[POST0]]#0
// CHECK-NEXT:   mhc.yield
// CHECK-NEXT: }
// CHECK:      %[[POST1:.*]] = mhc.fused "post" -> tensor<?x4x64xbf16> {
// CHECK-NEXT:   mhc.post_res %arg6, %[[POST0]]#0, %[[PRE1]]#0, %[[PRE1]]#1
// CHECK-NEXT:   mhc.yield
// CHECK-NEXT: }
// CHECK:      return %[[POST1]], %[[PRE0]]#2, %[[PRE1]]#2
func.func @two_sublayers(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>,
                         %scale: tensor<3xf32>, %base: tensor<24xf32>,
                         %fn2: tensor<24x256xf32>,
                         %y0: tensor<?x64xbf16>, %y1: tensor<?x64xbf16>)
    -> (tensor<?x4x64xbf16>, tensor<?x64xbf16>, tensor<?x64xbf16>) {
  %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %c = mhc.sinkhorn %l : tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %xn = mhc.post_res %y0, %x, %post, %c : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
  %mix1 = mhc.norm_project %xn, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre1, %post1, %l1 = mhc.split_mixes %mix1, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %c1 = mhc.sinkhorn %l1 : tensor<?x4x4xf32>
  %u1 = mhc.pre_apply %xn, %pre1 : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %xn1 = mhc.post_res %y1, %xn, %post1, %c1 : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
  return %xn1, %u, %u1 : tensor<?x4x64xbf16>, tensor<?x64xbf16>, tensor<?x64xbf16>
}

// -----

// Ops that fit no group stay standalone: expand, collapse, and a
// norm_project whose mix has no pre_apply consumer chain.
// CHECK-LABEL: func.func @standalone
// CHECK-NOT:   mhc.fused
// CHECK:       mhc.expand
// CHECK:       mhc.norm_project
// CHECK:       mhc.sinkhorn
// CHECK:       mhc.collapse
func.func @standalone(%h: tensor<8x32xf32>, %fn: tensor<8x64xf32>, %l: tensor<8x2x2xf32>)
    -> (tensor<8x32xf32>, tensor<8x8xf32>, tensor<8x2x2xf32>) {
  %x = mhc.expand %h, streams = 2 : tensor<8x32xf32> -> tensor<8x2x32xf32>
  %m = mhc.norm_project %x, %fn : tensor<8x2x32xf32>, tensor<8x64xf32> -> tensor<8x8xf32>
  %c = mhc.sinkhorn %l : tensor<8x2x2xf32>
  %h2 = mhc.collapse %x : tensor<8x2x32xf32> -> tensor<8x32xf32>
  return %h2, %m, %c : tensor<8x32xf32>, tensor<8x8xf32>, tensor<8x2x2xf32>
}

// -----

// The post group takes the norm_project of x_next, so the pre group that
// follows starts from the mix; unused logits need no sinkhorn.
// CHECK-LABEL: func.func @post_only
// CHECK:       mhc.fused "post" -> tensor<?x2x16xf16>, tensor<?x8xf32> {
// CHECK:       mhc.fused "pre" -> tensor<?x16xf16> {
// CHECK-NEXT:    mhc.split_mixes
// CHECK-NEXT:    mhc.pre_apply
// CHECK-NEXT:    mhc.yield
func.func @post_only(%x: tensor<?x2x16xf16>, %y: tensor<?x16xf16>, %post: tensor<?x2xf32>,
                     %comb: tensor<?x2x2xf32>, %fn: tensor<8x32xf32>, %s: tensor<3xf32>,
                     %b: tensor<8xf32>) -> tensor<?x16xf16> {
  %xn = mhc.post_res %y, %x, %post, %comb : tensor<?x16xf16>, tensor<?x2x16xf16>, tensor<?x2xf32>, tensor<?x2x2xf32> -> tensor<?x2x16xf16>
  %m = mhc.norm_project %xn, %fn : tensor<?x2x16xf16>, tensor<8x32xf32> -> tensor<?x8xf32>
  %p, %q, %l = mhc.split_mixes %m, %s, %b : tensor<?x8xf32>, tensor<3xf32>, tensor<8xf32> -> tensor<?x2xf32>, tensor<?x2xf32>, tensor<?x2x2xf32>
  %u = mhc.pre_apply %xn, %p : tensor<?x2x16xf16>, tensor<?x2xf32> -> tensor<?x16xf16>
  return %u : tensor<?x16xf16>
}

// -----

// An outside user of x_next between post_res and norm_project: moving
// post_res down to the norm_project would break dominance, so the post group
// holds post_res alone and the norm_project joins the pre group.
// CHECK-LABEL: func.func @user_in_between
// CHECK:       mhc.fused "post" -> tensor<?x2x16xf16> {
// CHECK-NEXT:    mhc.post_res
// CHECK-NEXT:    mhc.yield
// CHECK:       mhc.collapse
// CHECK:       mhc.fused "pre" -> tensor<?x16xf16> {
// CHECK-NEXT:    mhc.norm_project
// CHECK-NEXT:    mhc.split_mixes
// CHECK-NEXT:    mhc.pre_apply
func.func @user_in_between(%x: tensor<?x2x16xf16>, %y: tensor<?x16xf16>, %post: tensor<?x2xf32>,
                           %comb: tensor<?x2x2xf32>, %fn: tensor<8x32xf32>, %s: tensor<3xf32>,
                           %b: tensor<8xf32>) -> (tensor<?x16xf16>, tensor<?x16xf16>) {
  %xn = mhc.post_res %y, %x, %post, %comb : tensor<?x16xf16>, tensor<?x2x16xf16>, tensor<?x2xf32>, tensor<?x2x2xf32> -> tensor<?x2x16xf16>
  %h = mhc.collapse %xn : tensor<?x2x16xf16> -> tensor<?x16xf16>
  %m = mhc.norm_project %xn, %fn : tensor<?x2x16xf16>, tensor<8x32xf32> -> tensor<?x8xf32>
  %p, %q, %l = mhc.split_mixes %m, %s, %b : tensor<?x8xf32>, tensor<3xf32>, tensor<8xf32> -> tensor<?x2xf32>, tensor<?x2xf32>, tensor<?x2x2xf32>
  %u = mhc.pre_apply %xn, %p : tensor<?x2x16xf16>, tensor<?x2xf32> -> tensor<?x16xf16>
  return %u, %h : tensor<?x16xf16>, tensor<?x16xf16>
}

// -----

// The backward of one sublayer (the shapes --mhc-generate-backward and
// mhc.torch write, test/Transforms/Inputs/backward-sublayer.mlir):
// RUN: mhc-opt %S/Inputs/backward-sublayer.mlir --mhc-fuse | FileCheck %s --check-prefix=BWD
// RUN: mhc-opt %S/Inputs/backward-sublayer.mlir --mhc-fuse --mhc-fuse | FileCheck %s --check-prefix=BWD
// a post_res_grad whose dx is not needed is the first half alone,
// BWD-LABEL: func.func @hc_post_backward
// BWD:         mhc.fused "post_backward" -> tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> {
// BWD-NEXT:      mhc.post_res_grad
// BWD-NEXT:      mhc.yield %dy, %dpost, %dcomb
// the second half takes dpost and dcomb from outside and sums the three dx,
// BWD-LABEL: func.func @hc_pre_backward
// BWD:         mhc.fused "pre_backward" -> tensor<3xf32>, tensor<24xf32>, tensor<24x256xf32>, tensor<?x4x64xbf16> {
// BWD-NEXT:      mhc.split_mixes
// BWD-NEXT:      mhc.sinkhorn
// BWD-NEXT:      mhc.post_res_grad
// BWD-NEXT:      mhc.pre_apply_grad
// BWD-NEXT:      mhc.sinkhorn_grad
// BWD-NEXT:      mhc.split_mixes_grad
// BWD-NEXT:      mhc.norm_project_grad
// BWD-NEXT:      arith.addf
// BWD-NEXT:      arith.addf
// BWD-NEXT:      mhc.yield
// and the standalone sublayer is one group.
// BWD-LABEL: func.func @hc_sublayer_backward
// BWD:         mhc.fused "backward" -> tensor<?x64xbf16>, tensor<3xf32>, tensor<24xf32>, tensor<24x256xf32>, tensor<?x4x64xbf16> {
// BWD-COUNT-9:   {{mhc\.|arith\.addf}}
// BWD-NEXT:      mhc.yield %dy, %dscale, %dbase, %dfn
// The dy fold: the lower sublayer's post_res_grad, of which only dy is used,
// joins the group that makes its dout (the whole sublayer or the second half),
// BWD-LABEL: func.func @hc_joint_backward_lower
// BWD:         mhc.fused "backward" -> tensor<3xf32>, tensor<24xf32>, tensor<24x256xf32>, tensor<?x4x64xbf16>, tensor<?x64xbf16> {
// BWD-COUNT-9:   {{mhc\.|arith\.addf}}
// BWD-NEXT:      %[[DY:.*]], %{{.*}}, %{{.*}}, %{{.*}} = mhc.post_res_grad %arg6, %arg0, %arg8, %{{.*}}, %[[DX:[0-9]+]]
// BWD-NEXT:      mhc.yield %dscale, %dbase, %dfn, %[[DX]], %[[DY]]
// BWD-LABEL: func.func @hc_pre_backward_lower
// BWD:         mhc.fused "pre_backward" -> tensor<3xf32>, tensor<24xf32>, tensor<24x256xf32>, tensor<?x4x64xbf16>, tensor<?x64xbf16> {
// BWD-COUNT-9:   {{mhc\.|arith\.addf}}
// BWD-NEXT:      %[[DY:.*]], %{{.*}}, %{{.*}}, %{{.*}} = mhc.post_res_grad %arg5, %arg0, %arg9, %{{.*}}, %[[DX:[0-9]+]]
// BWD-NEXT:      mhc.yield %dscale, %dbase, %dfn, %[[DX]], %[[DY]]

// A whole-model backward (--mhc-generate-backward of two chained sublayers):
// every result of the lower sublayer's post_res_grad is used, so the dy fold
// first splits its dy off into a post_res_grad of its own (post from a
// split_mixes clone, comb empty: dy does not read it), which the upper
// sublayer's pre_backward group takes; the lower sublayer is then one
// "backward" group after its VJP. fold-dy=false leaves both sublayers split.
// RUN: mhc-opt %S/Inputs/two-sublayers.mlir --mhc-generate-backward --mhc-fuse | FileCheck %s --check-prefix=WHOLE
// RUN: mhc-opt %S/Inputs/two-sublayers.mlir --mhc-generate-backward --mhc-fuse --mhc-fuse | FileCheck %s --check-prefix=WHOLE
// RUN: mhc-opt %S/Inputs/two-sublayers.mlir --mhc-generate-backward --mhc-fuse="fold-dy=false" | FileCheck %s --check-prefix=NOFOLD
// WHOLE-LABEL: func.func @two_sublayers_backward(
// WHOLE:         %[[UPPER:.*]]:3 = mhc.fused "post_backward"
// WHOLE:         call @ffn_vjp(%{{.*}}, %[[UPPER]]#0)
// WHOLE:         %{{.*}}, %[[POST0:.*]], %{{.*}} = mhc.split_mixes %arg7, %arg2, %arg3
// WHOLE:         %[[COMB:.*]] = tensor.empty(
// WHOLE-NEXT:    %[[UP:.*]]:5 = mhc.fused "pre_backward"
// WHOLE:           arith.addf
// WHOLE-NEXT:      %[[DX1:.*]] = arith.addf
// WHOLE-NEXT:      %[[DY0:.*]], %{{.*}}, %{{.*}}, %{{.*}} = mhc.post_res_grad %arg9, %arg0, %[[POST0]], %[[COMB]], %[[DX1]]
// WHOLE-NEXT:      mhc.yield {{.*}}, %[[DX1]], %[[DY0]] :
// WHOLE:         %[[DU0:.*]] = call @attn_vjp(%{{.*}}, %[[UP]]#4)
// WHOLE-NEXT:    mhc.fused "backward"
// WHOLE-NEXT:      mhc.split_mixes %arg7
// WHOLE-NEXT:      mhc.sinkhorn
// WHOLE-NEXT:      mhc.post_res_grad %arg9, %arg0, %{{.*}}, %{{.*}}, %[[UP]]#3
// WHOLE-NEXT:      mhc.pre_apply_grad %arg0, %{{.*}}, %[[DU0]]
// WHOLE-NOT:     mhc.post_res_grad
// WHOLE:         return
// NOFOLD-LABEL: func.func @two_sublayers_backward(
// NOFOLD:        mhc.fused "post_backward"
// NOFOLD:        mhc.fused "pre_backward"
// NOFOLD:        mhc.fused "post_backward"
// NOFOLD:        mhc.fused "pre_backward"
// NOFOLD-NOT:    tensor.empty
// NOFOLD-NOT:    mhc.fused "backward"

// A sublayer chained through an opaque sublayer's VJP (--mhc-generate-backward
// of a function with a call): the first half before the call, the second
// after it with its own split_mixes, sinkhorn and post_res_grad (for dx).
// CHECK-LABEL: func.func @chained_backward
// CHECK:      %[[POST:.*]]:3 = mhc.fused "post_backward" -> tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> {
// CHECK-NEXT:   mhc.split_mixes
// CHECK-NEXT:   mhc.sinkhorn
// CHECK-NEXT:   mhc.post_res_grad
// CHECK-NEXT:   mhc.yield
// CHECK:      %[[DU:.*]] = call @attn_vjp(%arg5, %[[POST]]#0)
// CHECK:      mhc.fused "pre_backward"
// CHECK-NEXT:   %[[PRE:.*]], %[[Q:.*]], %[[L:.*]] = mhc.split_mixes %arg4
// CHECK-NEXT:   %[[C:.*]] = mhc.sinkhorn %[[L]]
// CHECK-NEXT:   mhc.post_res_grad %arg6, %arg0, %[[Q]], %[[C]], %arg7
// CHECK-NEXT:   mhc.pre_apply_grad %arg0, %[[PRE]], %[[DU]]
// CHECK-NEXT:   mhc.sinkhorn_grad %[[L]], %[[POST]]#2
// CHECK-NEXT:   mhc.split_mixes_grad %arg4, %arg2, %arg3, %{{.*}}, %[[POST]]#1
func.func private @attn_vjp(tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func @chained_backward(%arg0: tensor<?x4x64xbf16>, %arg1: tensor<24x256xf32>, %arg2: tensor<3xf32>, %arg3: tensor<24xf32>,
                            %arg4: tensor<?x24xf32> {mhc.saved = "sublayer 0: mix"}, %arg5: tensor<?x64xbf16>,
                            %arg6: tensor<?x64xbf16>, %arg7: tensor<?x4x64xbf16>)
    -> (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>) {
  %pre, %post, %logits = mhc.split_mixes %arg4, %arg2, %arg3 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %0 = mhc.sinkhorn %logits : tensor<?x4x4xf32>
  %dy, %dx, %dpost, %dcomb = mhc.post_res_grad %arg6, %arg0, %post, %0, %arg7 : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>
  %1 = call @attn_vjp(%arg5, %dy) : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %dx_0, %dpre = mhc.pre_apply_grad %arg0, %pre, %1 : tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>
  %2 = mhc.sinkhorn_grad %logits, %dcomb : tensor<?x4x4xf32>
  %dmix, %dscale, %dbase = mhc.split_mixes_grad %arg4, %arg2, %arg3, %dpre, %dpost, %2 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %dx_1, %dfn = mhc.norm_project_grad %arg0, %arg1, %dmix : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>
  %3 = arith.addf %dx, %dx_0 : tensor<?x4x64xbf16>
  %4 = arith.addf %3, %dx_1 : tensor<?x4x64xbf16>
  return %4, %dfn, %dscale, %dbase : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>
}

// -----

// The kernels read norm_project's m as mix / r: a mix that is neither
// norm_project(x, fn) nor a value the forward saved is not fused.
// CHECK-LABEL: func.func @unknown_mix
// CHECK-NOT:   mhc.fused
func.func @unknown_mix(%x: tensor<?x4x64xbf16>, %y: tensor<?x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>,
                       %base: tensor<24xf32>, %mix: tensor<?x24xf32>, %du: tensor<?x64xbf16>, %dxn: tensor<?x4x64xbf16>)
    -> (tensor<?x4x64xbf16>, tensor<?x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>) {
  %pre, %post, %logits = mhc.split_mixes %mix, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %0 = mhc.sinkhorn %logits : tensor<?x4x4xf32>
  %dy, %dx, %dpost, %dcomb = mhc.post_res_grad %y, %x, %post, %0, %dxn : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>
  %dx_0, %dpre = mhc.pre_apply_grad %x, %pre, %du : tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>
  %1 = mhc.sinkhorn_grad %logits, %dcomb : tensor<?x4x4xf32>
  %dmix, %dscale, %dbase = mhc.split_mixes_grad %mix, %scale, %base, %dpre, %dpost, %1 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %dx_1, %dfn = mhc.norm_project_grad %x, %fn, %dmix : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>
  %2 = arith.addf %dx, %dx_0 : tensor<?x4x64xbf16>
  %3 = arith.addf %2, %dx_1 : tensor<?x4x64xbf16>
  return %3, %dy, %dfn, %dscale, %dbase : tensor<?x4x64xbf16>, tensor<?x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>
}

// -----

// The dy fold takes a post_res_grad only when dy is all that is used of it:
// here its dpost is returned too, so it stays outside the sublayer's group
// (a post_backward group of its own: its dx is unused).
// CHECK-LABEL: func.func @lower_dpost_used
// CHECK:       mhc.fused "backward"
// CHECK-COUNT-9: {{mhc\.|arith\.addf}}
// CHECK-NEXT:  mhc.yield
// CHECK:       mhc.fused "post_backward"
// CHECK-NEXT:    mhc.post_res_grad
func.func @lower_dpost_used(%x: tensor<?x4x64xbf16>, %y: tensor<?x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>, %mix: tensor<?x24xf32> {mhc.saved = "mix"},
                                   %du: tensor<?x64xbf16>, %dxn: tensor<?x4x64xbf16>, %post_lower: tensor<?x4xf32>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x64xbf16>, tensor<?x4xf32>) {
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
  return %dx, %dfn, %dscale, %dbase, %dy_lower, %dpl_ : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x64xbf16>, tensor<?x4xf32>
}

// -----

// The sublayer's pre-norm joins the pre group (docs/PreNorm.md): u stays on
// chip when nothing else reads it, and leaves the group when something does.
// CHECK-LABEL: func @prenorm
// CHECK:       %[[G:.*]]:2 = mhc.fused "pre" -> tensor<?x4xf32>, tensor<?x64xbf16> {
// CHECK:         %[[U:.*]] = mhc.pre_apply
// CHECK-NEXT:    %[[O:.*]] = mhc.rms_norm %[[U]], %arg4
// CHECK-NEXT:    mhc.yield %{{.*}}, %[[O]] : tensor<?x4xf32>, tensor<?x64xbf16>
// CHECK:       mhc.fused "pre" -> tensor<?x4xf32>, tensor<?x64xbf16>, tensor<?x64xbf16> {
// CHECK:         mhc.yield %{{.*}}, %{{.*}}, %{{.*}} : tensor<?x4xf32>, tensor<?x64xbf16>, tensor<?x64xbf16>
func.func @prenorm(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>,
                   %base: tensor<24xf32>, %w: tensor<64xbf16>)
    -> (tensor<?x4xf32>, tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>, tensor<?x64xbf16>) {
  %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base
      : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %o = mhc.rms_norm %u, %w : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %mix2 = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre2, %post2, %l2 = mhc.split_mixes %mix2, %scale, %base
      : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %u2 = mhc.pre_apply %x, %pre2 : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %o2 = mhc.rms_norm %u2, %w : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  return %post, %o, %post2, %u2, %o2 : tensor<?x4xf32>, tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>, tensor<?x64xbf16>
}

// -----

// A sublayer backward whose du comes through the pre-norm (the shape
// --mhc-generate-backward writes: u made again from x and the recomputed
// pre): pre_apply and rms_norm_grad join the pre_backward group, pre_apply
// reading the group's own split_mixes clone.
// CHECK-LABEL: func.func @prenorm_backward
// CHECK:       mhc.fused "post_backward"
// CHECK:       call @attn_vjp
// CHECK:       mhc.fused "pre_backward" -> tensor<64xbf16>, tensor<3xf32>, tensor<24xf32>, tensor<24x256xf32>, tensor<?x4x64xbf16> {
// CHECK-NEXT:    %[[PRE:[a-z0-9]+]], %{{.*}}, %{{.*}} = mhc.split_mixes
// CHECK:         %[[U:.*]] = mhc.pre_apply %arg0, %[[PRE]]
// CHECK-NEXT:    %[[DU:.*]], %[[DW:.*]] = mhc.rms_norm_grad %[[U]], %arg4
// CHECK-NEXT:    mhc.pre_apply_grad %arg0, %[[PRE]], %[[DU]]
// CHECK:         mhc.yield %[[DW]],
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
