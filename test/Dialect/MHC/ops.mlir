// RUN: mhc-opt %s | FileCheck %s
// Round trip through the custom form and through the generic form.
// RUN: mhc-opt %s | mhc-opt | FileCheck %s
// RUN: mhc-opt %s --mlir-print-op-generic | mhc-opt | FileCheck %s
// RUN: mhc-opt %s --mlir-print-op-generic | FileCheck %s --check-prefix=GENERIC

// CHECK-LABEL: func @sublayer
// CHECK: %[[X:.*]] = mhc.expand %{{.*}}, streams = 4 : tensor<?x64xbf16> -> tensor<?x4x64xbf16>
// CHECK: %[[MIX:.*]] = mhc.norm_project %[[X]], %{{.*}} : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
// CHECK: %[[PRE:.*]], %[[POST:.*]], %[[L:.*]] = mhc.split_mixes %[[MIX]], %{{.*}}, %{{.*}} : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
// CHECK: %[[C:.*]] = mhc.sinkhorn %[[L]] : tensor<?x4x4xf32>
// CHECK: %[[U:.*]] = mhc.pre_apply %[[X]], %[[PRE]] : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
// CHECK: %[[XN:.*]] = mhc.post_res %{{.*}}, %[[X]], %[[POST]], %[[C]] : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
// CHECK: mhc.collapse %[[XN]] : tensor<?x4x64xbf16> -> tensor<?x64xbf16>
// GENERIC: "mhc.expand"(%{{.*}}) <{streams = 4 : i64}>
// GENERIC: "mhc.norm_project"(%{{.*}}, %{{.*}}) <{eps = 9.99999997E-7 : f32}>
// GENERIC: "mhc.split_mixes"(%{{.*}}, %{{.*}}, %{{.*}}) <{post_mult = 2.000000e+00 : f32, pre_eps = 9.99999997E-7 : f32}>
// GENERIC: "mhc.sinkhorn"(%{{.*}}) <{eps = 9.99999997E-7 : f32, iterations = 20 : i64}>
func.func @sublayer(%h: tensor<?x64xbf16>, %fn: tensor<24x256xf32>,
                    %scale: tensor<3xf32>, %base: tensor<24xf32>,
                    %y: tensor<?x64xbf16>) -> tensor<?x64xbf16> {
  %x = mhc.expand %h, streams = 4 : tensor<?x64xbf16> -> tensor<?x4x64xbf16>
  %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre, %post, %logits = mhc.split_mixes %mix, %scale, %base
      : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>
      -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %comb = mhc.sinkhorn %logits : tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  %xn = mhc.post_res %y, %x, %post, %comb
      : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>
      -> tensor<?x4x64xbf16>
  %out = mhc.collapse %xn : tensor<?x4x64xbf16> -> tensor<?x64xbf16>
  return %out : tensor<?x64xbf16>
}

// Non-default attributes are printed; several leading dims, mixed static and
// dynamic; f16 and f32 activations; n = 2 (M = 8), C = 13.
// CHECK-LABEL: func @attributes_and_shapes
// CHECK: mhc.norm_project %{{.*}}, %{{.*}} {eps = 1.000000e-03 : f32} : tensor<2x?x2x13xf16>, tensor<8x26xf32> -> tensor<2x?x8xf32>
// CHECK: mhc.split_mixes %{{.*}} {post_mult = 1.500000e+00 : f32, pre_eps = 0.000000e+00 : f32}
// CHECK: mhc.sinkhorn %{{.*}} {eps = 0.000000e+00 : f32, iterations = 5 : i64} : tensor<2x?x2x2xf32>
// CHECK: mhc.pre_apply %{{.*}} : tensor<2x?x2x13xf16>, tensor<2x?x2xf32> -> tensor<2x?x13xf16>
// CHECK: mhc.post_res %{{.*}} : tensor<2x?x13xf16>, tensor<2x?x2x13xf16>, tensor<2x?x2xf32>, tensor<2x?x2x2xf32> -> tensor<2x?x2x13xf16>
func.func @attributes_and_shapes(%x: tensor<2x?x2x13xf16>, %fn: tensor<8x26xf32>,
                                 %scale: tensor<3xf32>, %base: tensor<8xf32>,
                                 %y: tensor<2x?x13xf16>) -> tensor<2x?x2x13xf16> {
  %mix = mhc.norm_project %x, %fn {eps = 1.0e-3 : f32} : tensor<2x?x2x13xf16>, tensor<8x26xf32> -> tensor<2x?x8xf32>
  %pre, %post, %logits = mhc.split_mixes %mix, %scale, %base {post_mult = 1.5 : f32, pre_eps = 0.0 : f32}
      : tensor<2x?x8xf32>, tensor<3xf32>, tensor<8xf32>
      -> tensor<2x?x2xf32>, tensor<2x?x2xf32>, tensor<2x?x2x2xf32>
  %comb = mhc.sinkhorn %logits {iterations = 5 : i64, eps = 0.0 : f32} : tensor<2x?x2x2xf32>
  %u = mhc.pre_apply %x, %pre : tensor<2x?x2x13xf16>, tensor<2x?x2xf32> -> tensor<2x?x13xf16>
  %xn = mhc.post_res %y, %x, %post, %comb
      : tensor<2x?x13xf16>, tensor<2x?x2x13xf16>, tensor<2x?x2xf32>, tensor<2x?x2x2xf32>
      -> tensor<2x?x2x13xf16>
  return %xn : tensor<2x?x2x13xf16>
}

// The spec's generic-form example parses and verifies; no leading dims at all
// (a single token) is fine too.
// CHECK-LABEL: func @generic_form
// CHECK: mhc.sinkhorn %{{.*}} : tensor<8x4x4xf32>
// CHECK: mhc.expand %{{.*}}, streams = 8 : tensor<100xf32> -> tensor<8x100xf32>
func.func @generic_form(%l: tensor<8x4x4xf32>, %h: tensor<100xf32>) -> (tensor<8x4x4xf32>, tensor<8x100xf32>) {
  %c = "mhc.sinkhorn"(%l) <{eps = 1.0e-06 : f32, iterations = 20 : i64}> : (tensor<8x4x4xf32>) -> tensor<8x4x4xf32>
  %x = "mhc.expand"(%h) <{streams = 8 : i64}> : (tensor<100xf32>) -> tensor<8x100xf32>
  return %c, %x : tensor<8x4x4xf32>, tensor<8x100xf32>
}

// CHECK-LABEL: func @fused_group
// CHECK: %{{.*}}:2 = mhc.fused "pre" -> tensor<?x4xf32>, tensor<?x64xbf16> {
// CHECK: mhc.yield %{{.*}}, %{{.*}} : tensor<?x4xf32>, tensor<?x64xbf16>
func.func @fused_group(%x: tensor<?x4x64xbf16>, %pre: tensor<?x4xf32>) -> (tensor<?x4xf32>, tensor<?x64xbf16>) {
  %r:2 = mhc.fused "pre" -> tensor<?x4xf32>, tensor<?x64xbf16> {
    %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
    mhc.yield %pre, %u : tensor<?x4xf32>, tensor<?x64xbf16>
  }
  return %r#0, %r#1 : tensor<?x4xf32>, tensor<?x64xbf16>
}

// The gradient ops: custom form with dynamic and static leading dims, bf16
// activations and non-default attributes; results take their operands' types.
// CHECK-LABEL: func @gradients
// CHECK: %{{.*}}, %{{.*}} = mhc.norm_project_grad %{{.*}}, %{{.*}}, %{{.*}} {eps = 1.000000e-03 : f32} : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>
// CHECK: %{{.*}}, %{{.*}}, %{{.*}} = mhc.split_mixes_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {post_mult = 1.500000e+00 : f32} : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
// CHECK: mhc.sinkhorn_grad %{{.*}}, %{{.*}} {iterations = 7 : i64} : tensor<?x4x4xf32>
// CHECK: %{{.*}}, %{{.*}} = mhc.pre_apply_grad %{{.*}}, %{{.*}}, %{{.*}} : tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>
// CHECK: %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} = mhc.post_res_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>
// GENERIC: sym_name = "gradients"
// GENERIC: "mhc.norm_project_grad"(%{{.*}}, %{{.*}}, %{{.*}}) <{eps = 1.000000e-03 : f32}> : (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>)
// GENERIC: "mhc.split_mixes_grad"({{.*}}) <{post_mult = 1.500000e+00 : f32, pre_eps = 9.99999997E-7 : f32}> : (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>) -> (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>)
// GENERIC: "mhc.sinkhorn_grad"(%{{.*}}, %{{.*}}) <{eps = 9.99999997E-7 : f32, iterations = 7 : i64}> : (tensor<?x4x4xf32>, tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
// GENERIC: "mhc.pre_apply_grad"(%{{.*}}, %{{.*}}, %{{.*}}) : (tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>) -> (tensor<?x4x64xbf16>, tensor<?x4xf32>)
// GENERIC: "mhc.post_res_grad"({{.*}}) : (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>) -> (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
func.func @gradients(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>,
                     %scale: tensor<3xf32>, %base: tensor<24xf32>,
                     %y: tensor<?x64xbf16>, %mix: tensor<?x24xf32>,
                     %pre: tensor<?x4xf32>, %post: tensor<?x4xf32>,
                     %logits: tensor<?x4x4xf32>, %comb: tensor<?x4x4xf32>,
                     %du: tensor<?x64xbf16>, %dout: tensor<?x4x64xbf16>) {
  %dx0, %dfn = mhc.norm_project_grad %x, %fn, %mix {eps = 1.0e-3 : f32}
      : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>
  %dmix, %dscale, %dbase = mhc.split_mixes_grad %mix, %scale, %base, %pre, %post, %logits {post_mult = 1.5 : f32}
      : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %dl = mhc.sinkhorn_grad %logits, %comb {iterations = 7 : i64} : tensor<?x4x4xf32>
  %dx1, %dpre = mhc.pre_apply_grad %x, %pre, %du
      : tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>
  %dy, %dx2, %dpost, %dcomb = mhc.post_res_grad %y, %x, %post, %comb, %dout
      : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>
  return
}

// The spec's generic-form example of a gradient op, verbatim; no leading dims
// and several static ones parse too.
// CHECK-LABEL: func @gradients_generic
// CHECK: mhc.norm_project_grad %{{.*}}, %{{.*}}, %{{.*}} : tensor<3x4x12xf32>, tensor<24x48xf32>, tensor<3x24xf32>
// CHECK: mhc.pre_apply_grad %{{.*}}, %{{.*}}, %{{.*}} : tensor<2x13xf16>, tensor<2xf32>, tensor<13xf16>
// CHECK: mhc.sinkhorn_grad %{{.*}}, %{{.*}} : tensor<2x5x1x1xf32>
func.func @gradients_generic(%x: tensor<3x4x12xf32>, %fn: tensor<24x48xf32>, %dmix: tensor<3x24xf32>,
                             %x1: tensor<2x13xf16>, %pre1: tensor<2xf32>, %du1: tensor<13xf16>,
                             %l: tensor<2x5x1x1xf32>, %dc: tensor<2x5x1x1xf32>)
    -> (tensor<3x4x12xf32>, tensor<24x48xf32>) {
  %dx, %dfn = "mhc.norm_project_grad"(%x, %fn, %dmix) <{eps = 1.0e-06 : f32}> : (tensor<3x4x12xf32>, tensor<24x48xf32>, tensor<3x24xf32>) -> (tensor<3x4x12xf32>, tensor<24x48xf32>)
  %a, %b = "mhc.pre_apply_grad"(%x1, %pre1, %du1) : (tensor<2x13xf16>, tensor<2xf32>, tensor<13xf16>) -> (tensor<2x13xf16>, tensor<2xf32>)
  %c = "mhc.sinkhorn_grad"(%l, %dc) <{eps = 1.0e-06 : f32, iterations = 20 : i64}> : (tensor<2x5x1x1xf32>, tensor<2x5x1x1xf32>) -> tensor<2x5x1x1xf32>
  return %dx, %dfn : tensor<3x4x12xf32>, tensor<24x48xf32>
}

// The sublayer's pre-norm (an extension op) and its gradient, weights of u's
// type and f32.
// CHECK-LABEL: func @rms_norm
// CHECK: %[[O:.*]] = mhc.rms_norm %{{.*}}, %{{.*}} {eps = 7.812500e-03 : f32} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
// CHECK: mhc.rms_norm %{{.*}}, %{{.*}} : tensor<2x3x64xbf16>, tensor<64xf32> -> tensor<2x3x64xbf16>
// CHECK: %{{.*}}, %{{.*}} = mhc.rms_norm_grad %{{.*}}, %{{.*}}, %{{.*}} : tensor<?x64xbf16>, tensor<64xbf16>, tensor<?x64xbf16>
// GENERIC: "mhc.rms_norm"(%{{.*}}, %{{.*}}) <{eps = 7.812500e-03 : f32}> : (tensor<?x64xbf16>, tensor<64xbf16>) -> tensor<?x64xbf16>
// GENERIC: "mhc.rms_norm_grad"(%{{.*}}, %{{.*}}, %{{.*}}) <{eps = 9.99999997E-7 : f32}> : (tensor<?x64xbf16>, tensor<64xbf16>, tensor<?x64xbf16>) -> (tensor<?x64xbf16>, tensor<64xbf16>)
func.func @rms_norm(%u: tensor<?x64xbf16>, %w: tensor<64xbf16>, %u2: tensor<2x3x64xbf16>,
                    %w2: tensor<64xf32>, %d: tensor<?x64xbf16>) {
  %o = mhc.rms_norm %u, %w {eps = 0.0078125 : f32} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %o2 = mhc.rms_norm %u2, %w2 : tensor<2x3x64xbf16>, tensor<64xf32> -> tensor<2x3x64xbf16>
  %du, %dw = mhc.rms_norm_grad %u, %w, %d : tensor<?x64xbf16>, tensor<64xbf16>, tensor<?x64xbf16>
  return
}
