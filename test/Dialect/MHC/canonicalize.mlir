// RUN: mhc-opt %s -split-input-file --canonicalize | FileCheck %s
// The folded Sinkhorn constant must equal the float64 reference (section 3).
// REQUIRES: numpy
// RUN: mhc-opt %s -split-input-file --canonicalize | %python %S/Inputs/check_folded_sinkhorn.py

// One stream: expand is a reshape.
// CHECK-LABEL: func @expand_one_stream
// CHECK: %[[R:.*]] = tensor.expand_shape %arg0 {{\[\[}}0], [1, 2]] output_shape [%{{.*}}, 1, 64] : tensor<?x64xf32> into tensor<?x1x64xf32>
// CHECK-NEXT: return %[[R]]
func.func @expand_one_stream(%h: tensor<?x64xf32>) -> tensor<?x1x64xf32> {
  %x = mhc.expand %h, streams = 1 : tensor<?x64xf32> -> tensor<?x1x64xf32>
  return %x : tensor<?x1x64xf32>
}

// -----

// One stream: collapse is a reshape.
// CHECK-LABEL: func @collapse_one_stream
// CHECK-NEXT: %[[R:.*]] = tensor.collapse_shape %arg0 {{\[\[}}0], [1], [2, 3]] : tensor<2x8x1x13xbf16> into tensor<2x8x13xbf16>
// CHECK-NEXT: return %[[R]]
func.func @collapse_one_stream(%x: tensor<2x8x1x13xbf16>) -> tensor<2x8x13xbf16> {
  %h = mhc.collapse %x : tensor<2x8x1x13xbf16> -> tensor<2x8x13xbf16>
  return %h : tensor<2x8x13xbf16>
}

// -----

// collapse(expand(h, 4)) = 4 * h.
// CHECK-LABEL: func @collapse_of_expand
// CHECK-DAG: %[[FOUR:.*]] = arith.constant 4.000000e+00 : bf16
// CHECK-DAG: %[[D:.*]] = tensor.dim %arg0, %c0
// CHECK: %[[S:.*]] = tensor.splat %[[FOUR]][%[[D]]] : tensor<?x64xbf16>
// CHECK: %[[R:.*]] = arith.mulf %arg0, %[[S]] : tensor<?x64xbf16>
// CHECK-NOT: mhc.
// CHECK: return %[[R]]
func.func @collapse_of_expand(%h: tensor<?x64xbf16>) -> tensor<?x64xbf16> {
  %x = mhc.expand %h, streams = 4 : tensor<?x64xbf16> -> tensor<?x4x64xbf16>
  %r = mhc.collapse %x : tensor<?x4x64xbf16> -> tensor<?x64xbf16>
  return %r : tensor<?x64xbf16>
}

// -----

// ... and with one stream the pair disappears.
// CHECK-LABEL: func @collapse_of_expand_one
// CHECK-NEXT: return %arg0
func.func @collapse_of_expand_one(%h: tensor<8x64xf32>) -> tensor<8x64xf32> {
  %x = mhc.expand %h, streams = 1 : tensor<8x64xf32> -> tensor<8x1x64xf32>
  %r = mhc.collapse %x : tensor<8x1x64xf32> -> tensor<8x64xf32>
  return %r : tensor<8x64xf32>
}

// -----

// Leading dims that differ in staticness are left alone (no silent cast).
// CHECK-LABEL: func @collapse_of_expand_cast
// CHECK: mhc.expand
// CHECK: mhc.collapse
func.func @collapse_of_expand_cast(%h: tensor<8x64xf32>) -> tensor<?x64xf32> {
  %x = mhc.expand %h, streams = 2 : tensor<8x64xf32> -> tensor<?x2x64xf32>
  %r = mhc.collapse %x : tensor<?x2x64xf32> -> tensor<?x64xf32>
  return %r : tensor<?x64xf32>
}

// -----

// Sinkhorn of a constant folds to a constant computed with the exact numerics.
// CHECK-LABEL: func @sinkhorn_constant
// CHECK-NOT: mhc.sinkhorn
// CHECK: %[[C:.*]] = arith.constant dense<{{.*}}> : tensor<2x3x3xf32>
// CHECK: return %[[C]]
func.func @sinkhorn_constant() -> tensor<2x3x3xf32> {
  %l = arith.constant dense<[[[0.5, -1.25, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.125]],
                             [[3.0, 0.0, -1.0], [0.3, 0.7, -0.2], [1.1, -0.4, 2.5]]]> : tensor<2x3x3xf32>
  %c = mhc.sinkhorn %l : tensor<2x3x3xf32>
  return %c : tensor<2x3x3xf32>
}

// -----

// Non-default attributes are honoured by the folder.
// CHECK-LABEL: func @sinkhorn_constant_attrs
// CHECK-NOT: mhc.sinkhorn
// CHECK: arith.constant dense<{{.*}}> : tensor<4x4xf32>
func.func @sinkhorn_constant_attrs() -> tensor<4x4xf32> {
  %l = arith.constant dense<[[0.1, 2.0, -0.3, 0.4], [1.0, -1.0, 0.5, 0.0], [0.2, 0.3, 0.4, 3.0], [-2.0, 0.6, 0.7, 0.8]]> : tensor<4x4xf32>
  %c = mhc.sinkhorn %l {iterations = 3 : i64, eps = 1.0e-3 : f32} : tensor<4x4xf32>
  return %c : tensor<4x4xf32>
}

// -----

// Dead coefficient chains disappear; the live mixing stays.
// CHECK-LABEL: func @dead_coefficients
// CHECK-NOT: mhc.norm_project
// CHECK-NOT: mhc.split_mixes
// CHECK-NOT: mhc.sinkhorn
// CHECK: mhc.pre_apply
// CHECK-NEXT: return
func.func @dead_coefficients(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>,
                             %scale: tensor<3xf32>, %base: tensor<24xf32>,
                             %pre: tensor<?x4xf32>) -> tensor<?x64xbf16> {
  %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %p, %q, %l = mhc.split_mixes %mix, %scale, %base
      : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>
      -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %c = mhc.sinkhorn %l : tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  return %u : tensor<?x64xbf16>
}

// -----

// Over the folder's compile-time budget (elements x iterations > 2^22), a
// constant Sinkhorn stays an op and runs at run time.
// CHECK-LABEL: func @sinkhorn_constant_too_big
// CHECK: mhc.sinkhorn
func.func @sinkhorn_constant_too_big() -> tensor<16384x4x4xf32> {
  %l = arith.constant dense<0.5> : tensor<16384x4x4xf32>
  %c = mhc.sinkhorn %l : tensor<16384x4x4xf32>
  return %c : tensor<16384x4x4xf32>
}

// -----

// The budget counts iterations too: one small matrix with 10^12 iterations
// is not folded (folding it would hang --canonicalize; elements x
// iterations would overflow int64 for more).
// CHECK-LABEL: func @sinkhorn_constant_many_iterations
// CHECK: mhc.sinkhorn %{{.*}} {iterations = 1000000000000 : i64}
// CHECK: mhc.sinkhorn %{{.*}} {iterations = 4611686018427387904 : i64}
func.func @sinkhorn_constant_many_iterations() -> (tensor<4x4xf32>, tensor<4x4xf32>) {
  %l = arith.constant dense<0.5> : tensor<4x4xf32>
  %c = mhc.sinkhorn %l {iterations = 1000000000000 : i64} : tensor<4x4xf32>
  %d = mhc.sinkhorn %l {iterations = 4611686018427387904 : i64} : tensor<4x4xf32>
  return %c, %d : tensor<4x4xf32>, tensor<4x4xf32>
}

// -----

// The Sinkhorn gradient of constants folds (checked against the float64
// reference by check_folded_sinkhorn.py).
// CHECK-LABEL: func @sinkhorn_grad_constant
// CHECK-NOT: mhc.sinkhorn_grad
// CHECK: %[[C:.*]] = arith.constant dense<{{.*}}> : tensor<2x3x3xf32>
// CHECK: return %[[C]]
func.func @sinkhorn_grad_constant() -> tensor<2x3x3xf32> {
  %l = arith.constant dense<[[[0.5, -1.25, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.125]],
                             [[3.0, 0.0, -1.0], [0.3, 0.7, -0.2], [1.1, -0.4, 2.5]]]> : tensor<2x3x3xf32>
  %d = arith.constant dense<[[[1.0, -0.5, 0.25], [0.0, 2.0, -1.5], [0.75, 0.5, -0.25]],
                             [[-1.0, 0.3, 0.6], [0.9, -0.2, 0.1], [0.4, 1.2, -0.7]]]> : tensor<2x3x3xf32>
  %g = mhc.sinkhorn_grad %l, %d : tensor<2x3x3xf32>
  return %g : tensor<2x3x3xf32>
}

// -----

// Non-default attributes are honoured by the gradient folder.
// CHECK-LABEL: func @sinkhorn_grad_constant_attrs
// CHECK-NOT: mhc.sinkhorn_grad
// CHECK: arith.constant dense<{{.*}}> : tensor<4x4xf32>
func.func @sinkhorn_grad_constant_attrs() -> tensor<4x4xf32> {
  %l = arith.constant dense<[[0.1, 2.0, -0.3, 0.4], [1.0, -1.0, 0.5, 0.0], [0.2, 0.3, 0.4, 3.0], [-2.0, 0.6, 0.7, 0.8]]> : tensor<4x4xf32>
  %d = arith.constant dense<[[1.0, 0.0, -2.0, 0.5], [0.25, -0.75, 1.5, 0.0], [-1.0, 2.0, 0.5, 0.125], [0.3, -0.6, 0.9, -1.2]]> : tensor<4x4xf32>
  %g = mhc.sinkhorn_grad %l, %d {iterations = 3 : i64, eps = 1.0e-3 : f32} : tensor<4x4xf32>
  return %g : tensor<4x4xf32>
}

// -----

// Only the logits constant: nothing to fold.
// CHECK-LABEL: func @sinkhorn_grad_one_constant
// CHECK: mhc.sinkhorn_grad
func.func @sinkhorn_grad_one_constant(%d: tensor<2x2xf32>) -> tensor<2x2xf32> {
  %l = arith.constant dense<[[0.5, 1.0], [-1.0, 2.0]]> : tensor<2x2xf32>
  %g = mhc.sinkhorn_grad %l, %d : tensor<2x2xf32>
  return %g : tensor<2x2xf32>
}

// -----

// Over the budget, the gradient is computed at run time too.
// CHECK-LABEL: func @sinkhorn_grad_constant_too_big
// CHECK: mhc.sinkhorn_grad
func.func @sinkhorn_grad_constant_too_big() -> tensor<16384x4x4xf32> {
  %l = arith.constant dense<0.5> : tensor<16384x4x4xf32>
  %d = arith.constant dense<1.0> : tensor<16384x4x4xf32>
  %g = mhc.sinkhorn_grad %l, %d : tensor<16384x4x4xf32>
  return %g : tensor<16384x4x4xf32>
}

// -----

// A zero cotangent gives zero gradients: static results become zero
// constants, dynamic ones a splat with the operand's token dims.
// CHECK-LABEL: func @zero_cotangent_sinkhorn
// CHECK-SAME: (%[[L:.*]]: tensor<?x4x4xf32>, %{{.*}}: tensor<8x4x4xf32>)
// CHECK-DAG: %[[Z:.*]] = arith.constant 0.000000e+00 : f32
// CHECK-DAG: %[[ZS:.*]] = arith.constant dense<0.000000e+00> : tensor<8x4x4xf32>
// CHECK-DAG: %[[T:.*]] = tensor.dim %[[L]], %c0
// CHECK: %[[S:.*]] = tensor.splat %[[Z]][%[[T]]] : tensor<?x4x4xf32>
// CHECK-NOT: mhc.sinkhorn_grad
// CHECK: return %[[S]], %[[ZS]]
func.func @zero_cotangent_sinkhorn(%l: tensor<?x4x4xf32>, %s: tensor<8x4x4xf32>) -> (tensor<?x4x4xf32>, tensor<8x4x4xf32>) {
  %z = arith.constant dense<0.0> : tensor<8x4x4xf32>
  %zd = tensor.cast %z : tensor<8x4x4xf32> to tensor<?x4x4xf32>
  %g = mhc.sinkhorn_grad %l, %zd : tensor<?x4x4xf32>
  %zs = arith.constant dense<-0.0> : tensor<8x4x4xf32>
  %gs = mhc.sinkhorn_grad %s, %zs : tensor<8x4x4xf32>
  return %g, %gs : tensor<?x4x4xf32>, tensor<8x4x4xf32>
}

// -----

// Every gradient op: zero cotangents (a splat of zero with a dynamic token
// dim, zero constants) give zero gradients of the operands' types.
// CHECK-LABEL: func @zero_cotangents
// CHECK-DAG: %[[DBASE:.*]] = arith.constant dense<0.000000e+00> : tensor<24xf32>
// CHECK-DAG: %[[DSCALE:.*]] = arith.constant dense<0.000000e+00> : tensor<3xf32>
// CHECK-DAG: %[[DFN:.*]] = arith.constant dense<0.000000e+00> : tensor<24x52xf32>
// CHECK-DAG: %[[ZB:.*]] = arith.constant 0.000000e+00 : bf16
// CHECK-NOT: mhc.
// CHECK: %[[DX:.*]] = tensor.splat %[[ZB]][%{{.*}}] : tensor<?x4x13xbf16>
// CHECK-NOT: mhc.
// CHECK: return %[[DX]], %[[DFN]], %{{.*}}, %[[DSCALE]], %[[DBASE]],
func.func @zero_cotangents(%x: tensor<?x4x13xbf16>, %fn: tensor<24x52xf32>, %mix: tensor<?x24xf32>,
                           %scale: tensor<3xf32>, %base: tensor<24xf32>, %pre: tensor<?x4xf32>,
                           %comb: tensor<?x4x4xf32>, %y: tensor<?x13xbf16>)
    -> (tensor<?x4x13xbf16>, tensor<24x52xf32>, tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>,
        tensor<?x4x13xbf16>, tensor<?x4xf32>, tensor<?x13xbf16>, tensor<?x4x13xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>) {
  %c0 = arith.constant 0 : index
  %t = tensor.dim %x, %c0 : tensor<?x4x13xbf16>
  %zf = arith.constant 0.0 : f32
  %zb = arith.constant 0.0 : bf16
  %dmix = tensor.splat %zf[%t] : tensor<?x24xf32>
  %dn = tensor.splat %zf[%t] : tensor<?x4xf32>
  %dnn = tensor.splat %zf[%t] : tensor<?x4x4xf32>
  %du = tensor.splat %zb[%t] : tensor<?x13xbf16>
  %dout = tensor.splat %zb[%t] : tensor<?x4x13xbf16>
  %a:2 = mhc.norm_project_grad %x, %fn, %dmix : tensor<?x4x13xbf16>, tensor<24x52xf32>, tensor<?x24xf32>
  %b:3 = mhc.split_mixes_grad %mix, %scale, %base, %dn, %dn, %dnn
      : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %c:2 = mhc.pre_apply_grad %x, %pre, %du : tensor<?x4x13xbf16>, tensor<?x4xf32>, tensor<?x13xbf16>
  %d:4 = mhc.post_res_grad %y, %x, %pre, %comb, %dout
      : tensor<?x13xbf16>, tensor<?x4x13xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x13xbf16>
  return %a#0, %a#1, %b#0, %b#1, %b#2, %c#0, %c#1, %d#0, %d#1, %d#2, %d#3
      : tensor<?x4x13xbf16>, tensor<24x52xf32>, tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>,
        tensor<?x4x13xbf16>, tensor<?x4xf32>, tensor<?x13xbf16>, tensor<?x4x13xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>
}

// -----

// One non-zero cotangent keeps the op (split_mixes_grad has three).
// CHECK-LABEL: func @partly_zero_cotangents
// CHECK: mhc.split_mixes_grad
func.func @partly_zero_cotangents(%mix: tensor<8x24xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>,
                                  %dpost: tensor<8x4xf32>) -> tensor<8x24xf32> {
  %dn = arith.constant dense<0.0> : tensor<8x4xf32>
  %dnn = arith.constant dense<0.0> : tensor<8x4x4xf32>
  %b:3 = mhc.split_mixes_grad %mix, %scale, %base, %dn, %dpost, %dnn
      : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return %b#0 : tensor<8x24xf32>
}

// -----

// rms_norm_grad with a zero dout: du zero with u's dynamic token dim, dweight
// a zero constant of the weight's type.
// CHECK-LABEL: func @zero_cotangent_rms_norm
// CHECK-DAG: %[[DW:.*]] = arith.constant dense<0.000000e+00> : tensor<13xf32>
// CHECK-DAG: %[[ZB:.*]] = arith.constant 0.000000e+00 : bf16
// CHECK-NOT: mhc.rms_norm_grad
// CHECK: %[[DU:.*]] = tensor.splat %[[ZB]][%{{.*}}] : tensor<?x13xbf16>
// CHECK: return %[[DU]], %[[DW]]
func.func @zero_cotangent_rms_norm(%u: tensor<?x13xbf16>, %w: tensor<13xf32>) -> (tensor<?x13xbf16>, tensor<13xf32>) {
  %c0 = arith.constant 0 : index
  %t = tensor.dim %u, %c0 : tensor<?x13xbf16>
  %zb = arith.constant 0.0 : bf16
  %d = tensor.splat %zb[%t] : tensor<?x13xbf16>
  %du, %dw = mhc.rms_norm_grad %u, %w, %d : tensor<?x13xbf16>, tensor<13xf32>, tensor<?x13xbf16>
  return %du, %dw : tensor<?x13xbf16>, tensor<13xf32>
}
