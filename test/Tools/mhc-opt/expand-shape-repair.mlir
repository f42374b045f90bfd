// MLIR 22's verifier accepts a tensor.expand_shape whose output_shape gives a
// static size (4) for a dim its result type leaves dynamic (1x?x16), and its
// canonicalizer then crashes on it (upstream mlir-opt --canonicalize too).
// mhc's pipelines and --mhc-hyperconnect rewrite such ops with the size as a
// value before anything canonicalizes, so they never reach the crash.
// RUN: mhc-opt %s --convert-mhc-to-linalg | FileCheck %s --check-prefix=REPAIRED
// RUN: mhc-opt %s --convert-mhc-to-gpu | FileCheck %s --check-prefix=REPAIRED
// RUN: mhc-opt %s --mhc-cpu-pipeline | FileCheck %s --check-prefix=LOWERED
// RUN: mhc-opt %s --mhc-hyperconnect --canonicalize | FileCheck %s --check-prefix=HC
// RUN: mhc-opt %s --mhc-hyperconnect="params=constants" --mhc-cpu-pipeline | FileCheck %s --check-prefix=LOWERED

// REPAIRED:      %[[C4:.*]] = arith.constant 4 : index
// REPAIRED:      tensor.expand_shape %{{.*}} {{\[}}[0, 1], [2]] output_shape [1, %[[C4]], 16] : tensor<?x16xf32> into tensor<1x?x16xf32>
// LOWERED:       llvm.func @reshaped
// HC:            mhc.post_res
func.func @reshaped(%h: tensor<4x16xf32>) -> tensor<1x4x16xf32> {
  %y1 = math.tanh %h : tensor<4x16xf32>
  %h1 = arith.addf %h, %y1 : tensor<4x16xf32>
  %d = tensor.cast %h1 : tensor<4x16xf32> to tensor<?x16xf32>
  %e = tensor.expand_shape %d [[0, 1], [2]] output_shape [1, 4, 16] : tensor<?x16xf32> into tensor<1x?x16xf32>
  %s = tensor.cast %e : tensor<1x?x16xf32> to tensor<1x4x16xf32>
  %y2 = math.sin %s : tensor<1x4x16xf32>
  %h2 = arith.addf %y2, %s : tensor<1x4x16xf32>
  return %h2 : tensor<1x4x16xf32>
}
