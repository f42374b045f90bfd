// RUN: mhc-opt %s --mhc-fuse --mhc-select-schedule --mhc-outline-kernels | FileCheck %s
// RUN: mhc-opt %s --mhc-fuse --mhc-select-schedule --mhc-outline-kernels=kernels-only \
// RUN:   | FileCheck %s --check-prefix=ONLY
// The kernels-only module compiles to kernels of the same names.
// RUN: mhc-opt %s --mhc-fuse --mhc-select-schedule --mhc-outline-kernels=kernels-only \
// RUN:   | mhc-opt --mhc-select-schedule --convert-mhc-to-gpu | FileCheck %s --check-prefix=GPU
// The IREE fast route's form: one kernel per group (no fn prepare kernel).
// RUN: mhc-opt %s --mhc-fuse --mhc-select-schedule=prepare-fn=false --mhc-outline-kernels=kernels-only \
// RUN:   | mhc-opt --convert-mhc-to-gpu | FileCheck %s --check-prefix=NOPREP

// Every kernel root becomes @mhc_<kind>_<i> (the name --convert-mhc-to-gpu
// gives its kernel): arguments = the kernel's inputs in first-use order,
// results = its outputs; a call replaces the root.
// CHECK-LABEL: func.func @sublayer
// CHECK-SAME:    (%[[X:[a-z0-9]+]]: tensor<8x4x64xbf16>, %[[FN:[a-z0-9]+]]: tensor<24x256xf32>, %[[S:[a-z0-9]+]]: tensor<3xf32>, %[[B:[a-z0-9]+]]: tensor<24xf32>)
// CHECK:         %[[PRE:.*]]:3 = call @mhc_pre_0(%[[X]], %[[FN]], %[[S]], %[[B]])
// CHECK-SAME:      -> (tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x64xbf16>)
// CHECK:         %[[Y:.*]] = math.tanh %[[PRE]]#2
// CHECK:         %[[POST:.*]] = call @mhc_post_1(%[[Y]], %[[X]], %[[PRE]]#0, %[[PRE]]#1)
// CHECK:         %[[H:.*]] = call @mhc_collapse_2(%[[POST]])
// CHECK:         return %[[H]]
// CHECK-NOT:     mhc.fused
// CHECK-LABEL: func.func private @mhc_pre_0
// CHECK-SAME:    (%{{.*}}: tensor<8x4x64xbf16>, %{{.*}}: tensor<24x256xf32>, %{{.*}}: tensor<3xf32>, %{{.*}}: tensor<24xf32>)
// CHECK-SAME:    -> (tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x64xbf16>) attributes {mhc.tokens = 8 : i64}
// CHECK:         mhc.fused "pre"
// CHECK:         mhc.schedule = [#mhc.schedule<
// CHECK-LABEL: func.func private @mhc_post_1
// CHECK-SAME:    attributes {mhc.tokens = 8 : i64}
// CHECK:         mhc.fused "post"
// CHECK-LABEL: func.func private @mhc_collapse_2

// ONLY-NOT:    func.func @sublayer
// ONLY:        func.func @mhc_pre_0
// ONLY:        func.func @mhc_post_1
// ONLY:        func.func @mhc_collapse_2
// GPU:         gpu.func @mhc_pre_0_prepare_fn(
// GPU:         gpu.func @mhc_pre_0(
// GPU:         gpu.func @mhc_post_1(
// GPU:         gpu.func @mhc_collapse_2(
// NOPREP-NOT:  _prepare_fn
// NOPREP:      gpu.func @mhc_pre_0(
// NOPREP-NOT:  _prepare_fn
func.func @sublayer(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>,
                    %base: tensor<24xf32>) -> tensor<8x64xbf16> {
  %mix = mhc.norm_project %x, %fn : tensor<8x4x64xbf16>, tensor<24x256xf32> -> tensor<8x24xf32>
  %pre, %post, %logits = mhc.split_mixes %mix, %scale, %base
      : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  %comb = mhc.sinkhorn %logits : tensor<8x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<8x4x64xbf16>, tensor<8x4xf32> -> tensor<8x64xbf16>
  %y = math.tanh %u : tensor<8x64xbf16>
  %xn = mhc.post_res %y, %x, %post, %comb
      : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32> -> tensor<8x4x64xbf16>
  %h = mhc.collapse %xn : tensor<8x4x64xbf16> -> tensor<8x64xbf16>
  return %h : tensor<8x64xbf16>
}
