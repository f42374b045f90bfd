// RUN: mhc-opt %s --mhc-fuse --split-input-file | FileCheck %s

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
