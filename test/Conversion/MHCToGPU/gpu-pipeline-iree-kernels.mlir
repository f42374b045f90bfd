// --mhc-gpu-pipeline="iree-kernels=1": every kernel also has an entry with
// IREE's CUDA dispatch ABI (bindings as .u64 pointers, then .u32 push
// constants: T and the element counts), with the kernel's launch bounds.
// REQUIRES: ptxas
// RUN: mhc-opt %s --mhc-gpu-pipeline="format=isa iree-kernels=1" | FileCheck %s
// RUN: mhc-opt %s --mhc-gpu-pipeline="format=isa" | FileCheck %s --check-prefix=PLAIN

// CHECK: .entry mhc_collapse_0(
// CHECK: .entry mhc_collapse_0_iree(\0A\09.param .u64 .ptr .align 1 mhc_collapse_0_iree_param_0,\0A\09.param .u64 .ptr .align 1 mhc_collapse_0_iree_param_1,\0A\09.param .u32 mhc_collapse_0_iree_param_2,\0A\09.param .u32 mhc_collapse_0_iree_param_3,\0A\09.param .u32 mhc_collapse_0_iree_param_4\0A)\0A.maxntid 256, 1, 1
// PLAIN-NOT: _iree
func.func @collapse(%x: tensor<?x4x64xbf16>) -> tensor<?x64xbf16> {
  %h = mhc.collapse %x : tensor<?x4x64xbf16> -> tensor<?x64xbf16>
  return %h : tensor<?x64xbf16>
}
