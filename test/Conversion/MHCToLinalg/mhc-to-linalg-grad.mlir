// RUN: mhc-opt %s --convert-mhc-to-linalg --split-input-file | FileCheck %s

// The gradient ops become linalg.generic on tensors like the forward ops:
// activations widened where read, f32 accumulation, one truncf per bf16/f16
// result element; parameter gradients reduce over the token loops.

// norm_project_grad: dx = round(dm @ fn + 2 v dS) in one rounding; dfn sums
// over the tokens (the token loop is a reduction) into [M, n, C], then
// collapses to [M, n*C].
// CHECK-DAG: #[[$TOKVEC:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1)>
// CHECK-DAG: #[[$XV:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>
// CHECK-DAG: #[[$FN3:.*]] = affine_map<(d0, d1, d2, d3) -> (d1, d2, d3)>
// CHECK-LABEL: func @norm_project_grad
// CHECK-SAME: (%[[X:.*]]: tensor<?x4x64xbf16>, %[[FN:.*]]: tensor<24x256xf32>, %[[DMIX:.*]]: tensor<?x24xf32>)
// CHECK:       math.rsqrt
// CHECK:       %[[ACC:.*]] = linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "parallel", "reduction"]} ins(%{{.*}}, %{{.*}} : tensor<?x24xf32>, tensor<24x4x64xf32>) outs(%{{.*}} : tensor<?x4x64xf32>)
// CHECK:       %[[DX:.*]] = linalg.generic {{.*}} ins(%[[X]], %{{.*}}, %{{.*}}, %[[ACC]] : tensor<?x4x64xbf16>, tensor<?xf32>, tensor<?xf32>, tensor<?x4x64xf32>) outs(%{{.*}} : tensor<?x4x64xbf16>)
// CHECK-COUNT-1: arith.truncf
// CHECK:       %[[DFN3:.*]] = linalg.generic {indexing_maps = [#[[$TOKVEC]], #[[$XV]], #[[$FN3]]], iterator_types = ["reduction", "parallel", "parallel", "parallel"]}
// CHECK-SAME:    outs(%{{.*}} : tensor<24x4x64xf32>)
// CHECK-NOT:   arith.truncf
// CHECK:       %[[DFN:.*]] = tensor.collapse_shape %[[DFN3]] {{\[\[}}0], [1, 2]] : tensor<24x4x64xf32> into tensor<24x256xf32>
// CHECK:       return %[[DX]], %[[DFN]]
func.func @norm_project_grad(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>, %dmix: tensor<?x24xf32>) -> (tensor<?x4x64xbf16>, tensor<24x256xf32>) {
  %dx, %dfn = mhc.norm_project_grad %x, %fn, %dmix : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>
  return %dx, %dfn : tensor<?x4x64xbf16>, tensor<24x256xf32>
}

// -----

// split_mixes_grad views the M = 24 mixes as 6 rows of 4 (pre, post, 4 logits
// rows): da per row, dmix = da * scale[min(r, 2)], dbase and dscale sum over
// the tokens.
// CHECK-LABEL: func @split_mixes_grad
// CHECK:       %[[MIX3:.*]] = tensor.expand_shape %arg0 {{\[\[}}0], [1, 2]] output_shape [%{{.*}}, 6, 4] : tensor<?x24xf32> into tensor<?x6x4xf32>
// CHECK:       %[[DA:.*]] = linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "parallel"]} ins(%[[MIX3]], %{{.*}}, %arg3, %arg4 : {{.*}}) outs(%{{.*}} : tensor<?x6x4xf32>)
// CHECK:         tensor.extract %arg1
// CHECK:         tensor.extract %arg5
// CHECK:       %[[DMIX3:.*]] = linalg.generic {{.*}} ins(%[[DA]] : tensor<?x6x4xf32>)
// CHECK:       %[[DMIX:.*]] = tensor.collapse_shape %[[DMIX3]] {{\[\[}}0], [1, 2]] : tensor<?x6x4xf32> into tensor<?x24xf32>
// CHECK:       %[[DBASE2:.*]] = linalg.generic {{.*}} iterator_types = ["reduction", "parallel", "parallel"]} ins(%[[DA]] : tensor<?x6x4xf32>) outs(%{{.*}} : tensor<6x4xf32>)
// CHECK:       %[[DBASE:.*]] = tensor.collapse_shape %[[DBASE2]] {{\[\[}}0, 1]] : tensor<6x4xf32> into tensor<24xf32>
// CHECK:       %[[DSCALE:.*]] = linalg.generic {{.*}} iterator_types = ["reduction", "reduction", "reduction", "parallel"]} ins(%[[DA]], %[[MIX3]] : {{.*}}) outs(%{{.*}} : tensor<3xf32>)
// CHECK:       return %[[DMIX]], %[[DSCALE]], %[[DBASE]]
func.func @split_mixes_grad(%mix: tensor<?x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>, %p: tensor<?x4xf32>, %q: tensor<?x4xf32>, %l: tensor<?x4x4xf32>) -> (tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>) {
  %a:3 = mhc.split_mixes_grad %mix, %s, %b, %p, %q, %l : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  return %a#0, %a#1, %a#2 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>
}

// -----

// sinkhorn_grad recomputes the iterates: softmax (no trace input), the first
// column normalisation, then a loop over the 19 (row, column) pairs walked
// backwards whose body replays the forward up to the pair in an inner loop.
// CHECK-LABEL: func @sinkhorn_grad
// CHECK-SAME: (%[[L:.*]]: tensor<8x4x4xf32>, %[[D:.*]]: tensor<8x4x4xf32>)
// CHECK:       math.exp
// CHECK:       %[[C19:.*]] = arith.constant 19 : index
// CHECK:       %[[G:.*]] = scf.for %[[R:.*]] = %c0 to %[[C19]] step %c1 iter_args(%{{.*}} = %[[D]]) -> (tensor<8x4x4xf32>) {
// CHECK:         %[[IT:.*]] = arith.subi %[[C19]], %[[R]] : index
// CHECK:         scf.for %{{.*}} = %c1 to %[[IT]] step %c1 iter_args
// CHECK:         scf.yield
// CHECK:       scf.yield
// CHECK:       return
func.func @sinkhorn_grad(%l: tensor<8x4x4xf32>, %d: tensor<8x4x4xf32>) -> tensor<8x4x4xf32> {
  %g = mhc.sinkhorn_grad %l, %d : tensor<8x4x4xf32>
  return %g : tensor<8x4x4xf32>
}

// -----

// One iteration: no loop.
// CHECK-LABEL: func @sinkhorn_grad_once
// CHECK-NOT:   scf.for
// CHECK:       return
func.func @sinkhorn_grad_once(%l: tensor<?x2x2xf32>, %d: tensor<?x2x2xf32>) -> tensor<?x2x2xf32> {
  %g = mhc.sinkhorn_grad %l, %d {iterations = 1 : i64} : tensor<?x2x2xf32>
  return %g : tensor<?x2x2xf32>
}

// -----

// pre_apply_grad: dx is one product per element, rounded once; dpre sums
// over C in f32.
// CHECK-LABEL: func @pre_apply_grad
// CHECK:       %[[DX:.*]] = linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "parallel"]} ins(%arg1, %arg2 : tensor<?x4xf32>, tensor<?x64xf16>) outs(%{{.*}} : tensor<?x4x64xf16>)
// CHECK:         arith.extf %{{.*}} : f16 to f32
// CHECK:         arith.truncf %{{.*}} : f32 to f16
// CHECK:       %[[DPRE:.*]] = linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction"]} ins(%arg2, %arg0 : tensor<?x64xf16>, tensor<?x4x64xf16>) outs(%{{.*}} : tensor<?x4xf32>)
// CHECK:       return %[[DX]], %[[DPRE]]
func.func @pre_apply_grad(%x: tensor<?x4x64xf16>, %pre: tensor<?x4xf32>, %du: tensor<?x64xf16>) -> (tensor<?x4x64xf16>, tensor<?x4xf32>) {
  %dx, %dpre = mhc.pre_apply_grad %x, %pre, %du : tensor<?x4x64xf16>, tensor<?x4xf32>, tensor<?x64xf16>
  return %dx, %dpre : tensor<?x4x64xf16>, tensor<?x4xf32>
}

// -----

// post_res_grad: four reductions; each result's accumulator has its operand's
// token dims (post static here, x dynamic).
// CHECK-LABEL: func @post_res_grad
// CHECK:       linalg.generic {{.*}} ins(%arg2, %arg4 : tensor<5x2xf32>, tensor<?x2x13xbf16>) outs(%{{.*}} : tensor<5x13xf32>)
// CHECK:       arith.truncf %{{.*}} : f32 to bf16
// CHECK:       linalg.generic {{.*}} ins(%arg3, %arg4 : tensor<5x2x2xf32>, tensor<?x2x13xbf16>) outs(%{{.*}} : tensor<?x2x13xf32>)
// CHECK:       arith.truncf %{{.*}} : f32 to bf16
// CHECK:       %[[DPOST:.*]] = linalg.generic {{.*}} ins(%arg0, %arg4 : tensor<5x13xbf16>, tensor<?x2x13xbf16>) outs(%{{.*}} : tensor<5x2xf32>)
// CHECK:       %[[DCOMB:.*]] = linalg.generic {{.*}} ins(%arg1, %arg4 : tensor<?x2x13xbf16>, tensor<?x2x13xbf16>) outs(%{{.*}} : tensor<5x2x2xf32>)
// CHECK:       return {{.*}}, %[[DPOST]], %[[DCOMB]] : tensor<5x13xbf16>, tensor<?x2x13xbf16>, tensor<5x2xf32>, tensor<5x2x2xf32>
func.func @post_res_grad(%y: tensor<5x13xbf16>, %x: tensor<?x2x13xbf16>, %post: tensor<5x2xf32>, %comb: tensor<5x2x2xf32>, %dout: tensor<?x2x13xbf16>)
    -> (tensor<5x13xbf16>, tensor<?x2x13xbf16>, tensor<5x2xf32>, tensor<5x2x2xf32>) {
  %dy, %dx, %dpost, %dcomb = mhc.post_res_grad %y, %x, %post, %comb, %dout
      : tensor<5x13xbf16>, tensor<?x2x13xbf16>, tensor<5x2xf32>, tensor<5x2x2xf32>, tensor<?x2x13xbf16>
  return %dy, %dx, %dpost, %dcomb : tensor<5x13xbf16>, tensor<?x2x13xbf16>, tensor<5x2xf32>, tensor<5x2x2xf32>
}

// -----

// rms_norm_grad: r as in the forward, S = sum_c dout * weight * u per token,
// du in one elementwise generic, dweight reduced over both token loops into
// an f32 [C] and rounded once to the weight's type.
// CHECK-DAG: #[[$UC:.*]] = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
// CHECK-DAG: #[[$TOK:.*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-DAG: #[[$WC:.*]] = affine_map<(d0, d1, d2) -> (d2)>
// CHECK-LABEL: func @rms_norm_grad
// CHECK-SAME: (%[[U:.*]]: tensor<2x?x64xbf16>, %[[W:.*]]: tensor<64xbf16>, %[[D:.*]]: tensor<2x?x64xbf16>)
// CHECK:       %[[S:.*]] = linalg.generic {indexing_maps = [#[[$UC]], #[[$WC]], #[[$UC]], #[[$TOK]]], iterator_types = ["parallel", "parallel", "reduction"]}
// CHECK-SAME:    ins(%[[D]], %[[W]], %[[U]] : tensor<2x?x64xbf16>, tensor<64xbf16>, tensor<2x?x64xbf16>)
// CHECK:       linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "parallel"]}
// CHECK-SAME:    ins(%[[D]], %[[W]], %[[U]], %{{.*}}, %[[S]] : {{.*}}) outs(%{{.*}} : tensor<2x?x64xbf16>)
// CHECK:         arith.subf
// CHECK:         arith.truncf %{{.*}} : f32 to bf16
// CHECK:       %[[DW:.*]] = linalg.generic {indexing_maps = [#[[$UC]], #[[$UC]], #[[$TOK]], #[[$WC]]], iterator_types = ["reduction", "reduction", "parallel"]}
// CHECK-SAME:    outs(%{{.*}} : tensor<64xf32>)
// CHECK:       linalg.generic
// CHECK-SAME:    ins(%[[DW]] : tensor<64xf32>) outs(%{{.*}} : tensor<64xbf16>)
// CHECK:         arith.truncf %{{.*}} : f32 to bf16
func.func @rms_norm_grad(%u: tensor<2x?x64xbf16>, %w: tensor<64xbf16>, %d: tensor<2x?x64xbf16>)
    -> (tensor<2x?x64xbf16>, tensor<64xbf16>) {
  %du, %dw = mhc.rms_norm_grad %u, %w, %d : tensor<2x?x64xbf16>, tensor<64xbf16>, tensor<2x?x64xbf16>
  return %du, %dw : tensor<2x?x64xbf16>, tensor<64xbf16>
}
