// --mhc-split-shared-destinations (a step of --mhc-cpu-pipeline): every user
// of a shared tensor.empty or linalg.fill gets its own copy, so that
// one-shot-bufferize's alias sets stay small.
// RUN: mhc-opt %s --mhc-split-shared-destinations | FileCheck %s

// CHECK-LABEL: func.func @shared
// CHECK:         %[[Z:.*]] = arith.constant 0.0
// CHECK:         %[[E0:.*]] = tensor.empty() : tensor<4x4xf32>
// CHECK:         %[[E1:.*]] = tensor.empty() : tensor<4x4xf32>
// CHECK:         %[[F1:.*]] = linalg.fill ins(%[[Z]] : f32) outs(%[[E1]] : tensor<4x4xf32>)
// CHECK:         %[[F0:.*]] = linalg.fill ins(%[[Z]] : f32) outs(%[[E0]] : tensor<4x4xf32>)
// CHECK:         linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<4x4xf32>, tensor<4x4xf32>) outs(%[[F0]] : tensor<4x4xf32>)
// CHECK:         linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<4x4xf32>, tensor<4x4xf32>) outs(%[[F1]] : tensor<4x4xf32>)
// CHECK:         %[[E2:.*]] = tensor.empty() : tensor<4x4xf32>
// CHECK:         linalg.exp ins(%{{.*}} : tensor<4x4xf32>) outs(%[[E2]] : tensor<4x4xf32>)
// CHECK-NOT:     tensor.empty
// CHECK-NOT:     linalg.fill
func.func @shared(%a: tensor<4x4xf32>, %b: tensor<4x4xf32>) -> (tensor<4x4xf32>, tensor<4x4xf32>, tensor<4x4xf32>) {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<4x4xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<4x4xf32>) -> tensor<4x4xf32>
  %m1 = linalg.matmul ins(%a, %b : tensor<4x4xf32>, tensor<4x4xf32>) outs(%f : tensor<4x4xf32>) -> tensor<4x4xf32>
  %m2 = linalg.matmul ins(%b, %a : tensor<4x4xf32>, tensor<4x4xf32>) outs(%f : tensor<4x4xf32>) -> tensor<4x4xf32>
  %x = linalg.exp ins(%a : tensor<4x4xf32>) outs(%e : tensor<4x4xf32>) -> tensor<4x4xf32>
  return %m1, %m2, %x : tensor<4x4xf32>, tensor<4x4xf32>, tensor<4x4xf32>
}
