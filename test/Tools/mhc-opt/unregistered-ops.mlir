// Ops of unregistered dialects (--allow-unregistered-dialect) have no
// dialect object: every mhc pass leaves them alone instead of crashing, and
// the pipelines stop with a located error where they cannot lower them.
// RUN: mhc-opt %s --allow-unregistered-dialect --convert-mhc-to-linalg | FileCheck %s --check-prefix=KEEP
// RUN: mhc-opt %s --allow-unregistered-dialect --convert-mhc-to-gpu | FileCheck %s --check-prefix=KEEP
// RUN: mhc-opt %s --allow-unregistered-dialect --mhc-fuse --mhc-select-schedule | FileCheck %s --check-prefix=KEEP
// RUN: not mhc-opt %s --allow-unregistered-dialect --mhc-generate-backward 2>&1 | FileCheck %s --check-prefix=BWD
// RUN: mhc-opt %s --allow-unregistered-dialect --mhc-hyperconnect | FileCheck %s --check-prefix=KEEP
// RUN: mhc-opt %s --allow-unregistered-dialect --canonicalize | FileCheck %s --check-prefix=KEEP
// RUN: not mhc-opt %s --allow-unregistered-dialect --mhc-cpu-pipeline 2>&1 | FileCheck %s --check-prefix=STOP
// RUN: not mhc-opt %s --allow-unregistered-dialect --mhc-gpu-pipeline="format=isa" 2>&1 | FileCheck %s --check-prefix=STOP

// KEEP: "foo.bar"
// STOP: unregistered-ops.mlir:[[# @LINE + 4]]:8: error: op was not bufferized
// BWD: unregistered-ops.mlir:[[# @LINE + 3]]:8: error: mhc-generate-backward: cannot differentiate 'foo.bar'
func.func @f(%x: tensor<8x4x64xf32>) -> tensor<8x64xf32> {
  %h = mhc.collapse %x : tensor<8x4x64xf32> -> tensor<8x64xf32>
  %r = "foo.bar"(%h) : (tensor<8x64xf32>) -> tensor<8x64xf32>
  return %r : tensor<8x64xf32>
}
