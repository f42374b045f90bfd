// Matching and rewriting of --mhc-hyperconnect, per matched form and option.
// Every run also checks the remarks (remarks=true + -verify-diagnostics):
// the skip reasons do not depend on the mode.
//
// RUN: mhc-opt %s -split-input-file -verify-diagnostics --mlir-print-op-on-diagnostic=false \
// RUN:   --mhc-hyperconnect="remarks=true" | FileCheck %s
// RUN: mhc-opt %s -split-input-file -verify-diagnostics --mlir-print-op-on-diagnostic=false \
// RUN:   --mhc-hyperconnect="remarks=true mode=hc init=identity params=constants" \
// RUN:   | FileCheck %s --check-prefix=HC
// RUN: mhc-opt %s -split-input-file -verify-diagnostics --mlir-print-op-on-diagnostic=false \
// RUN:   --mhc-hyperconnect="remarks=true mode=hc streams=2" | FileCheck %s --check-prefix=HCARGS
// RUN: mhc-opt %s -split-input-file -verify-diagnostics --mlir-print-op-on-diagnostic=false \
// RUN:   --mhc-hyperconnect="remarks=true mode=static-hc streams=2 params=constants" \
// RUN:   | FileCheck %s --check-prefix=STATIC
// RUN: mhc-opt %s -split-input-file -verify-diagnostics --mlir-print-op-on-diagnostic=false \
// RUN:   --mhc-hyperconnect="remarks=true streams=2 iterations=5 params=constants" \
// RUN:   | FileCheck %s --check-prefix=CONST
// RUN: mhc-opt %s -split-input-file -verify-diagnostics --mlir-print-op-on-diagnostic=false \
// RUN:   --mhc-hyperconnect="remarks=true exit=learned" | FileCheck %s --check-prefix=LEARNED

// Two residual blocks in arith form; the second has its operands swapped.
// CHECK-LABEL: func.func @arith_chain
// CHECK-SAME: %[[H:[a-z0-9]+]]: tensor<8x16xf32>, %[[W:[a-z0-9]+]]: tensor<16x16xf32>
// CHECK-SAME: %[[FN0:[a-z0-9]+]]: tensor<24x64xf32> {mhc.param = "layer0.fn"}
// CHECK-SAME: %[[S0:[a-z0-9]+]]: tensor<3xf32> {mhc.param = "layer0.scale"}
// CHECK-SAME: %[[B0:[a-z0-9]+]]: tensor<24xf32> {mhc.param = "layer0.base"}
// CHECK-SAME: %[[FN1:[a-z0-9]+]]: tensor<24x64xf32> {mhc.param = "layer1.fn"}
// CHECK-SAME: %[[S1:[a-z0-9]+]]: tensor<3xf32> {mhc.param = "layer1.scale"}
// CHECK-SAME: %[[B1:[a-z0-9]+]]: tensor<24xf32> {mhc.param = "layer1.base"}) -> tensor<8x16xf32>
// CHECK:      %[[X0:.*]] = mhc.expand %[[H]], streams = 4 : tensor<8x16xf32> -> tensor<8x4x16xf32>
// CHECK:      %[[MIX0:.*]] = mhc.norm_project %[[X0]], %[[FN0]] : tensor<8x4x16xf32>, tensor<24x64xf32> -> tensor<8x24xf32>
// CHECK:      %[[PRE0:.*]], %[[POST0:.*]], %[[L0:.*]] = mhc.split_mixes %[[MIX0]], %[[S0]], %[[B0]]
// CHECK:      %[[C0:.*]] = mhc.sinkhorn %[[L0]] : tensor<8x4x4xf32>
// CHECK:      %[[U0:.*]] = mhc.pre_apply %[[X0]], %[[PRE0]] : tensor<8x4x16xf32>, tensor<8x4xf32> -> tensor<8x16xf32>
// CHECK:      %[[A:.*]] = math.tanh %[[U0]]
// CHECK:      %[[Y0:.*]] = linalg.matmul ins(%[[A]], %[[W]]
// CHECK:      %[[X1:.*]] = mhc.post_res %[[Y0]], %[[X0]], %[[POST0]], %[[C0]]
// CHECK:      %[[MIX1:.*]] = mhc.norm_project %[[X1]], %[[FN1]]
// CHECK:      %[[PRE1:.*]], %[[POST1:.*]], %[[L1:.*]] = mhc.split_mixes %[[MIX1]], %[[S1]], %[[B1]]
// CHECK:      %[[C1:.*]] = mhc.sinkhorn %[[L1]]
// CHECK:      %[[U1:.*]] = mhc.pre_apply %[[X1]], %[[PRE1]]
// CHECK:      %[[B:.*]] = math.tanh %[[U1]]
// CHECK:      %[[Y1:.*]] = linalg.matmul ins(%[[B]], %[[W]]
// CHECK:      %[[X2:.*]] = mhc.post_res %[[Y1]], %[[X1]], %[[POST1]], %[[C1]]
// The exit: the mean of the streams, a pairwise f32 sum times 1/n.
// CHECK:      %[[MEAN:.*]] = linalg.generic {{.*}} ins(%[[X2]], %[[X2]], %[[X2]], %[[X2]] : tensor<8x4x16xf32>, tensor<8x4x16xf32>, tensor<8x4x16xf32>, tensor<8x4x16xf32>) outs(%{{.*}} : tensor<8x16xf32>)
// CHECK-NEXT: ^bb0(%[[S0:.*]]: f32, %[[S1:.*]]: f32, %[[S2:.*]]: f32, %[[S3:.*]]: f32, %{{.*}}: f32):
// CHECK-NEXT:   %[[P01:.*]] = arith.addf %[[S0]], %[[S1]] : f32
// CHECK-NEXT:   %[[P23:.*]] = arith.addf %[[S2]], %[[S3]] : f32
// CHECK-NEXT:   %[[SUM:.*]] = arith.addf %[[P01]], %[[P23]] : f32
// CHECK-NEXT:   %[[QUARTER:.*]] = arith.constant 2.500000e-01 : f32
// CHECK-NEXT:   arith.mulf %[[SUM]], %[[QUARTER]] : f32
// CHECK:      return %[[MEAN]]
// CHECK-NOT:  arith.addf {{.*}} : tensor

// mode=hc: per-stream RMSNorm, tanh, theta f32[n+2, C]; identity init puts
// zeros in theta and the HC identity in base (one-hot pre per layer).
// HC-LABEL: func.func @arith_chain
// HC-DAG:   %[[BASE0:.*]] = arith.constant dense<[1.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 1.000000e+00, 1.000000e+00, 1.000000e+00, 1.000000e+00, 1.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 1.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 1.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 1.000000e+00]> : tensor<24xf32>
// HC-DAG:   %[[BASE1:.*]] = arith.constant dense<[0.000000e+00, 1.000000e+00, 0.000000e+00, 0.000000e+00, 1.000000e+00, {{.*}}]> : tensor<24xf32>
// HC-DAG:   %[[THETA:.*]] = arith.constant dense<0.000000e+00> : tensor<6x16xf32>
// HC-DAG:   arith.constant dense<0.00999999977> : tensor<3xf32>
// HC:       %[[X0:.*]] = mhc.expand
// HC:       linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[X0]] : tensor<8x4x16xf32>)
// HC:       linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "parallel", "reduction"]} ins(%[[X0]], %[[THETA]] : tensor<8x4x16xf32>, tensor<6x16xf32>)
// HC:       %[[PRE:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<8x4xf32>)
// HC:         math.rsqrt
// HC:         math.tanh
// HC:       %[[POST:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<8x4xf32>)
// HC:         math.tanh
// HC:       %[[COMB:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<8x4x4xf32>)
// HC:         math.tanh
// HC:       %[[U:.*]] = mhc.pre_apply %[[X0]], %[[PRE]]
// HC:       mhc.post_res %{{.*}}, %[[X0]], %[[POST]], %[[COMB]]
// HC-NOT:   mhc.sinkhorn
// HC:       linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : tensor<8x4x16xf32>

// HCARGS-LABEL: func.func @arith_chain
// HCARGS-SAME: tensor<4x16xf32> {mhc.param = "layer0.theta"}, %{{.*}}: tensor<3xf32> {mhc.param = "layer0.scale"}, %{{.*}}: tensor<8xf32> {mhc.param = "layer0.base"}
// HCARGS-SAME: tensor<4x16xf32> {mhc.param = "layer1.theta"}
// HCARGS: mhc.expand %{{.*}}, streams = 2

// static-hc: constant mappings, broadcast from base; paper init = mean pre.
// STATIC-LABEL: func.func @arith_chain
// STATIC:     arith.constant dense<[5.000000e-01, 5.000000e-01, 1.000000e+00, 1.000000e+00, 1.000000e+00, 0.000000e+00, 0.000000e+00, 1.000000e+00]> : tensor<8xf32>
// STATIC-NOT: math.tanh %{{.*}} : f32
// STATIC:     mhc.expand %{{.*}}, streams = 2
// STATIC-NOT: mhc.norm_project
// STATIC:     mhc.pre_apply
// STATIC:     mhc.post_res
// STATIC:     mhc.pre_apply
// STATIC:     mhc.post_res
// STATIC:     linalg.generic {{.*}} ins(%{{.*}}, %{{.*}} : tensor<8x2x16xf32>, tensor<8x2x16xf32>)
// STATIC:       arith.constant 5.000000e-01 : f32

// exit=learned: DeepSeek-V4's head mix at the chain's end, computed like pre
// from the chain's own fn f32[n, nC], scale f32[1] and base f32[n]:
// w = sigmoid(scale * (v . fn[i]) * rsqrt(|v|^2 / nC + 1e-6) + base[i]) + 1e-6,
// then the streams' pairwise sum weighted by w.
// LEARNED-LABEL: func.func @arith_chain
// LEARNED-SAME: %[[FN:[a-z0-9]+]]: tensor<4x64xf32> {mhc.param = "exit0.fn"}, %[[SC:[a-z0-9]+]]: tensor<1xf32> {mhc.param = "exit0.scale"}, %[[BA:[a-z0-9]+]]: tensor<4xf32> {mhc.param = "exit0.base"}) -> tensor<8x16xf32>
// LEARNED:      mhc.post_res
// LEARNED:      %[[X2:.*]] = mhc.post_res
// LEARNED:      %[[SQ:.*]] = linalg.generic {{.*}} iterator_types = ["parallel", "reduction", "reduction"]} ins(%[[X2]] : tensor<8x4x16xf32>)
// LEARNED:      %[[PROJ:.*]] = linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction", "reduction"]} ins(%[[X2]], %[[FN]] : tensor<8x4x16xf32>, tensor<4x64xf32>)
// LEARNED:      %[[W:.*]] = linalg.generic {{.*}} ins(%[[SQ]], %[[PROJ]], %[[SC]], %[[BA]] : tensor<8xf32>, tensor<8x4xf32>, tensor<1xf32>, tensor<4xf32>)
// LEARNED:        math.rsqrt
// LEARNED:        math.exp
// LEARNED:      %[[OUT:.*]] = linalg.generic {{.*}} ins(%[[X2]], %[[X2]], %[[X2]], %[[X2]], %[[W]], %[[W]], %[[W]], %[[W]] :
// LEARNED-COUNT-4: arith.mulf
// LEARNED-COUNT-3: arith.addf
// LEARNED:      return %[[OUT]]

// params=constants, Sinkhorn iterations, n = 2: fn is f32[8, 32].
// CONST-LABEL: func.func @arith_chain
// CONST-SAME: (%{{.*}}: tensor<8x16xf32>, %{{.*}}: tensor<16x16xf32>) -> tensor<8x16xf32>
// CONST:      arith.constant dense<{{.*}}> : tensor<8x32xf32>
// CONST:      arith.constant dense<0.00999999977> : tensor<3xf32>
// CONST:      arith.constant dense<[-0.000000e+00, -0.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00, 0.000000e+00]> : tensor<8xf32>
// CONST:      mhc.sinkhorn %{{.*}} {iterations = 5 : i64} : tensor<8x2x2xf32>
// CONST:      mhc.sinkhorn %{{.*}} {iterations = 5 : i64} : tensor<8x2x2xf32>
// expected-remark@+1 {{@arith_chain: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @arith_chain(%h: tensor<8x16xf32>, %w: tensor<16x16xf32>) -> tensor<8x16xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x16xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<8x16xf32>) -> tensor<8x16xf32>
  %a = math.tanh %h : tensor<8x16xf32>
  %y1 = linalg.matmul ins(%a, %w : tensor<8x16xf32>, tensor<16x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  %h1 = arith.addf %h, %y1 : tensor<8x16xf32>
  %b = math.tanh %h1 : tensor<8x16xf32>
  %y2 = linalg.matmul ins(%b, %w : tensor<8x16xf32>, tensor<16x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  %h2 = arith.addf %y2, %h1 : tensor<8x16xf32>
  return %h2 : tensor<8x16xf32>
}

// -----

// linalg.add form, rank-3 stream [B, T, C], the residual second.
// CHECK-LABEL: func.func @linalg_add_chain
// CHECK:       %[[X0:.*]] = mhc.expand %{{.*}}, streams = 4 : tensor<2x3x8xf32> -> tensor<2x3x4x8xf32>
// CHECK:       mhc.norm_project %[[X0]], %{{.*}} : tensor<2x3x4x8xf32>, tensor<24x32xf32> -> tensor<2x3x24xf32>
// CHECK:       mhc.pre_apply %[[X0]]
// CHECK:       %[[X1:.*]] = mhc.post_res %{{.*}}, %[[X0]]
// CHECK:       mhc.pre_apply %[[X1]]
// CHECK:       %[[X2:.*]] = mhc.post_res %{{.*}}, %[[X1]]
// CHECK:       linalg.generic {{.*}} ins(%[[X2]], %[[X2]],
// CHECK-NOT:   linalg.add
// HC-LABEL:    func.func @linalg_add_chain
// HC-COUNT-2:  mhc.post_res
// HC-NOT:      linalg.add
// expected-remark@+1 {{@linalg_add_chain: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @linalg_add_chain(%h: tensor<2x3x8xf32>) -> tensor<2x3x8xf32> {
  %e = tensor.empty() : tensor<2x3x8xf32>
  %y1 = linalg.exp ins(%h : tensor<2x3x8xf32>) outs(%e : tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %h1 = linalg.add ins(%y1, %h : tensor<2x3x8xf32>, tensor<2x3x8xf32>) outs(%e : tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %y2 = linalg.exp ins(%h1 : tensor<2x3x8xf32>) outs(%e : tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %h2 = linalg.add ins(%y2, %h1 : tensor<2x3x8xf32>, tensor<2x3x8xf32>) outs(%e : tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  return %h2 : tensor<2x3x8xf32>
}

// -----

// torch-mlir's form: an elementwise linalg.generic, `a + 1.0 * b` payload.
#id = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-LABEL: func.func @generic_chain
// CHECK:       mhc.expand
// CHECK-NOT:   arith.addf
// CHECK:       mhc.post_res
// CHECK-NOT:   arith.addf
// CHECK:       mhc.post_res
// CHECK-NOT:   arith.addf
// CHECK:       linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : tensor<4x4x16xf32>
// expected-remark@+1 {{@generic_chain: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @generic_chain(%h: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %e = tensor.empty() : tensor<4x16xf32>
  %one = arith.constant 1.0 : f32
  %y1 = math.sin %h : tensor<4x16xf32>
  %h1 = linalg.generic {indexing_maps = [#id, #id, #id], iterator_types = ["parallel", "parallel"]}
      ins(%h, %y1 : tensor<4x16xf32>, tensor<4x16xf32>) outs(%e : tensor<4x16xf32>) {
  ^bb0(%a: f32, %b: f32, %o: f32):
    %s = arith.mulf %b, %one : f32
    %r = arith.addf %a, %s : f32
    linalg.yield %r : f32
  } -> tensor<4x16xf32>
  %y2 = math.sin %h1 : tensor<4x16xf32>
  %h2 = linalg.generic {indexing_maps = [#id, #id, #id], iterator_types = ["parallel", "parallel"]}
      ins(%y2, %h1 : tensor<4x16xf32>, tensor<4x16xf32>) outs(%e : tensor<4x16xf32>) {
  ^bb0(%a: f32, %b: f32, %o: f32):
    %r = arith.addf %b, %a : f32
    linalg.yield %r : f32
  } -> tensor<4x16xf32>
  return %h2 : tensor<4x16xf32>
}

// -----

// tosa.add form.
// CHECK-LABEL: func.func @tosa_chain
// CHECK:       mhc.expand %{{.*}}, streams = 4 : tensor<1x4x16xf32> -> tensor<1x4x4x16xf32>
// CHECK-COUNT-2: mhc.post_res
// CHECK-NOT:   tosa.add
// CHECK:       linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : tensor<1x4x4x16xf32>
// expected-remark@+1 {{@tosa_chain: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @tosa_chain(%h: tensor<1x4x16xf32>) -> tensor<1x4x16xf32> {
  %y1 = tosa.tanh %h : (tensor<1x4x16xf32>) -> tensor<1x4x16xf32>
  %h1 = tosa.add %h, %y1 : (tensor<1x4x16xf32>, tensor<1x4x16xf32>) -> tensor<1x4x16xf32>
  %y2 = tosa.tanh %h1 : (tensor<1x4x16xf32>) -> tensor<1x4x16xf32>
  %h2 = tosa.add %y2, %h1 : (tensor<1x4x16xf32>, tensor<1x4x16xf32>) -> tensor<1x4x16xf32>
  return %h2 : tensor<1x4x16xf32>
}

// -----

// A bf16 stream whose adds run in f32 (extf, add, truncf): the chain links
// through the conversions, which are replayed on the widened stream.
// CHECK-LABEL: func.func @bf16_through_conversions
// CHECK:       %[[X0:.*]] = mhc.expand %{{.*}} : tensor<4x16xbf16> -> tensor<4x4x16xbf16>
// CHECK:       mhc.norm_project %[[X0]]
// CHECK:       %[[U0:.*]] = mhc.pre_apply %[[X0]], %{{.*}} -> tensor<4x16xbf16>
// CHECK:       %[[X0F:.*]] = linalg.generic {{.*}} ins(%[[X0]] : tensor<4x4x16xbf16>)
// CHECK:         arith.extf
// CHECK:       %[[X1F:.*]] = mhc.post_res %{{.*}}, %[[X0F]], {{.*}} -> tensor<4x4x16xf32>
// CHECK:       %[[X1:.*]] = linalg.generic {{.*}} ins(%[[X1F]] : tensor<4x4x16xf32>)
// CHECK:         arith.truncf
// CHECK:       mhc.post_res %{{.*}}, %{{.*}} -> tensor<4x4x16xf32>
// CHECK:       linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : tensor<4x4x16xf32>, {{.*}}) outs(%{{.*}} : tensor<4x16xf32>)
// expected-remark@+1 {{@bf16_through_conversions: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @bf16_through_conversions(%h: tensor<4x16xbf16>) -> tensor<4x16xf32> {
  %a = math.tanh %h : tensor<4x16xbf16>
  %af = arith.extf %a : tensor<4x16xbf16> to tensor<4x16xf32>
  %hf = arith.extf %h : tensor<4x16xbf16> to tensor<4x16xf32>
  %h1f = arith.addf %hf, %af : tensor<4x16xf32>
  %h1 = arith.truncf %h1f : tensor<4x16xf32> to tensor<4x16xbf16>
  %b = math.tanh %h1 : tensor<4x16xbf16>
  %bf = arith.extf %b : tensor<4x16xbf16> to tensor<4x16xf32>
  %h1e = arith.extf %h1 : tensor<4x16xbf16> to tensor<4x16xf32>
  %h2 = arith.addf %bf, %h1e : tensor<4x16xf32>
  return %h2 : tensor<4x16xf32>
}

// -----

// Dynamic token count: coefficient tensors take their sizes from the stream.
// CHECK-LABEL: func.func @dynamic_tokens
// CHECK:       mhc.expand %{{.*}} : tensor<?x16xf32> -> tensor<?x4x16xf32>
// CHECK:       mhc.norm_project {{.*}} -> tensor<?x24xf32>
// CHECK:       linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : tensor<?x4x16xf32>, {{.*}}) outs(%{{.*}} : tensor<?x16xf32>)
// HC-LABEL:    func.func @dynamic_tokens
// HC:          tensor.dim
// HC:          tensor.empty(%{{.*}}) : tensor<?x4xf32>
// expected-remark@+1 {{@dynamic_tokens: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @dynamic_tokens(%h: tensor<?x16xf32>) -> tensor<?x16xf32> {
  %y1 = math.tanh %h : tensor<?x16xf32>
  %h1 = arith.addf %h, %y1 : tensor<?x16xf32>
  %y2 = math.tanh %h1 : tensor<?x16xf32>
  %h2 = arith.addf %h1, %y2 : tensor<?x16xf32>
  return %h2 : tensor<?x16xf32>
}

// -----

// A stream value read outside the chain (an intermediate hidden state
// returned) reads the mean of the streams at that point.
// CHECK-LABEL: func.func @stream_read_mid_chain
// CHECK:       %[[X1:.*]] = mhc.post_res
// CHECK:       %[[MID:.*]] = linalg.generic {{.*}} ins(%[[X1]], %[[X1]], %[[X1]], %[[X1]] :
// CHECK:       %[[X2:.*]] = mhc.post_res %{{.*}}, %[[X1]]
// CHECK:       %[[END:.*]] = linalg.generic {{.*}} ins(%[[X2]], %[[X2]], %[[X2]], %[[X2]] :
// CHECK:       return %{{.*}}, %{{.*}} : tensor<4x16xf32>, tensor<4x16xf32>
// expected-remark@+1 {{@stream_read_mid_chain: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @stream_read_mid_chain(%h: tensor<4x16xf32>) -> (tensor<4x16xf32>, tensor<4x16xf32>) {
  %y1 = math.tanh %h : tensor<4x16xf32>
  %h1 = arith.addf %h, %y1 : tensor<4x16xf32>
  %y2 = math.tanh %h1 : tensor<4x16xf32>
  %h2 = arith.addf %h1, %y2 : tensor<4x16xf32>
  return %h1, %h2 : tensor<4x16xf32>, tensor<4x16xf32>
}

// -----

// Negative cases: nothing changes, and each skipped add says why.
// CHECK-LABEL: func.func @not_residual
// CHECK-NOT:   mhc.
// CHECK:       return
// expected-remark@+1 {{@not_residual: 1 residual add(s) found, 0 converted in 0 chain(s)}}
func.func @not_residual(%h: tensor<4x16xf32>, %g: tensor<4x16xf32>, %bias: tensor<16xf32>) -> (tensor<4x16xf32>, tensor<4x16xf32>) {
  // Independent operands (like the wte + wpe embedding sum).
  // expected-remark@+1 {{add left alone: neither operand depends on the other (not x + F(x))}}
  %s = arith.addf %h, %g : tensor<4x16xf32>
  // Broadcasting add (a bias).
  %e = tensor.empty() : tensor<4x16xf32>
  // expected-remark@+1 {{add left alone: the operands broadcast (shapes differ from the result's)}}
  %b = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d1)>, affine_map<(d0, d1) -> (d0, d1)>], iterator_types = ["parallel", "parallel"]}
      ins(%s, %bias : tensor<4x16xf32>, tensor<16xf32>) outs(%e : tensor<4x16xf32>) {
  ^bb0(%x: f32, %y: f32, %o: f32):
    %r = arith.addf %x, %y : f32
    linalg.yield %r : f32
  } -> tensor<4x16xf32>
  // A lone x + f(x), like GELU's inner add: a chain of one block.
  %c = arith.constant dense<0.044715> : tensor<4x16xf32>
  %cube = arith.mulf %b, %b : tensor<4x16xf32>
  %t = arith.mulf %cube, %c : tensor<4x16xf32>
  // expected-remark@+1 {{add left alone: it is in a chain of 1 residual block(s), fewer than min-blocks=2: its branch is elementwise, like the inner add of an activation}}
  %gelu = arith.addf %b, %t : tensor<4x16xf32>
  return %s, %gelu : tensor<4x16xf32>, tensor<4x16xf32>
}

// -----

// tosa.add with broadcasting shapes is not a residual add.
// CHECK-LABEL: func.func @tosa_broadcast
// CHECK:       tosa.add
// CHECK-NOT:   mhc.
// expected-remark@+1 {{@tosa_broadcast: 0 residual add(s) found, 0 converted in 0 chain(s)}}
func.func @tosa_broadcast(%h: tensor<4x16xf32>, %b: tensor<1x16xf32>) -> tensor<4x16xf32> {
  // expected-remark@+1 {{add left alone: the operands broadcast (shapes differ from the result's)}}
  %r = tosa.add %h, %b : (tensor<4x16xf32>, tensor<1x16xf32>) -> tensor<4x16xf32>
  return %r : tensor<4x16xf32>
}

// -----

// The branch escapes: the first block's internal value is returned too, so
// that block is left alone, and the second alone is a chain of one.
// CHECK-LABEL: func.func @branch_escapes
// CHECK-NOT:   mhc.
// CHECK-COUNT-2: arith.addf
// expected-remark@+1 {{@branch_escapes: 2 residual add(s) found, 0 converted in 0 chain(s)}}
func.func @branch_escapes(%h: tensor<4x16xf32>) -> (tensor<4x16xf32>, tensor<4x16xf32>) {
  %y1 = math.tanh %h : tensor<4x16xf32>
  // expected-remark@+1 {{add left alone: the branch escapes: 'func.return' outside the block uses a value computed in it}}
  %h1 = arith.addf %h, %y1 : tensor<4x16xf32>
  %y2 = math.tanh %h1 : tensor<4x16xf32>
  // expected-remark@+1 {{add left alone: it is in a chain of 1 residual block(s)}}
  %h2 = arith.addf %h1, %y2 : tensor<4x16xf32>
  return %h2, %y1 : tensor<4x16xf32>, tensor<4x16xf32>
}

// -----

// One stream feeding two residual adds (a fork) is not a chain. Two residual
// adds of one stream type and none converted: a warning, without remarks=true
// too, with a note per add.
// CHECK-LABEL: func.func @stream_forks
// CHECK-NOT:   mhc.
// expected-warning@+2 {{mhc-hyperconnect: @stream_forks: 2 residual add(s) left alone}}
// expected-remark@+1 {{@stream_forks: 2 residual add(s) found, 0 converted in 0 chain(s)}}
func.func @stream_forks(%h: tensor<4x16xf32>) -> (tensor<4x16xf32>, tensor<4x16xf32>) {
  %y1 = math.tanh %h : tensor<4x16xf32>
  // expected-note@+1 {{left alone: its residual input also feeds another residual add}}
  %h1 = arith.addf %h, %y1 : tensor<4x16xf32>
  %y2 = math.sin %h : tensor<4x16xf32>
  // expected-note@+1 {{left alone: its residual input also feeds another residual add}}
  %h2 = arith.addf %h, %y2 : tensor<4x16xf32>
  return %h1, %h2 : tensor<4x16xf32>, tensor<4x16xf32>
}

// -----

// A function without any add: unchanged, with a remark.
// CHECK-LABEL: func.func @no_chain
// CHECK-NEXT:  math.tanh
// CHECK-NEXT:  return
// expected-remark@+1 {{@no_chain: 0 residual add(s) found, 0 converted in 0 chain(s)}}
func.func @no_chain(%h: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %y = math.tanh %h : tensor<4x16xf32>
  return %y : tensor<4x16xf32>
}

// -----

// Reshapes and casts on the stream between blocks (keeping C) are replayed
// on the widened stream; the coefficients are computed where the add reads it.
// CHECK-LABEL: func.func @reshaped_between_blocks
// CHECK:       %[[X0:.*]] = mhc.expand %{{.*}} : tensor<1x4x16xf32> -> tensor<1x4x4x16xf32>
// CHECK:       %[[X1:.*]] = mhc.post_res %{{.*}}, %[[X0]], {{.*}} -> tensor<1x4x4x16xf32>
// CHECK:       %[[C1:.*]] = tensor.collapse_shape %[[X1]] {{\[}}[0, 1], [2], [3]] : tensor<1x4x4x16xf32> into tensor<4x4x16xf32>
// CHECK:       mhc.norm_project %[[C1]], %{{.*}} -> tensor<4x24xf32>
// CHECK:       mhc.pre_apply %[[C1]]
// CHECK:       %[[X2:.*]] = mhc.post_res %{{.*}}, %[[C1]], {{.*}} -> tensor<4x4x16xf32>
// CHECK:       %[[D2:.*]] = tensor.cast %[[X2]] : tensor<4x4x16xf32> to tensor<?x4x16xf32>
// CHECK:       %[[E2:.*]] = tensor.expand_shape %[[D2]] {{\[}}[0, 1], [2], [3]] output_shape [1, %{{.*}}, 4, 16] : tensor<?x4x16xf32> into tensor<1x?x4x16xf32>
// CHECK:       %[[S2:.*]] = tensor.cast %[[E2]] : tensor<1x?x4x16xf32> to tensor<1x4x4x16xf32>
// CHECK:       mhc.pre_apply %[[S2]]
// CHECK:       %[[X3:.*]] = mhc.post_res %{{.*}}, %[[S2]]
// CHECK:       linalg.generic {{.*}} ins(%[[X3]], %[[X3]],
// CHECK-NOT:   tensor.collapse_shape %{{.*}} : tensor<1x4x16xf32>
// expected-remark@+1 {{@reshaped_between_blocks: 3 residual add(s) found, 3 converted in 1 chain(s)}}
func.func @reshaped_between_blocks(%h: tensor<1x4x16xf32>) -> tensor<1x4x16xf32> {
  %y1 = math.tanh %h : tensor<1x4x16xf32>
  %h1 = arith.addf %h, %y1 : tensor<1x4x16xf32>
  %c1 = tensor.collapse_shape %h1 [[0, 1], [2]] : tensor<1x4x16xf32> into tensor<4x16xf32>
  %y2 = math.tanh %c1 : tensor<4x16xf32>
  %h2 = arith.addf %c1, %y2 : tensor<4x16xf32>
  %d2 = tensor.cast %h2 : tensor<4x16xf32> to tensor<?x16xf32>
  %e2 = tensor.expand_shape %d2 [[0, 1], [2]] output_shape [1, 4, 16] : tensor<?x16xf32> into tensor<1x?x16xf32>
  %s2 = tensor.cast %e2 : tensor<1x?x16xf32> to tensor<1x4x16xf32>
  %y3 = math.sin %s2 : tensor<1x4x16xf32>
  %h3 = arith.addf %y3, %s2 : tensor<1x4x16xf32>
  return %h3 : tensor<1x4x16xf32>
}

// -----

// F reads the stream before the reshape that leads to the add: the
// coefficients could not be computed in one place, so the block is skipped.
// CHECK-LABEL: func.func @branch_reads_before_reshape
// CHECK-NOT:   mhc.
// expected-remark@+1 {{@branch_reads_before_reshape: 2 residual add(s) found, 0 converted in 0 chain(s)}}
func.func @branch_reads_before_reshape(%h: tensor<1x4x16xf32>) -> tensor<4x16xf32> {
  %y1 = math.tanh %h : tensor<1x4x16xf32>
  // expected-remark@+1 {{it is in a chain of 1 residual block(s)}}
  %h1 = arith.addf %h, %y1 : tensor<1x4x16xf32>
  %y2 = math.tanh %h1 : tensor<1x4x16xf32>
  %y2c = tensor.collapse_shape %y2 [[0, 1], [2]] : tensor<1x4x16xf32> into tensor<4x16xf32>
  %c1 = tensor.collapse_shape %h1 [[0, 1], [2]] : tensor<1x4x16xf32> into tensor<4x16xf32>
  // expected-remark@+1 {{add left alone: the branch reads the stream before the reshape on the way to the add}}
  %h2 = arith.addf %c1, %y2c : tensor<4x16xf32>
  return %h2 : tensor<4x16xf32>
}

// -----

// Streams the mhc ops cannot carry: f64 elements, a dynamic width C.
// CHECK-LABEL: func.func @unsupported_streams
// CHECK-NOT:   mhc.
// expected-warning@+2 {{mhc-hyperconnect: @unsupported_streams: 4 residual add(s) left alone}}
// expected-remark@+1 {{@unsupported_streams: 4 residual add(s) found, 0 converted in 0 chain(s)}}
func.func @unsupported_streams(%h: tensor<4x8xf64>, %g: tensor<4x?xf32>) -> (tensor<4x8xf64>, tensor<4x?xf32>) {
  %y = math.tanh %h : tensor<4x8xf64>
  // expected-note@+1 {{left alone: the stream's element type is not bf16, f16 or f32}}
  %h1 = arith.addf %h, %y : tensor<4x8xf64>
  %y2 = math.tanh %h1 : tensor<4x8xf64>
  // expected-note@+1 {{left alone: the stream's element type is not bf16, f16 or f32}}
  %h2 = arith.addf %h1, %y2 : tensor<4x8xf64>
  %z = math.tanh %g : tensor<4x?xf32>
  // expected-note@+1 {{left alone: the stream's last dim (the width C) is dynamic}}
  %g1 = arith.addf %g, %z : tensor<4x?xf32>
  %z2 = math.tanh %g1 : tensor<4x?xf32>
  // expected-note@+1 {{left alone: the stream's last dim (the width C) is dynamic}}
  %g2 = arith.addf %g1, %z2 : tensor<4x?xf32>
  return %h2, %g2 : tensor<4x8xf64>, tensor<4x?xf32>
}

// -----

// Only the function's entry block is analysed: the chain inside the loop
// stays, the one after it is rewritten; a use in another block reads the mean.
// CHECK-LABEL: func.func @regions_and_blocks
// CHECK:       scf.for
// CHECK-COUNT-2: arith.addf %{{.*}} : tensor<4x8xf32>
// CHECK:       scf.yield
// CHECK:       mhc.expand
// CHECK-COUNT-2: mhc.post_res
// CHECK:       %[[MEAN:.*]] = linalg.generic
// CHECK:       cf.cond_br
// CHECK:       return %[[MEAN]]
// expected-remark@+1 {{@regions_and_blocks: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @regions_and_blocks(%h: tensor<4x8xf32>, %c: i1) -> tensor<4x8xf32> {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c2 = arith.constant 2 : index
  %r = scf.for %i = %c0 to %c2 step %c1 iter_args(%x = %h) -> tensor<4x8xf32> {
    %y = math.tanh %x : tensor<4x8xf32>
    %x1 = arith.addf %x, %y : tensor<4x8xf32>
    %y2 = math.tanh %x1 : tensor<4x8xf32>
    %x2 = arith.addf %x1, %y2 : tensor<4x8xf32>
    scf.yield %x2 : tensor<4x8xf32>
  }
  %y = math.tanh %r : tensor<4x8xf32>
  %h1 = arith.addf %r, %y : tensor<4x8xf32>
  %y3 = math.sin %h1 : tensor<4x8xf32>
  %h2 = arith.addf %y3, %h1 : tensor<4x8xf32>
  cf.cond_br %c, ^a, ^b
^a:
  return %h2 : tensor<4x8xf32>
^b:
  %z = math.exp %h2 : tensor<4x8xf32>
  return %z : tensor<4x8xf32>
}


// -----

// A parallel block written residual-first, h = (x + attn(n(x))) + mlp(n(x))
// (Cohere, StableLM): one norm feeds both branches. Both adds become
// post_res; the first block's pre_apply feeds the shared norm, and the second
// block (whose branch reads the first's input) has no pre_apply. The second
// layer has the inner add's operands the other way round.
// CHECK-LABEL: func.func @parallel_residual_first
// CHECK:       %[[X0:.*]] = mhc.expand
// CHECK:       %[[U0:.*]] = mhc.pre_apply %[[X0]]
// CHECK:       %[[N0:.*]] = math.tanh %[[U0]]
// CHECK:       %[[A0:.*]] = linalg.matmul ins(%[[N0]]
// CHECK:       %[[M0:.*]] = linalg.matmul ins(%[[N0]]
// CHECK:       %[[X1:.*]] = mhc.post_res %[[A0]], %[[X0]]
// CHECK-NOT:   mhc.pre_apply %[[X1]]
// CHECK:       %[[X2:.*]] = mhc.post_res %[[M0]], %[[X1]]
// CHECK:       %[[U2:.*]] = mhc.pre_apply %[[X2]]
// CHECK:       %[[X3:.*]] = mhc.post_res %{{.*}}, %[[X2]]
// CHECK:       %[[X4:.*]] = mhc.post_res %{{.*}}, %[[X3]]
// CHECK:       linalg.generic {{.*}} ins(%[[X4]], %[[X4]],
// CHECK-NOT:   arith.addf {{.*}} : tensor
// HC-LABEL:    func.func @parallel_residual_first
// HC-COUNT-4:  mhc.post_res
// expected-remark@+1 {{@parallel_residual_first: 4 residual add(s) found, 4 converted in 1 chain(s)}}
func.func @parallel_residual_first(%h: tensor<8x16xf32>, %wa: tensor<16x16xf32>, %wm: tensor<16x16xf32>) -> tensor<8x16xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x16xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<8x16xf32>) -> tensor<8x16xf32>
  %n0 = math.tanh %h : tensor<8x16xf32>
  %a0 = linalg.matmul ins(%n0, %wa : tensor<8x16xf32>, tensor<16x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  %m0 = linalg.matmul ins(%n0, %wm : tensor<8x16xf32>, tensor<16x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  %r0 = arith.addf %h, %a0 : tensor<8x16xf32>
  %h1 = arith.addf %r0, %m0 : tensor<8x16xf32>
  %n1 = math.tanh %h1 : tensor<8x16xf32>
  %a1 = linalg.matmul ins(%n1, %wa : tensor<8x16xf32>, tensor<16x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  %m1 = linalg.matmul ins(%n1, %wm : tensor<8x16xf32>, tensor<16x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  %r1 = arith.addf %a1, %h1 : tensor<8x16xf32>
  %h2 = arith.addf %m1, %r1 : tensor<8x16xf32>
  return %h2 : tensor<8x16xf32>
}

// -----

// TOSA reshapes of the stream between blocks (OPT through torch-mlir's TOSA
// path: [1, 8, C] <-> [8, C]) are stream views: replayed on the widened
// stream as tosa.reshape to [.., n, C].
// CHECK-LABEL: func.func @tosa_reshaped
// CHECK:       %[[X0:.*]] = mhc.expand %{{.*}} : tensor<1x8x16xf32> -> tensor<1x8x4x16xf32>
// CHECK:       %[[X1:.*]] = mhc.post_res %{{.*}}, %[[X0]]
// CHECK:       %[[S:.*]] = tosa.const_shape {values = dense<[8, 4, 16]> : tensor<3xindex>}
// CHECK:       %[[R1:.*]] = tosa.reshape %[[X1]], %[[S]] : (tensor<1x8x4x16xf32>, !tosa.shape<3>) -> tensor<8x4x16xf32>
// CHECK:       mhc.norm_project %[[R1]]
// CHECK:       %[[X2:.*]] = mhc.post_res %{{.*}}, %[[R1]]
// CHECK:       linalg.generic {{.*}} ins(%[[X2]], %[[X2]],
// CHECK-NOT:   tosa.add
// expected-remark@+1 {{@tosa_reshaped: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @tosa_reshaped(%h: tensor<1x8x16xf32>) -> tensor<8x16xf32> {
  %s2 = tosa.const_shape {values = dense<[8, 16]> : tensor<2xindex>} : () -> !tosa.shape<2>
  %y1 = tosa.tanh %h : (tensor<1x8x16xf32>) -> tensor<1x8x16xf32>
  %z1 = tosa.reduce_sum %y1 {axis = 2 : i32} : (tensor<1x8x16xf32>) -> tensor<1x8x1xf32>
  %w1 = tosa.sub %y1, %z1 : (tensor<1x8x16xf32>, tensor<1x8x1xf32>) -> tensor<1x8x16xf32>
  %h1 = tosa.add %h, %w1 : (tensor<1x8x16xf32>, tensor<1x8x16xf32>) -> tensor<1x8x16xf32>
  %r1 = tosa.reshape %h1, %s2 : (tensor<1x8x16xf32>, !tosa.shape<2>) -> tensor<8x16xf32>
  %y2 = tosa.tanh %r1 : (tensor<8x16xf32>) -> tensor<8x16xf32>
  %z2 = tosa.reduce_sum %y2 {axis = 1 : i32} : (tensor<8x16xf32>) -> tensor<8x1xf32>
  %w2 = tosa.sub %y2, %z2 : (tensor<8x16xf32>, tensor<8x1xf32>) -> tensor<8x16xf32>
  %h2 = tosa.add %r1, %w2 : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8x16xf32>
  return %h2 : tensor<8x16xf32>
}

// -----

// Dynamic-shape exports assert on sizes computed inside the block
// (tensor.dim + arith.cmpi + cf.assert): the checks may read F.
// CHECK-LABEL: func.func @dynamic_size_checks
// CHECK:       %[[X0:.*]] = mhc.expand
// CHECK:       %[[U0:.*]] = mhc.pre_apply %[[X0]]
// CHECK:       %[[Y0:.*]] = linalg.matmul
// CHECK:       tensor.dim %[[Y0]]
// CHECK:       cf.assert
// CHECK:       %[[X1:.*]] = mhc.post_res %[[Y0]], %[[X0]]
// CHECK-COUNT-1: mhc.post_res
// CHECK:       linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : tensor<?x4x16xf32>
// expected-remark@+1 {{@dynamic_size_checks: 2 residual add(s) found, 2 converted in 1 chain(s)}}
func.func @dynamic_size_checks(%h: tensor<?x16xf32>, %w: tensor<16x16xf32>) -> tensor<?x16xf32> {
  %c0 = arith.constant 0 : index
  %z = arith.constant 0.0 : f32
  %d = tensor.dim %h, %c0 : tensor<?x16xf32>
  %e = tensor.empty(%d) : tensor<?x16xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<?x16xf32>) -> tensor<?x16xf32>
  %a = math.tanh %h : tensor<?x16xf32>
  %y = linalg.matmul ins(%a, %w : tensor<?x16xf32>, tensor<16x16xf32>) outs(%f : tensor<?x16xf32>) -> tensor<?x16xf32>
  %dy = tensor.dim %y, %c0 : tensor<?x16xf32>
  %ok = arith.cmpi eq, %dy, %d : index
  cf.assert %ok, "mismatched size for broadcast"
  %h1 = arith.addf %h, %y : tensor<?x16xf32>
  %b = math.tanh %h1 : tensor<?x16xf32>
  %y2 = linalg.matmul ins(%b, %w : tensor<?x16xf32>, tensor<16x16xf32>) outs(%f : tensor<?x16xf32>) -> tensor<?x16xf32>
  %dy2 = tensor.dim %y2, %c0 : tensor<?x16xf32>
  %ok2 = arith.cmpi eq, %dy2, %d : index
  cf.assert %ok2, "mismatched size for broadcast"
  %h2 = arith.addf %h1, %y2 : tensor<?x16xf32>
  return %h2 : tensor<?x16xf32>
}

// -----

// Post-norm blocks, h' = norm(h + F(h)) (BERT, the original Transformer):
// each add is a chain of one, and the reason names the op in the way. Two
// residual adds of one type and none converted: a warning.
// CHECK-LABEL: func.func @post_norm
// CHECK-NOT:   mhc.
// expected-warning@+2 {{mhc-hyperconnect: @post_norm: 2 residual add(s) left alone}}
// expected-remark@+1 {{@post_norm: 2 residual add(s) found, 0 converted in 0 chain(s)}}
func.func @post_norm(%h: tensor<8x16xf32>, %w: tensor<16x16xf32>) -> tensor<8x16xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x16xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<8x16xf32>) -> tensor<8x16xf32>
  %y1 = linalg.matmul ins(%h, %w : tensor<8x16xf32>, tensor<16x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  // expected-note@+1 {{left alone: it is in a chain of 1 residual block(s), fewer than min-blocks=2: its result reaches the next residual add only through 'math.tanh' (e.g. a post-norm LayerNorm)}}
  %s1 = arith.addf %h, %y1 : tensor<8x16xf32>
  %h1 = math.tanh %s1 : tensor<8x16xf32>
  %y2 = linalg.matmul ins(%h1, %w : tensor<8x16xf32>, tensor<16x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  // expected-note@+1 {{left alone: it is in a chain of 1 residual block(s), fewer than min-blocks=2: no other residual add reads its result or produced its residual input}}
  %s2 = arith.addf %h1, %y2 : tensor<8x16xf32>
  %h2 = math.tanh %s2 : tensor<8x16xf32>
  return %h2 : tensor<8x16xf32>
}
