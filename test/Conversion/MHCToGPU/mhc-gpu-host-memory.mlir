// RUN: mhc-opt %s --split-input-file --verify-diagnostics --mhc-gpu-host-memory | FileCheck %s

// Host buffers live on the device, on one stream: a temporary is freed after
// its last use (through views), a returned buffer is left to the caller, a
// declaration is left alone.
// CHECK-LABEL: func.func private @printMemrefF32(memref<*xf32>)
// CHECK-LABEL: func.func @buffers
// CHECK:         %[[T0:.*]] = gpu.wait async
// CHECK:         %[[TMP:.*]], %[[T1:.*]] = gpu.alloc async [%[[T0]]] (%{{.*}}) : memref<?x4xf32>
// CHECK:         %[[OUT:.*]], %[[T2:.*]] = gpu.alloc async [%[[T1]]] (%{{.*}}) : memref<?xf32>
// CHECK:         memref.collapse_shape %[[TMP]]
// CHECK:         memref.dim
// CHECK:         %[[T3:.*]] = gpu.dealloc async [%[[T2]]] %[[TMP]]
// CHECK-NOT:     gpu.dealloc
// CHECK:         gpu.wait [%[[T3]]]
// CHECK-NEXT:    return %[[OUT]]
func.func private @printMemrefF32(memref<*xf32>)
func.func @buffers(%n: index) -> memref<?xf32> {
  %c0 = arith.constant 0 : index
  %tmp = memref.alloc(%n) : memref<?x4xf32>
  %out = memref.alloc(%n) : memref<?xf32>
  %flat = memref.collapse_shape %tmp [[0, 1]] : memref<?x4xf32> into memref<?xf32>
  %d = memref.dim %flat, %c0 : memref<?xf32>
  return %out : memref<?xf32>
}

// -----

// A host-side copy would dereference device pointers.
func.func @copy(%n: index) -> memref<?xf32> {
  %a = memref.alloc(%n) : memref<?xf32>
  %b = memref.alloc(%n) : memref<?xf32>
  // expected-error @+1 {{mhc-gpu-host-memory: bufferization produced a host copy of a device buffer; not supported}}
  memref.copy %a, %b : memref<?xf32> to memref<?xf32>
  return %b : memref<?xf32>
}

// -----

func.func @nested(%n: index, %c: i1) {
  scf.if %c {
    // expected-error @+1 {{mhc-gpu-host-memory: allocation in nested control flow is not supported}}
    %a = memref.alloc(%n) : memref<?xf32>
  }
  return
}
