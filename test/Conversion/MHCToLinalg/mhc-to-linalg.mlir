// RUN: mhc-opt %s --convert-mhc-to-linalg --split-input-file | FileCheck %s

// Every mhc op becomes linalg.generic on tensors: activations are widened with
// arith.extf where they are read, sums accumulate in f32 tensors, and bf16/f16
// results are rounded by one arith.truncf per element. Loop nests start with
// the token dims; dynamic ones size tensor.empty through tensor.dim.

// CHECK-DAG: #[[$IN:.*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
// CHECK-DAG: #[[$OUT:.*]] = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
// CHECK-LABEL: func @expand
// CHECK-SAME: (%[[H:.*]]: tensor<?x64xbf16>)
// CHECK:       %[[T:.*]] = tensor.dim %[[H]], %c0
// CHECK:       %[[E:.*]] = tensor.empty(%[[T]]) : tensor<?x4x64xbf16>
// CHECK:       linalg.generic {indexing_maps = [#[[$IN]], #[[$OUT]]], iterator_types = ["parallel", "parallel", "parallel"]}
// CHECK-SAME:    ins(%[[H]] : tensor<?x64xbf16>) outs(%[[E]] : tensor<?x4x64xbf16>)
// CHECK-NEXT:  ^bb0(%[[V:.*]]: bf16, %{{.*}}: bf16):
// CHECK-NEXT:    linalg.yield %[[V]] : bf16
func.func @expand(%h: tensor<?x64xbf16>) -> tensor<?x4x64xbf16> {
  %x = mhc.expand %h, streams = 4 : tensor<?x64xbf16> -> tensor<?x4x64xbf16>
  return %x : tensor<?x4x64xbf16>
}

// -----

// Two static token dims; the stream sum is a reduction into f32, then rounded.
// CHECK-DAG: #[[$X:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d3, d2)>
// CHECK-DAG: #[[$ACC:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>
// CHECK-LABEL: func @collapse
// CHECK:       %[[ZERO:.*]] = linalg.fill ins(%{{.*}} : f32) outs(%{{.*}} : tensor<2x3x13xf32>)
// CHECK:       %[[SUM:.*]] = linalg.generic {indexing_maps = [#[[$X]], #[[$ACC]]], iterator_types = ["parallel", "parallel", "parallel", "reduction"]}
// CHECK-SAME:    ins(%{{.*}} : tensor<2x3x4x13xbf16>) outs(%[[ZERO]] : tensor<2x3x13xf32>)
// CHECK:         %[[W:.*]] = arith.extf %{{.*}} : bf16 to f32
// CHECK:         arith.addf %{{.*}}, %[[W]] : f32
// CHECK:       %[[R:.*]] = linalg.generic
// CHECK-SAME:    ins(%[[SUM]] : tensor<2x3x13xf32>) outs(%{{.*}} : tensor<2x3x13xbf16>)
// CHECK:         arith.truncf %{{.*}} : f32 to bf16
// CHECK:       return %[[R]]
func.func @collapse(%x: tensor<2x3x4x13xbf16>) -> tensor<2x3x13xbf16> {
  %h = mhc.collapse %x : tensor<2x3x4x13xbf16> -> tensor<2x3x13xbf16>
  return %h : tensor<2x3x13xbf16>
}

// -----

// Sum of squares, projection on fn viewed as [M, n, C] (stream-major k = i*C + c),
// then mix = dot * rsqrt(sqrsum / (n*C) + eps).
// CHECK-DAG: #[[$XSQ:.*]] = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
// CHECK-DAG: #[[$TOK:.*]] = affine_map<(d0, d1, d2) -> (d0)>
// CHECK-DAG: #[[$XDOT:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>
// CHECK-DAG: #[[$FN:.*]] = affine_map<(d0, d1, d2, d3) -> (d1, d2, d3)>
// CHECK-DAG: #[[$MIX:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1)>
// CHECK-LABEL: func @norm_project
// CHECK-SAME: (%[[X:.*]]: tensor<?x4x64xbf16>, %[[FN:.*]]: tensor<24x256xf32>)
// CHECK:       %[[SQ:.*]] = linalg.generic {indexing_maps = [#[[$XSQ]], #[[$TOK]]], iterator_types = ["parallel", "reduction", "reduction"]}
// CHECK-SAME:    ins(%[[X]] : tensor<?x4x64xbf16>)
// CHECK:         %[[V:.*]] = arith.extf %{{.*}} : bf16 to f32
// CHECK:         %[[V2:.*]] = arith.mulf %[[V]], %[[V]] : f32
// CHECK:         arith.addf %{{.*}}, %[[V2]] : f32
// The same sum of the squares of 2^-96 v: finite where the plain one overflows.
// CHECK:       %[[SQS:.*]] = linalg.generic {indexing_maps = [#[[$XSQ]], #[[$TOK]]], iterator_types = ["parallel", "reduction", "reduction"]}
// CHECK-SAME:    ins(%[[X]] : tensor<?x4x64xbf16>)
// CHECK:         %[[W:.*]] = arith.extf %{{.*}} : bf16 to f32
// CHECK:         %[[S96:.*]] = arith.constant 1.26217745E-29 : f32
// CHECK:         %[[WS:.*]] = arith.mulf %[[W]], %[[S96]] : f32
// CHECK:         %[[WS2:.*]] = arith.mulf %[[WS]], %[[WS]] : f32
// CHECK:         arith.addf %{{.*}}, %[[WS2]] : f32
// CHECK:       %[[FN3:.*]] = tensor.expand_shape %[[FN]] {{\[\[}}0], [1, 2]] output_shape [24, 4, 64] : tensor<24x256xf32> into tensor<24x4x64xf32>
// CHECK:       %[[DOT:.*]] = linalg.generic {indexing_maps = [#[[$XDOT]], #[[$FN]], #[[$MIX]]], iterator_types = ["parallel", "parallel", "reduction", "reduction"]}
// CHECK-SAME:    ins(%[[X]], %[[FN3]] : tensor<?x4x64xbf16>, tensor<24x4x64xf32>) outs(%{{.*}} : tensor<?x24xf32>)
// CHECK:       linalg.generic
// CHECK-SAME:    ins(%[[DOT]], %[[SQ]], %[[SQS]] : tensor<?x24xf32>, tensor<?xf32>, tensor<?xf32>)
// CHECK:         ^bb0(%{{.*}}: f32, %[[S:.*]]: f32, %[[SS:.*]]: f32, %{{.*}}: f32):
// CHECK:         %[[K:.*]] = arith.constant 2.560000e+02 : f32
// CHECK:         %[[MEAN:.*]] = arith.divf %[[S]], %[[K]] : f32
// CHECK:         %[[EPS:.*]] = arith.constant 9.99999997E-7 : f32
// CHECK:         %[[SHIFT:.*]] = arith.addf %[[MEAN]], %[[EPS]] : f32
// CHECK:         %[[R:.*]] = math.rsqrt %[[SHIFT]] : f32
// CHECK:         %[[MS:.*]] = arith.divf %[[SS]], %[[K]] : f32
// CHECK:         %[[RS:.*]] = math.rsqrt %[[MS]] : f32
// CHECK:         %[[RESCUED:.*]] = arith.mulf %{{.*}}, %[[RS]] : f32
// CHECK:         %[[INF:.*]] = arith.constant 0x7F800000 : f32
// CHECK:         %[[OVER:.*]] = arith.cmpf oeq, %[[S]], %[[INF]] : f32
// CHECK:         %[[RR:.*]] = arith.select %[[OVER]], %[[RESCUED]], %[[R]] : f32
// CHECK:         arith.mulf %{{.*}}, %[[RR]] : f32
func.func @norm_project(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>) -> tensor<?x24xf32> {
  %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %mix : tensor<?x24xf32>
}

// -----

// Each result reads its block of the M mixes at offset + i (pre 0, post n) or
// offset + i*n + j (res 2n), scaled by its scale entry, plus the bias.
// CHECK-LABEL: func @split_mixes
// CHECK-SAME: (%[[MIX:.*]]: tensor<?x24xf32>, %[[SCALE:.*]]: tensor<3xf32>, %[[BASE:.*]]: tensor<24xf32>)
// CHECK:       %[[S0:.*]] = tensor.extract %[[SCALE]][%c0{{.*}}] : tensor<3xf32>
// CHECK:       %[[PRE:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<?x4xf32>)
// CHECK:         %[[I:.*]] = linalg.index 1 : index
// CHECK:         %[[P0:.*]] = arith.addi %[[I]], %c0{{.*}} : index
// CHECK:         %[[M:.*]] = tensor.extract %[[MIX]][%{{.*}}, %[[P0]]] : tensor<?x24xf32>
// CHECK:         %[[B:.*]] = tensor.extract %[[BASE]][%[[P0]]] : tensor<24xf32>
// CHECK:         %[[MS:.*]] = arith.mulf %[[M]], %[[S0]] : f32
// CHECK:         %[[A:.*]] = arith.addf %[[MS]], %[[B]] : f32
// CHECK:         %[[NA:.*]] = arith.negf %[[A]] : f32
// CHECK:         math.exp %[[NA]] : f32
// CHECK:         %[[SIG:.*]] = arith.divf
// CHECK:         arith.constant 9.99999997E-7 : f32
// CHECK:         arith.addf %[[SIG]], %{{.*}} : f32
// CHECK:       %[[S1:.*]] = tensor.extract %[[SCALE]][%c1{{.*}}] : tensor<3xf32>
// CHECK:       %[[POST:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<?x4xf32>)
// CHECK:         arith.addi %{{.*}}, %c4{{.*}} : index
// CHECK:         arith.mulf %{{.*}}, %[[S1]] : f32
// CHECK:         arith.constant 1.500000e+00 : f32
// CHECK:       %[[S2:.*]] = tensor.extract %[[SCALE]][%c2{{.*}}] : tensor<3xf32>
// CHECK:       %[[LOGITS:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<?x4x4xf32>)
// CHECK:         %[[ROW:.*]] = arith.muli %{{.*}}, %c4{{.*}} : index
// CHECK:         %[[RJ:.*]] = arith.addi %[[ROW]], %{{.*}} : index
// CHECK:         arith.addi %[[RJ]], %c8{{.*}} : index
// CHECK:         arith.mulf %{{.*}}, %[[S2]] : f32
// CHECK-NOT:     math.exp
// CHECK:       return %[[PRE]], %[[POST]], %[[LOGITS]]
func.func @split_mixes(%mix: tensor<?x24xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>) -> (tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>) {
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base {post_mult = 1.5 : f32} : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  return %pre, %post, %l : tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
}

// -----

// The spec's generic-form example. Softmax (row max, exp(l - max), row sum,
// e / sum + eps), one column normalisation, then an scf.for over the remaining
// 19 (row, column) pairs; every normalisation divides by (sum + eps).
// CHECK-DAG: #[[$P:.*]] = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
// CHECK-DAG: #[[$ROW:.*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-DAG: #[[$COL:.*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
// CHECK-LABEL: func @sinkhorn
// CHECK:       %[[NEGINF:.*]] = arith.constant 0xFF800000 : f32
// CHECK:       %[[MAX:.*]] = linalg.generic {indexing_maps = [#[[$P]], #[[$ROW]]], iterator_types = ["parallel", "parallel", "reduction"]}
// CHECK:         arith.maximumf
// CHECK:       %[[EXP:.*]] = linalg.generic {indexing_maps = [#[[$P]], #[[$ROW]], #[[$P]]]
// CHECK-SAME:    ins(%{{.*}}, %[[MAX]] :
// CHECK:         %[[D:.*]] = arith.subf
// CHECK:         math.exp %[[D]]
// CHECK:       %[[RSUM:.*]] = linalg.generic {indexing_maps = [#[[$P]], #[[$ROW]]], iterator_types = ["parallel", "parallel", "reduction"]}
// CHECK-SAME:    ins(%[[EXP]] :
// CHECK:       %[[P0:.*]] = linalg.generic
// CHECK-SAME:    ins(%[[EXP]], %[[RSUM]] :
// CHECK:         %[[Q:.*]] = arith.divf
// CHECK:         arith.addf %[[Q]], %{{.*}} : f32
// CHECK:       %[[CSUM:.*]] = linalg.generic {indexing_maps = [#[[$P]], #[[$COL]]], iterator_types = ["parallel", "reduction", "parallel"]}
// CHECK-SAME:    ins(%[[P0]] :
// CHECK:       %[[P1:.*]] = linalg.generic {indexing_maps = [#[[$P]], #[[$COL]], #[[$P]]]
// CHECK-SAME:    ins(%[[P0]], %[[CSUM]] :
// CHECK:         %[[DEN:.*]] = arith.addf %{{.*}}, %{{.*}} : f32
// CHECK:         arith.divf %{{.*}}, %[[DEN]] : f32
// CHECK:       %[[C20:.*]] = arith.constant 20 : index
// CHECK:       %[[LOOP:.*]] = scf.for %{{.*}} = %c1{{.*}} to %[[C20]] step %{{.*}} iter_args(%[[IT:.*]] = %[[P1]]) -> (tensor<8x4x4xf32>)
// CHECK:         iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[IT]] :
// CHECK:         iterator_types = ["parallel", "reduction", "parallel"]}
// CHECK:         scf.yield
// CHECK:       return %[[LOOP]]
func.func @sinkhorn(%l: tensor<8x4x4xf32>) -> tensor<8x4x4xf32> {
  %c = "mhc.sinkhorn"(%l) <{eps = 1.0e-06 : f32, iterations = 20 : i64}> : (tensor<8x4x4xf32>) -> tensor<8x4x4xf32>
  return %c : tensor<8x4x4xf32>
}

// -----

// One iteration: no loop.
// CHECK-LABEL: func @sinkhorn_once
// CHECK-NOT:   scf.for
// CHECK:       arith.constant 1.000000e-03 : f32
// CHECK-NOT:   scf.for
// CHECK:       return
func.func @sinkhorn_once(%l: tensor<?x2x2xf32>) -> tensor<?x2x2xf32> {
  %c = mhc.sinkhorn %l {iterations = 1 : i64, eps = 1.0e-3 : f32} : tensor<?x2x2xf32>
  return %c : tensor<?x2x2xf32>
}

// -----

// CHECK-DAG: #[[$X:.*]] = affine_map<(d0, d1, d2) -> (d0, d2, d1)>
// CHECK-DAG: #[[$PRE:.*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
// CHECK-DAG: #[[$U:.*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-LABEL: func @pre_apply
// CHECK-SAME: (%[[X:.*]]: tensor<?x4x64xbf16>, %[[PRE:.*]]: tensor<?x4xf32>)
// CHECK:       %[[T:.*]] = tensor.dim %[[X]], %c0
// CHECK:       tensor.empty(%[[T]]) : tensor<?x64xf32>
// CHECK:       %[[ACC:.*]] = linalg.generic {indexing_maps = [#[[$X]], #[[$PRE]], #[[$U]]], iterator_types = ["parallel", "parallel", "reduction"]}
// CHECK-SAME:    ins(%[[X]], %[[PRE]] : tensor<?x4x64xbf16>, tensor<?x4xf32>) outs(%{{.*}} : tensor<?x64xf32>)
// CHECK:         %[[W:.*]] = arith.extf %{{.*}} : bf16 to f32
// CHECK:         arith.mulf %{{.*}}, %[[W]] : f32
// CHECK:       linalg.generic
// CHECK-SAME:    ins(%[[ACC]] : tensor<?x64xf32>) outs(%{{.*}} : tensor<?x64xbf16>)
// CHECK:         arith.truncf %{{.*}} : f32 to bf16
func.func @pre_apply(%x: tensor<?x4x64xbf16>, %pre: tensor<?x4xf32>) -> tensor<?x64xbf16> {
  %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  return %u : tensor<?x64xbf16>
}

// -----

// f16 activations: comb-weighted stream mix in f32, then post * y + mix and
// one truncf in the same generic.
// CHECK-DAG: #[[$COMB:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d3, d1)>
// CHECK-DAG: #[[$XS:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d3, d2)>
// CHECK-DAG: #[[$ACC:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>
// CHECK-DAG: #[[$POST:.*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-DAG: #[[$Y:.*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
// CHECK-DAG: #[[$OUT:.*]] = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
// CHECK-LABEL: func @post_res
// CHECK-SAME: (%[[Y:.*]]: tensor<?x64xf16>, %[[X:.*]]: tensor<?x4x64xf16>, %[[POST:.*]]: tensor<?x4xf32>, %[[COMB:.*]]: tensor<?x4x4xf32>)
// CHECK:       %[[MIXED:.*]] = linalg.generic {indexing_maps = [#[[$COMB]], #[[$XS]], #[[$ACC]]], iterator_types = ["parallel", "parallel", "parallel", "reduction"]}
// CHECK-SAME:    ins(%[[COMB]], %[[X]] : tensor<?x4x4xf32>, tensor<?x4x64xf16>) outs(%{{.*}} : tensor<?x4x64xf32>)
// CHECK:       linalg.generic {indexing_maps = [#[[$POST]], #[[$Y]], #[[$OUT]], #[[$OUT]]], iterator_types = ["parallel", "parallel", "parallel"]}
// CHECK-SAME:    ins(%[[POST]], %[[Y]], %[[MIXED]] : tensor<?x4xf32>, tensor<?x64xf16>, tensor<?x4x64xf32>) outs(%{{.*}} : tensor<?x4x64xf16>)
// CHECK:         %[[YW:.*]] = arith.extf %{{.*}} : f16 to f32
// CHECK:         %[[PY:.*]] = arith.mulf %{{.*}}, %[[YW]] : f32
// CHECK:         %[[S:.*]] = arith.addf %[[PY]], %{{.*}} : f32
// CHECK:         arith.truncf %[[S]] : f32 to f16
func.func @post_res(%y: tensor<?x64xf16>, %x: tensor<?x4x64xf16>, %post: tensor<?x4xf32>, %comb: tensor<?x4x4xf32>) -> tensor<?x4x64xf16> {
  %xn = mhc.post_res %y, %x, %post, %comb : tensor<?x64xf16>, tensor<?x4x64xf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xf16>
  return %xn : tensor<?x4x64xf16>
}

// -----

// f32 activations need no conversions at all.
// CHECK-LABEL: func @pre_apply_f32
// CHECK-NOT:   arith.extf
// CHECK-NOT:   arith.truncf
// CHECK:       return
func.func @pre_apply_f32(%x: tensor<5x2x13xf32>, %pre: tensor<5x2xf32>) -> tensor<5x13xf32> {
  %u = mhc.pre_apply %x, %pre : tensor<5x2x13xf32>, tensor<5x2xf32> -> tensor<5x13xf32>
  return %u : tensor<5x13xf32>
}

// -----

// mhc.fused groups are inlined: their results are the yielded values.
// CHECK-LABEL: func @fused
// CHECK-NOT:   mhc.
// CHECK:       %[[ACC:.*]] = linalg.generic
// CHECK:       %[[U:.*]] = linalg.generic
// CHECK-SAME:    ins(%[[ACC]] : tensor<8x64xf32>)
// CHECK:       return %[[U]] : tensor<8x64xbf16>
func.func @fused(%x: tensor<8x4x64xbf16>, %pre: tensor<8x4xf32>) -> tensor<8x64xbf16> {
  %u = mhc.fused "pre" -> tensor<8x64xbf16> {
    %v = mhc.pre_apply %x, %pre : tensor<8x4x64xbf16>, tensor<8x4xf32> -> tensor<8x64xbf16>
    mhc.yield %v : tensor<8x64xbf16>
  }
  return %u : tensor<8x64xbf16>
}

// -----

// Operands and results may disagree on which token dims are static; each op's
// result keeps its declared type.
// CHECK-LABEL: func @mixed_staticness
// CHECK:       %[[U:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<6x13xbf16>) {
// CHECK:       %[[M:.*]] = linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %{{.*}} : tensor<6x24xf32>, tensor<6xf32>, tensor<6xf32>) outs(%{{.*}} : tensor<6x24xf32>) {
// CHECK:       %[[H:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<?x13xbf16>) {
// CHECK:       return %[[U]], %[[M]], %[[H]] : tensor<6x13xbf16>, tensor<6x24xf32>, tensor<?x13xbf16>
func.func @mixed_staticness(%x: tensor<?x4x13xbf16>, %pre: tensor<6x4xf32>, %fn: tensor<24x52xf32>, %xs: tensor<6x4x13xbf16>) -> (tensor<6x13xbf16>, tensor<6x24xf32>, tensor<?x13xbf16>) {
  %u = mhc.pre_apply %x, %pre : tensor<?x4x13xbf16>, tensor<6x4xf32> -> tensor<6x13xbf16>
  %m = mhc.norm_project %x, %fn : tensor<?x4x13xbf16>, tensor<24x52xf32> -> tensor<6x24xf32>
  %h = mhc.collapse %xs : tensor<6x4x13xbf16> -> tensor<?x13xbf16>
  return %u, %m, %h : tensor<6x13xbf16>, tensor<6x24xf32>, tensor<?x13xbf16>
}

// -----

// rms_norm: the sum of squares over C (and its overflow-free twin, scaled by
// 2^-96), the factor r per token, then u * r * weight rounded once; the
// weight is read through a shared map (d1 -> C).
// CHECK-DAG: #[[$UC:.*]] = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-DAG: #[[$TOK:.*]] = affine_map<(d0, d1) -> (d0)>
// CHECK-DAG: #[[$WC:.*]] = affine_map<(d0, d1) -> (d1)>
// CHECK-LABEL: func @rms_norm
// CHECK-SAME: (%[[U:.*]]: tensor<?x64xbf16>, %[[W:.*]]: tensor<64xbf16>)
// CHECK:       %[[SQ:.*]] = linalg.generic {indexing_maps = [#[[$UC]], #[[$TOK]]], iterator_types = ["parallel", "reduction"]}
// CHECK-SAME:    ins(%[[U]] : tensor<?x64xbf16>) outs(%{{.*}} : tensor<?xf32>)
// CHECK:       %[[SC:.*]] = linalg.generic {indexing_maps = [#[[$UC]], #[[$TOK]]], iterator_types = ["parallel", "reduction"]}
// CHECK:         arith.constant 1.26217745E-29 : f32
// CHECK:       %[[R:.*]] = linalg.generic
// CHECK-SAME:    ins(%[[SQ]], %[[SC]] : tensor<?xf32>, tensor<?xf32>)
// CHECK:         arith.constant 6.400000e+01 : f32
// CHECK:         math.rsqrt
// CHECK:         arith.select
// CHECK:       linalg.generic {indexing_maps = [#[[$UC]], #[[$TOK]], #[[$WC]], #[[$UC]]], iterator_types = ["parallel", "parallel"]}
// CHECK-SAME:    ins(%[[U]], %[[R]], %[[W]] : tensor<?x64xbf16>, tensor<?xf32>, tensor<64xbf16>) outs(%{{.*}} : tensor<?x64xbf16>)
// CHECK:         arith.mulf
// CHECK:         arith.mulf
// CHECK:         arith.truncf %{{.*}} : f32 to bf16
func.func @rms_norm(%u: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> tensor<?x64xbf16> {
  %o = mhc.rms_norm %u, %w : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  return %o : tensor<?x64xbf16>
}
