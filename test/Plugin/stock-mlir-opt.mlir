// Debian's stock mlir-opt (22) with the plugin: mhc IR parses, prints and
// verifies (the dialect plugin), and the mhc pipelines run from
// --pass-pipeline (the pass plugin); the CPU result runs under mlir-runner.
// every-pass.py checks every pass against mhc-opt.
//
// RUN: mlir-opt %s --load-dialect-plugin=%mhc_plugin --split-input-file --verify-diagnostics \
// RUN:   | mlir-opt --load-dialect-plugin=%mhc_plugin | FileCheck %s --check-prefix=PARSE
// RUN: mlir-opt %s --load-dialect-plugin=%mhc_plugin --load-pass-plugin=%mhc_plugin \
// RUN:   --split-input-file --verify-diagnostics \
// RUN:   --pass-pipeline="builtin.module(func.func(mhc-fuse), mhc-cpu-pipeline)" \
// RUN:   | mlir-runner -e main --entry-point-result=void --shared-libs=%runner_utils,%c_runner_utils \
// RUN:   | FileCheck %s --check-prefix=OUT
// Without the plugin the dialect is unknown.
// RUN: not mlir-opt %s --split-input-file 2>&1 | FileCheck %s --check-prefix=NOPLUGIN
// NOPLUGIN: Dialect `mhc' not found for custom op 'mhc.sinkhorn'

// PARSE-LABEL: func.func @main
// PARSE: mhc.sinkhorn %{{.*}} {iterations = 30 : i64} : tensor<1x2x2xf32>
// PARSE: mhc.collapse
func.func private @printMemrefF32(memref<*xf32>)
func.func @main() {
  %logits = arith.constant dense<[[[0.0, 1.0], [2.0, 0.5]]]> : tensor<1x2x2xf32>
  %comb = mhc.sinkhorn %logits {iterations = 30} : tensor<1x2x2xf32>
  // Rows and columns of a doubly stochastic matrix sum to 1: collapse sums
  // the two rows (streams).
  %sum = mhc.collapse %comb : tensor<1x2x2xf32> -> tensor<1x2xf32>
  %buf = bufferization.to_buffer %sum : tensor<1x2xf32> to memref<1x2xf32>
  %u = memref.cast %buf : memref<1x2xf32> to memref<*xf32>
  call @printMemrefF32(%u) : (memref<*xf32>) -> ()
  return
}
// OUT: {{\[}}[0.99{{[0-9]*}}, 0.99{{[0-9]*}}]]

// -----

func.func @wrong_stream_dim(%h: tensor<8x64xbf16>) {
  // expected-error @+1 {{expects the result's stream dim (= 'streams') to be 4, got 2}}
  %x = mhc.expand %h, streams = 4 : tensor<8x64xbf16> -> tensor<8x2x64xbf16>
  return
}
