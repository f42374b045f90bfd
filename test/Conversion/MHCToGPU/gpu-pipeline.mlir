// The whole --mhc-gpu-pipeline down to PTX (format=isa; needs the CUDA
// toolkit for libdevice, not a GPU). The PTX proves the schedule: 16-byte
// global loads/stores, bf16 tensor-core products with ldmatrix A fragments
// and fn split by cvt.rn.bf16x2, warp shuffles, 4 blocks per SM for the
// projection kernel.
// REQUIRES: ptxas
// RUN: mhc-opt %s --mhc-gpu-pipeline="format=isa" -o %t.mlir
// RUN: FileCheck %s --check-prefix=HOST < %t.mlir
// RUN: FileCheck %s --check-prefix=BIN < %t.mlir
// RUN: FileCheck %s --check-prefix=V4LD < %t.mlir
// RUN: FileCheck %s --check-prefix=V4ST < %t.mlir
// RUN: FileCheck %s --check-prefix=MMA < %t.mlir
// RUN: FileCheck %s --check-prefix=LDM < %t.mlir
// RUN: FileCheck %s --check-prefix=CVT < %t.mlir
// RUN: FileCheck %s --check-prefix=SHFL < %t.mlir
// RUN: FileCheck %s --check-prefix=KERNELS < %t.mlir
// The backward kernels: 16-byte loads in the rows and cols kernels, the
// row sums reduced by shuffles, the cols kernel's products on the tensor
// cores.
// RUN: mhc-opt %S/../../Transforms/Inputs/backward-sublayer.mlir --mhc-gpu-pipeline="format=isa" | FileCheck %s --check-prefix=BWD
// The pre-norm's gradient in the pre_backward group compiles: the rows kernel's
// 16-byte loads, its sums' shuffles and factor r, the cols kernel's tensor-core products.
// RUN: mhc-opt %S/../../Transforms/Inputs/prenorm-backward-sublayer.mlir --mhc-gpu-pipeline="format=isa" | FileCheck %s --check-prefix=PNB
// PNB: .visible .entry mhc_pre_backward_1_rows(
// PNB: ld.global.v4.b32
// PNB: shfl.sync.bfly
// PNB: rsqrt.approx
// PNB: .visible .entry mhc_pre_backward_1_tokens(
// PNB: .visible .entry mhc_pre_backward_1_cols(
// PNB: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
// PNB: .visible .entry mhc_pre_backward_1_params(
// A whole-model backward (two chained sublayers): with the dy fold the upper
// sublayer runs post_backward + pre_backward (its cols kernel also writing the
// lower one's dy, from post made by a split_mixes kernel), the lower sublayer
// one backward group; without it, post_backward + pre_backward each.
// RUN: mhc-opt %S/../../Transforms/Inputs/two-sublayers.mlir --mhc-generate-backward --mhc-gpu-pipeline="format=isa" | FileCheck %s --check-prefix=WHOLE
// RUN: mhc-opt %S/../../Transforms/Inputs/two-sublayers.mlir --mhc-generate-backward --mhc-gpu-pipeline="format=isa fold-dy=0" | FileCheck %s --check-prefix=NOFOLD
// WHOLE-LABEL: llvm.func @two_sublayers_backward(
// WHOLE:       gpu.launch_func {{.*}}@mhc_kernels::@mhc_post_backward_{{[0-9]+}}_rows
// WHOLE:       gpu.launch_func {{.*}}@mhc_kernels::@mhc_split_mixes_{{[0-9]+}} 
// WHOLE:       gpu.launch_func {{.*}}@mhc_kernels::@mhc_pre_backward_[[UP:[0-9]+]]_rows
// WHOLE:       gpu.launch_func {{.*}}@mhc_kernels::@mhc_pre_backward_[[UP]]_cols
// WHOLE:       gpu.launch_func {{.*}}@mhc_kernels::@mhc_pre_backward_[[UP]]_params
// WHOLE-NOT:   mhc_post_backward
// WHOLE:       gpu.launch_func {{.*}}@mhc_kernels::@mhc_backward_[[LOW:[0-9]+]]_rows
// WHOLE:       gpu.launch_func {{.*}}@mhc_kernels::@mhc_backward_[[LOW]]_cols
// WHOLE:       gpu.launch_func {{.*}}@mhc_kernels::@mhc_backward_[[LOW]]_params
// NOFOLD-LABEL: llvm.func @two_sublayers_backward(
// NOFOLD-NOT:  mhc_split_mixes
// NOFOLD:      gpu.launch_func {{.*}}@mhc_kernels::@mhc_post_backward_{{[0-9]+}}_rows
// NOFOLD:      gpu.launch_func {{.*}}@mhc_kernels::@mhc_pre_backward_{{[0-9]+}}_params
// NOFOLD:      gpu.launch_func {{.*}}@mhc_kernels::@mhc_post_backward_{{[0-9]+}}_rows
// NOFOLD:      gpu.launch_func {{.*}}@mhc_kernels::@mhc_pre_backward_{{[0-9]+}}_params
// NOFOLD-NOT:  @mhc_kernels::@mhc_backward_
// BWD: .visible .entry mhc_backward_2_rows(
// BWD: ld.global.v4.b32
// BWD: shfl.sync.bfly
// BWD: .visible .entry mhc_backward_2_cols(
// BWD: ld.global.v4.b32
// BWD: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
// BWD: st.global.v4.b32
// BWD: .visible .entry mhc_backward_2_params(

// Host code: one stream per call, device buffers from mgpuMemAlloc, kernel
// launches in program order on that stream, intermediates freed on it,
// then synchronize.
// HOST-LABEL: llvm.func @steady
// HOST:       llvm.call @mgpuStreamCreate()
// HOST:       llvm.call @mgpuMemAlloc
// HOST:       gpu.launch_func <%{{.*}} : !llvm.ptr> @mhc_kernels::@mhc_pre_0 blocks in
// HOST:       gpu.launch_func <%{{.*}} : !llvm.ptr> @mhc_kernels::@mhc_post_1 blocks in
// HOST:       llvm.call @mgpuMemFree
// HOST:       llvm.call @mgpuStreamSynchronize
// HOST:       llvm.call @mgpuStreamDestroy
// HOST:       llvm.return

// BIN: gpu.binary @mhc_kernels  [#gpu.object<#nvvm.target<O = 3, chip = "sm_90", features = "+ptx80">
// KERNELS: .visible .entry mhc_pre_0(
// KERNELS: .visible .entry mhc_post_1(
// KERNELS-SAME: .maxntid 128, 1, 1{{.*}}.minnctapersm 4
// V4LD: ld.global.v4.b32
// V4ST: st.global.v4.b32
// MMA: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
// LDM: ldmatrix.sync.aligned.m8n8.x4.shared.b16
// CVT: cvt.rn.bf16x2.f32
// SHFL: shfl.sync.bfly.b32

func.func @steady(%x: tensor<?x4x4096xbf16>, %mix: tensor<?x24xf32>, %scale: tensor<3xf32>,
                  %base: tensor<24xf32>, %y: tensor<?x4096xbf16>, %fn: tensor<24x16384xf32>)
    -> (tensor<?x4096xbf16>, tensor<?x4x4096xbf16>, tensor<?x24xf32>) {
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %c = mhc.sinkhorn %l : tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x4096xbf16>, tensor<?x4xf32> -> tensor<?x4096xbf16>
  %xn = mhc.post_res %y, %x, %post, %c : tensor<?x4096xbf16>, tensor<?x4x4096xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x4096xbf16>
  %mix2 = mhc.norm_project %xn, %fn : tensor<?x4x4096xbf16>, tensor<24x16384xf32> -> tensor<?x24xf32>
  return %u, %xn, %mix2 : tensor<?x4096xbf16>, tensor<?x4x4096xbf16>, tensor<?x24xf32>
}
