// Bad input gives a located diagnostic and a non-zero exit, never a crash.
// RUN: not mhc-opt %s -split-input-file 2>&1 | FileCheck %s

// A verifier error.
// CHECK: bad-input.mlir:[[# @LINE + 2]]:8: error: 'mhc.sinkhorn' op expects 'iterations' >= 1, got -3
func.func @verifier(%l: tensor<8x4x4xf32>) -> tensor<8x4x4xf32> {
  %c = mhc.sinkhorn %l {iterations = -3 : i64} : tensor<8x4x4xf32>
  return %c : tensor<8x4x4xf32>
}

// -----

// A syntax error inside an mhc op.
// CHECK: bad-input.mlir:[[# @LINE + 2]]:{{[0-9]+}}: error: expected ','
func.func @syntax(%h: tensor<8x64xbf16>) -> tensor<8x4x64xbf16> {
  %x = mhc.expand %h streams = 4 : tensor<8x64xbf16> -> tensor<8x4x64xbf16>
  return %x : tensor<8x4x64xbf16>
}

// -----

// An unknown op of the dialect.
// CHECK: bad-input.mlir:[[# @LINE + 2]]:{{[0-9]+}}: error: custom op 'mhc.shrink' is unknown
func.func @unknown(%h: tensor<8x64xbf16>) {
  %x = mhc.shrink %h : tensor<8x64xbf16>
  return
}
