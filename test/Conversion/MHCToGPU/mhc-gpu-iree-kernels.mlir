// RUN: mhc-opt %s --split-input-file --verify-diagnostics \
// RUN:   --pass-pipeline="builtin.module(gpu.module(mhc-gpu-iree-kernels))" | FileCheck %s

// Next to the kernel (mhc's ABI: i64 T, then a 1-D descriptor per buffer)
// an entry with IREE's: a pointer per binding, then i32 T and element counts;
// it rebuilds the descriptors (aligned = allocated = binding, offset 0,
// size = count, stride 1) and enters a copy of the body. Launch bounds kept.
// CHECK-LABEL: llvm.func @k(
// CHECK-LABEL: llvm.func @k_iree(
// CHECK-SAME:    %[[A:[a-z0-9]+]]: !llvm.ptr, %[[B:[a-z0-9]+]]: !llvm.ptr, %[[T:[a-z0-9]+]]: i32, %[[NA:[a-z0-9]+]]: i32, %[[NB:[a-z0-9]+]]: i32)
// CHECK-SAME:    nvvm.kernel, nvvm.maxntid = array<i32: 128, 1, 1>, nvvm.minctasm = 4 : i32
// CHECK-DAG:     %[[T64:.*]] = llvm.zext %[[T]] : i32 to i64
// CHECK-DAG:     %[[ZERO:.*]] = llvm.mlir.constant(0 : i64) : i64
// CHECK-DAG:     %[[ONE:.*]] = llvm.mlir.constant(1 : i64) : i64
// CHECK-DAG:     %[[NA64:.*]] = llvm.zext %[[NA]] : i32 to i64
// CHECK-DAG:     %[[NB64:.*]] = llvm.zext %[[NB]] : i32 to i64
// CHECK:         llvm.br ^bb1(%[[T64]], %[[A]], %[[A]], %[[ZERO]], %[[NA64]], %[[ONE]], %[[B]], %[[B]], %[[ZERO]], %[[NB64]], %[[ONE]] :
// CHECK:       ^bb1(%[[TT:[0-9]+]]: i64, %{{[0-9]+}}: !llvm.ptr, %[[AL:[0-9]+]]: !llvm.ptr,
// CHECK:         llvm.getelementptr %[[AL]][%[[TT]]]
// CHECK:         llvm.return
gpu.module @kernels {
  llvm.func @k(%t: i64, %a0: !llvm.ptr, %a1: !llvm.ptr, %a2: i64, %a3: i64, %a4: i64,
               %b0: !llvm.ptr, %b1: !llvm.ptr, %b2: i64, %b3: i64, %b4: i64)
      attributes {nvvm.kernel, nvvm.maxntid = array<i32: 128, 1, 1>, nvvm.minctasm = 4 : i32} {
    %p = llvm.getelementptr %a1[%t] : (!llvm.ptr, i64) -> !llvm.ptr, f32
    %v = llvm.load %p : !llvm.ptr -> f32
    llvm.store %v, %b1 : f32, !llvm.ptr
    llvm.return
  }
  // Device functions are left alone.
  // CHECK-NOT: llvm.func @helper_iree
  llvm.func @helper(%x: f32) -> f32 {
    llvm.return %x : f32
  }
}

// -----

gpu.module @kernels {
  // expected-error @+1 {{mhc-gpu-iree-kernels: kernel @other does not take mhc's kernel ABI (i64 T, then 1-D memref descriptors)}}
  llvm.func @other(%x: !llvm.ptr) attributes {nvvm.kernel} {
    llvm.return
  }
}
