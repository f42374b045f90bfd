// --mhc-outline-ops (a step of --mhc-cpu-pipeline): each mhc op becomes a
// call of a private function shared by the ops of the same kind, attributes
// and types, so that a deep model's mhc ops are lowered once per kind.
// RUN: mhc-opt %s -split-input-file --mhc-outline-ops | FileCheck %s

// CHECK-LABEL: func.func @layers
// CHECK:         %[[C0:.*]] = call @mhc_sinkhorn(%{{.*}}) : (tensor<8x4x4xf32>) -> tensor<8x4x4xf32>
// CHECK:         %[[C1:.*]] = call @mhc_sinkhorn(%[[C0]]) : (tensor<8x4x4xf32>) -> tensor<8x4x4xf32>
// CHECK:         %[[C2:.*]] = call @mhc_sinkhorn_0(%[[C1]]) : (tensor<8x4x4xf32>) -> tensor<8x4x4xf32>
// CHECK:         %[[C3:.*]] = call @mhc_sinkhorn_1(%{{.*}}) : (tensor<?x4x4xf32>) -> tensor<?x4x4xf32>
// CHECK:         %[[U:.*]] = call @mhc_pre_apply(%{{.*}}, %{{.*}}) : (tensor<8x4x16xbf16>, tensor<8x4xf32>) -> tensor<8x16xbf16>
// CHECK:         return %[[C2]], %[[C3]], %[[U]]
// CHECK:       func.func private @mhc_sinkhorn(%[[L:.*]]: tensor<8x4x4xf32>) -> tensor<8x4x4xf32>
// CHECK-NEXT:    %[[S:.*]] = mhc.sinkhorn %[[L]] : tensor<8x4x4xf32>
// CHECK-NEXT:    return %[[S]]
// CHECK:       func.func private @mhc_sinkhorn_0(
// CHECK-NEXT:    mhc.sinkhorn %{{.*}} {iterations = 5 : i64} : tensor<8x4x4xf32>
// CHECK:       func.func private @mhc_sinkhorn_1(
// CHECK:       func.func private @mhc_pre_apply(
// CHECK-NOT:   func.func
func.func @layers(%l: tensor<8x4x4xf32>, %ld: tensor<?x4x4xf32>, %x: tensor<8x4x16xbf16>, %pre: tensor<8x4xf32>)
    -> (tensor<8x4x4xf32>, tensor<?x4x4xf32>, tensor<8x16xbf16>) {
  %c0 = mhc.sinkhorn %l : tensor<8x4x4xf32>
  %c1 = mhc.sinkhorn %c0 : tensor<8x4x4xf32>
  %c2 = mhc.sinkhorn %c1 {iterations = 5 : i64} : tensor<8x4x4xf32>
  %c3 = mhc.sinkhorn %ld : tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<8x4x16xbf16>, tensor<8x4xf32> -> tensor<8x16xbf16>
  return %c2, %c3, %u : tensor<8x4x4xf32>, tensor<?x4x4xf32>, tensor<8x16xbf16>
}

// -----

// The ops of an mhc.fused group stay in it (the lowering inlines the group).
// CHECK-LABEL: func.func @fused
// CHECK:         mhc.fused "pre"
// CHECK-NEXT:      mhc.sinkhorn
// CHECK-NEXT:      mhc.yield
// CHECK-NOT:   func.func private
func.func @fused(%l: tensor<8x4x4xf32>) -> tensor<8x4x4xf32> {
  %r = mhc.fused "pre" -> tensor<8x4x4xf32> {
    %c = mhc.sinkhorn %l : tensor<8x4x4xf32>
    mhc.yield %c : tensor<8x4x4xf32>
  }
  return %r : tensor<8x4x4xf32>
}
