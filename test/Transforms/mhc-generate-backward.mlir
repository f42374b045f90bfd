// RUN: mhc-opt %s --mhc-generate-backward --split-input-file | FileCheck %s
// RUN: mhc-opt %s --mhc-generate-backward="save=all" --split-input-file | FileCheck %s --check-prefix=ALL
// RUN: mhc-opt %s --mhc-generate-backward="save=inputs" --split-input-file | FileCheck %s --check-prefix=INPUTS
// Which functions: every one with an mhc op by default, or those named.
// RUN: mhc-opt %S/Inputs/generate-backward-functions.mlir --mhc-generate-backward | FileCheck %s --check-prefix=DEFAULT
// RUN: mhc-opt %S/Inputs/generate-backward-functions.mlir --mhc-generate-backward="functions=other" | FileCheck %s --check-prefix=ONLY
// DEFAULT-DAG: func.func @first_forward
// DEFAULT-DAG: func.func @other_forward
// DEFAULT-NOT: @plain_forward
// ONLY-NOT:    @first_forward
// ONLY:        func.func @other_forward
// ONLY-NOT:    @first_forward
// Running the pass again (by default or naming the function) leaves the module
// unchanged: functions with a generated @f_forward / @f_backward are skipped.
// RUN: mhc-opt %s --mhc-generate-backward --split-input-file -o %t.once
// RUN: mhc-opt %t.once --mhc-generate-backward --split-input-file -o %t.twice
// RUN: diff %t.once %t.twice
// RUN: mhc-opt %S/Inputs/generate-backward-functions.mlir --mhc-generate-backward="functions=other" -o %t.named
// RUN: mhc-opt %t.named --mhc-generate-backward="functions=other" | diff %t.named -
// The generated functions verify and lower:
// RUN: mhc-opt %s --mhc-generate-backward --split-input-file --convert-mhc-to-linalg | FileCheck %s --check-prefix=LOWERED

// The standalone sublayer (what the benchmarks time): inputs x, y, fn, scale,
// base; outputs u and x_next. The original stays; the forward saves the mix
// (save=mixes, the default); the backward recomputes split_mixes and sinkhorn
// and has the regular per-sublayer shape, dx summed last.
// CHECK-LABEL: func.func @sublayer(
// CHECK:         mhc.post_res
// CHECK-NEXT:    return %{{.*}}, %{{.*}} : tensor<?x64xbf16>, tensor<?x4x64xbf16>
// CHECK-LABEL: func.func @sublayer_forward(
// CHECK-SAME:      -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x24xf32> {mhc.saved = "sublayer 0: mix"})
// CHECK-SAME:      attributes {mhc.forward_of = "sublayer"}
// CHECK:         %[[MIX:.*]] = mhc.norm_project
// CHECK:         return %{{.*}}, %{{.*}}, %[[MIX]] :
// CHECK-LABEL: func.func @sublayer_backward(
// CHECK-SAME:      %[[X:[^:]*]]: tensor<?x4x64xbf16>, %[[Y:[^:]*]]: tensor<?x64xbf16>, %[[FN:[^:]*]]: tensor<24x256xf32>, %[[S:[^:]*]]: tensor<3xf32>, %[[B:[^:]*]]: tensor<24xf32>,
// CHECK-SAME:      %[[SMIX:[^:]*]]: tensor<?x24xf32> {mhc.saved = "sublayer 0: mix"},
// CHECK-SAME:      %[[DU:[^:]*]]: tensor<?x64xbf16> {mhc.cotangent_of = 0 : i64}, %[[DXN:[^:]*]]: tensor<?x4x64xbf16> {mhc.cotangent_of = 1 : i64})
// CHECK-SAME:      -> (tensor<?x4x64xbf16> {mhc.gradient_of = 0 : i64}, tensor<?x64xbf16> {mhc.gradient_of = 1 : i64}, tensor<24x256xf32> {mhc.gradient_of = 2 : i64}, tensor<3xf32> {mhc.gradient_of = 3 : i64}, tensor<24xf32> {mhc.gradient_of = 4 : i64})
// CHECK-SAME:      attributes {mhc.backward_of = "sublayer"}
// CHECK-NEXT:    %[[PRE:.*]], %[[POST:.*]], %[[L:.*]] = mhc.split_mixes %[[SMIX]], %[[S]], %[[B]] :
// CHECK-NEXT:    %[[COMB:.*]] = mhc.sinkhorn %[[L]] : tensor<?x4x4xf32>
// CHECK-NEXT:    %[[DY:.*]], %[[DX0:.*]], %[[DPOST:.*]], %[[DCOMB:.*]] = mhc.post_res_grad %[[Y]], %[[X]], %[[POST]], %[[COMB]], %[[DXN]] :
// CHECK-NEXT:    %[[DX1:.*]], %[[DPRE:.*]] = mhc.pre_apply_grad %[[X]], %[[PRE]], %[[DU]] :
// CHECK-NEXT:    %[[DL:.*]] = mhc.sinkhorn_grad %[[L]], %[[DCOMB]] : tensor<?x4x4xf32>
// CHECK-NEXT:    %[[DMIX:.*]], %[[DS:.*]], %[[DB:.*]] = mhc.split_mixes_grad %[[SMIX]], %[[S]], %[[B]], %[[DPRE]], %[[DPOST]], %[[DL]] :
// CHECK-NEXT:    %[[DX2:.*]], %[[DFN:.*]] = mhc.norm_project_grad %[[X]], %[[FN]], %[[DMIX]] :
// CHECK-NEXT:    %[[SUM:.*]] = arith.addf %[[DX0]], %[[DX1]] : tensor<?x4x64xbf16>
// CHECK-NEXT:    %[[DX:.*]] = arith.addf %[[SUM]], %[[DX2]] : tensor<?x4x64xbf16>
// CHECK-NEXT:    return %[[DX]], %[[DY]], %[[DFN]], %[[DS]], %[[DB]] :
//
// save=all: pre, post, logits and comb are saved too; nothing is recomputed.
// ALL-LABEL: func.func @sublayer_forward(
// ALL-SAME:      tensor<?x24xf32> {mhc.saved = "sublayer 0: mix"}, tensor<?x4xf32> {mhc.saved = "sublayer 0: pre"}, tensor<?x4xf32> {mhc.saved = "sublayer 0: post"}, tensor<?x4x4xf32> {mhc.saved = "sublayer 0: logits"}, tensor<?x4x4xf32> {mhc.saved = "sublayer 0: comb"})
// ALL-LABEL: func.func @sublayer_backward(
// ALL-NOT:       mhc.split_mixes {{.*}}->
// ALL-NOT:       mhc.sinkhorn {{.*}}: tensor
// ALL:           mhc.post_res_grad
//
// save=inputs: nothing is saved; norm_project is recomputed too.
// INPUTS-LABEL: func.func @sublayer_forward(
// INPUTS-SAME:      -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>) attributes
// INPUTS-LABEL: func.func @sublayer_backward(
// INPUTS-NEXT:    %[[MIX:.*]] = mhc.norm_project %arg0, %arg2
// INPUTS-NEXT:    mhc.split_mixes %[[MIX]]
// INPUTS-NEXT:    mhc.sinkhorn
// INPUTS-NEXT:    mhc.post_res_grad
//
// LOWERED-LABEL: func.func @sublayer_backward(
// LOWERED-NOT:   = mhc.
// LOWERED:       return
func.func @sublayer(%x: tensor<?x4x64xbf16>, %y: tensor<?x64xbf16>, %fn: tensor<24x256xf32>,
                    %scale: tensor<3xf32>, %base: tensor<24xf32>) -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>) {
  %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre, %post, %logits = mhc.split_mixes %mix, %scale, %base
      : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %comb = mhc.sinkhorn %logits : tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %xn = mhc.post_res %y, %x, %post, %comb
      : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
  return %u, %xn : tensor<?x64xbf16>, tensor<?x4x64xbf16>
}

// -----

// Two sublayers chained through opaque calls: @attn's VJP is found by name,
// @ffn's through its mhc.vjp attribute. The forward saves per sublayer the mix,
// F's input u and output y, and the stream x1 that enters sublayer 1. The
// backward walks the sublayers last to first, each in the regular shape, the
// VJP call between post_res_grad and pre_apply_grad; x1's cotangent (sum of
// sublayer 1's three) is sublayer 0's dout.
// CHECK-LABEL: func.func @two_sublayers_forward(
// CHECK-SAME:      -> (tensor<?x4x64xbf16>, tensor<?x24xf32> {mhc.saved = "sublayer 0: mix"}, tensor<?x64xbf16> {mhc.saved = "sublayer 0: u"}, tensor<?x64xbf16> {mhc.saved = "call 0 (@attn): result 0"}, tensor<?x4x64xbf16> {mhc.saved = "sublayer 0: x_next"}, tensor<?x24xf32> {mhc.saved = "sublayer 1: mix"}, tensor<?x64xbf16> {mhc.saved = "sublayer 1: u"}, tensor<?x64xbf16> {mhc.saved = "call 1 (@ffn): result 0"})
// CHECK-LABEL: func.func @two_sublayers_backward(
// CHECK-SAME:      %[[X0:[^:]*]]: tensor<?x4x64xbf16>, %[[FN0:[^:]*]]: tensor<24x256xf32>, %[[S0:[^:]*]]: tensor<3xf32>, %[[B0:[^:]*]]: tensor<24xf32>, %[[FN1:[^:]*]]: tensor<24x256xf32>, %[[S1:[^:]*]]: tensor<3xf32>, %[[B1:[^:]*]]: tensor<24xf32>,
// CHECK-SAME:      %[[MIX0:[^:]*]]: tensor<?x24xf32> {mhc.saved = {{"[^"]*"}}}, %[[U0:[^:]*]]: tensor<?x64xbf16> {mhc.saved = {{"[^"]*"}}}, %[[Y0:[^:]*]]: tensor<?x64xbf16> {mhc.saved = {{"[^"]*"}}},
// CHECK-SAME:      %[[X1:[^:]*]]: tensor<?x4x64xbf16> {mhc.saved = {{"[^"]*"}}}, %[[MIX1:[^:]*]]: tensor<?x24xf32> {mhc.saved = {{"[^"]*"}}}, %[[U1:[^:]*]]: tensor<?x64xbf16> {mhc.saved = {{"[^"]*"}}}, %[[Y1:[^:]*]]: tensor<?x64xbf16> {mhc.saved = {{"[^"]*"}}},
// CHECK-SAME:      %[[DX2:[^:]*]]: tensor<?x4x64xbf16> {mhc.cotangent_of = 0 : i64})
// CHECK-NEXT:    %[[PRE1:.*]], %[[POST1:.*]], %[[L1:.*]] = mhc.split_mixes %[[MIX1]], %[[S1]], %[[B1]]
// CHECK-NEXT:    %[[C1:.*]] = mhc.sinkhorn %[[L1]]
// CHECK-NEXT:    %[[DY1:.*]], %[[DXA:.*]], %[[DPOST1:.*]], %[[DC1:.*]] = mhc.post_res_grad %[[Y1]], %[[X1]], %[[POST1]], %[[C1]], %[[DX2]]
// CHECK-NEXT:    %[[DU1:.*]] = call @ffn_backward(%[[U1]], %[[DY1]]) : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
// CHECK-NEXT:    %[[DXB:.*]], %[[DPRE1:.*]] = mhc.pre_apply_grad %[[X1]], %[[PRE1]], %[[DU1]]
// CHECK-NEXT:    %[[DL1:.*]] = mhc.sinkhorn_grad %[[L1]], %[[DC1]]
// CHECK-NEXT:    %[[DMIX1:.*]], %[[DS1:.*]], %[[DB1:.*]] = mhc.split_mixes_grad %[[MIX1]], %[[S1]], %[[B1]], %[[DPRE1]], %[[DPOST1]], %[[DL1]]
// CHECK-NEXT:    %[[DXC:.*]], %[[DFN1:.*]] = mhc.norm_project_grad %[[X1]], %[[FN1]], %[[DMIX1]]
// CHECK-NEXT:    %[[SUM1:.*]] = arith.addf %[[DXA]], %[[DXB]]
// CHECK-NEXT:    %[[DX1:.*]] = arith.addf %[[SUM1]], %[[DXC]]
// CHECK-NEXT:    %[[PRE0:.*]], %[[POST0:.*]], %[[L0:.*]] = mhc.split_mixes %[[MIX0]], %[[S0]], %[[B0]]
// CHECK-NEXT:    %[[C0:.*]] = mhc.sinkhorn %[[L0]]
// CHECK-NEXT:    %[[DY0:.*]], %[[DXD:.*]], %[[DPOST0:.*]], %[[DC0:.*]] = mhc.post_res_grad %[[Y0]], %[[X0]], %[[POST0]], %[[C0]], %[[DX1]]
// CHECK-NEXT:    %[[DU0:.*]] = call @attn_vjp(%[[U0]], %[[DY0]])
// CHECK-NEXT:    %[[DXE:.*]], %[[DPRE0:.*]] = mhc.pre_apply_grad %[[X0]], %[[PRE0]], %[[DU0]]
// CHECK-NEXT:    %[[DL0:.*]] = mhc.sinkhorn_grad %[[L0]], %[[DC0]]
// CHECK-NEXT:    %[[DMIX0:.*]], %[[DS0:.*]], %[[DB0:.*]] = mhc.split_mixes_grad %[[MIX0]], %[[S0]], %[[B0]], %[[DPRE0]], %[[DPOST0]], %[[DL0]]
// CHECK-NEXT:    %[[DXF:.*]], %[[DFN0:.*]] = mhc.norm_project_grad %[[X0]], %[[FN0]], %[[DMIX0]]
// CHECK-NEXT:    %[[SUM0:.*]] = arith.addf %[[DXD]], %[[DXE]]
// CHECK-NEXT:    %[[DX0:.*]] = arith.addf %[[SUM0]], %[[DXF]]
// CHECK-NEXT:    return %[[DX0]], %[[DFN0]], %[[DS0]], %[[DB0]], %[[DFN1]], %[[DS1]], %[[DB1]] :
//
// save=inputs: only the calls' results are saved; the backward recomputes
// the mhc ops, x1 included.
// INPUTS-LABEL: func.func @two_sublayers_forward(
// INPUTS-SAME:      -> (tensor<?x4x64xbf16>, tensor<?x64xbf16> {mhc.saved = "call 0 (@attn): result 0"}, tensor<?x64xbf16> {mhc.saved = "call 1 (@ffn): result 0"})
// INPUTS-LABEL: func.func @two_sublayers_backward(
// INPUTS:         %[[X1:.*]] = mhc.post_res
// INPUTS:         mhc.pre_apply %[[X1]]
// INPUTS-NEXT:    call @ffn_backward
func.func private @attn(tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func private @attn_vjp(tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func private @ffn(tensor<?x64xbf16>) -> tensor<?x64xbf16> attributes {mhc.vjp = @ffn_backward}
func.func private @ffn_backward(tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
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

// -----

// Stream entry and exit: the gradient of expand is collapse, that of collapse
// is expand (recomputing expand instead of saving it). fn, scale and base feed
// two sublayers: their gradients are summed. A constant gets no gradient, an
// unused input gets zeros, and unused coefficients get zero cotangents.
// CHECK-LABEL: func.func @entry_exit_backward(
// CHECK-SAME:      %[[H:[^:]*]]: tensor<8x13xf32>, %[[FN:[^:]*]]: tensor<8x26xf32>, %[[B:[^:]*]]: tensor<8xf32>, %{{[^:]*}}: tensor<5xf32>,
// CHECK-SAME:      %[[DOUT:[^:]*]]: tensor<8x13xf32> {mhc.cotangent_of = 0 : i64})
// CHECK-NEXT:    %[[DXN:.*]] = mhc.expand %[[DOUT]], streams = 2 : tensor<8x13xf32> -> tensor<8x2x13xf32>
// CHECK-NEXT:    %[[X:.*]] = mhc.expand %[[H]], streams = 2
// CHECK-NEXT:    %[[SCALE:.*]] = arith.constant dense<[5.000000e-01, 1.000000e+00, 2.000000e+00]> : tensor<3xf32>
// CHECK:         %[[ZPRE:.*]] = arith.constant dense<0.000000e+00> : tensor<8x2xf32>
// CHECK-NEXT:    %{{.*}}, %{{.*}}, %[[DB1:.*]] = mhc.split_mixes_grad %{{.*}}, %[[SCALE]], %[[B]], %[[ZPRE]],
// CHECK:         %[[DXA:.*]], %[[DFN1:.*]] = mhc.norm_project_grad %[[X]], %[[FN]]
// CHECK:         %{{.*}}, %{{.*}}, %[[DB0:.*]] = mhc.split_mixes_grad
// CHECK-NEXT:    %[[DBASE:.*]] = arith.addf %[[DB1]], %[[DB0]] : tensor<8xf32>
// CHECK-NEXT:    %[[DXB:.*]], %[[DFN0:.*]] = mhc.norm_project_grad %[[X]], %[[FN]]
// CHECK-NEXT:    arith.addf
// CHECK-NEXT:    arith.addf
// CHECK-NEXT:    %[[DX:.*]] = arith.addf %{{.*}}, %[[DXB]] : tensor<8x2x13xf32>
// CHECK-NEXT:    %[[DFN:.*]] = arith.addf %[[DFN1]], %[[DFN0]] : tensor<8x26xf32>
// CHECK-NEXT:    %[[DH:.*]] = mhc.collapse %[[DX]] : tensor<8x2x13xf32> -> tensor<8x13xf32>
// CHECK-NEXT:    %[[ZERO:.*]] = arith.constant dense<0.000000e+00> : tensor<5xf32>
// CHECK-NEXT:    return %[[DH]], %[[DFN]], %[[DBASE]], %[[ZERO]] :
func.func @entry_exit(%h: tensor<8x13xf32>, %fn: tensor<8x26xf32>, %base: tensor<8xf32>, %unused: tensor<5xf32>) -> tensor<8x13xf32> {
  %scale = arith.constant dense<[0.5, 1.0, 2.0]> : tensor<3xf32>
  %x = mhc.expand %h, streams = 2 : tensor<8x13xf32> -> tensor<8x2x13xf32>
  %mix = mhc.norm_project %x, %fn : tensor<8x2x13xf32>, tensor<8x26xf32> -> tensor<8x8xf32>
  %pre, %post, %logits = mhc.split_mixes %mix, %scale, %base : tensor<8x8xf32>, tensor<3xf32>, tensor<8xf32> -> tensor<8x2xf32>, tensor<8x2xf32>, tensor<8x2x2xf32>
  %u = mhc.pre_apply %x, %pre : tensor<8x2x13xf32>, tensor<8x2xf32> -> tensor<8x13xf32>
  %mix2 = mhc.norm_project %x, %fn : tensor<8x2x13xf32>, tensor<8x26xf32> -> tensor<8x8xf32>
  %p2, %q2, %l2 = mhc.split_mixes %mix2, %scale, %base : tensor<8x8xf32>, tensor<3xf32>, tensor<8xf32> -> tensor<8x2xf32>, tensor<8x2xf32>, tensor<8x2x2xf32>
  %c2 = mhc.sinkhorn %l2 : tensor<8x2x2xf32>
  %xn = mhc.post_res %u, %x, %q2, %c2 : tensor<8x13xf32>, tensor<8x2x13xf32>, tensor<8x2xf32>, tensor<8x2x2xf32> -> tensor<8x2x13xf32>
  %out = mhc.collapse %xn : tensor<8x2x13xf32> -> tensor<8x13xf32>
  return %out : tensor<8x13xf32>
}

// -----

// The sublayer's pre-norm (mhc.rms_norm, an extension op): the sublayer's VJP
// gets the normed input, rms_norm_grad turns its cotangent into du for
// pre_apply_grad, and the weight gets its gradient. u, read only by the
// norm, is recomputed from x and the recomputed pre (the kernels that read x
// anyway make it); the normed input, which the VJP reads, is saved.
// save=all saves u too.
// CHECK-LABEL: func.func @prenorm_backward
// CHECK-SAME: %[[O:[a-z0-9]+]]: tensor<?x64xbf16> {mhc.saved = "rms_norm 0: result"}
// CHECK-SAME: -> ({{.*}}, tensor<64xbf16> {mhc.gradient_of = 4 : i64})
// CHECK:       %[[PRE:[a-z0-9]+]], %{{.*}}, %{{.*}} = mhc.split_mixes
// CHECK:       %[[DO:.*]] = call @attn_vjp(%[[O]], %{{.*}})
// CHECK:       %[[U:.*]] = mhc.pre_apply %arg0, %[[PRE]]
// CHECK:       %[[DU:.*]], %[[DW:.*]] = mhc.rms_norm_grad %[[U]], %arg4, %[[DO]] {eps = 7.812500e-03 : f32}
// CHECK:       mhc.pre_apply_grad %arg0, %[[PRE]], %[[DU]]
// CHECK:       return {{.*}}, %[[DW]] :
// ALL-LABEL:   func.func @prenorm_backward
// ALL-SAME:    {mhc.saved = "sublayer 0: u"}
// INPUTS-LABEL: func.func @prenorm_backward
// INPUTS:       %[[U:.*]] = mhc.pre_apply
// INPUTS:       mhc.rms_norm %[[U]], %arg4 {eps = 7.812500e-03 : f32}
// INPUTS:       mhc.rms_norm_grad %[[U]], %arg4
func.func private @attn(tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func private @attn_vjp(tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func @prenorm(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>,
                   %base: tensor<24xf32>, %w: tensor<64xbf16>) -> tensor<?x4x64xbf16> {
  %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base
      : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %comb = mhc.sinkhorn %l : tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %o = mhc.rms_norm %u, %w {eps = 0.0078125 : f32} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %y = func.call @attn(%o) : (tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %xn = mhc.post_res %y, %x, %post, %comb
      : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
  return %xn : tensor<?x4x64xbf16>
}
