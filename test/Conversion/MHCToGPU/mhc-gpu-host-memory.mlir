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

// -----

// A constant global read by the host code (a weight, a test's input) is
// copied to the device where it is read, and freed after its last use; a
// declared (host) function gets a host copy of its memref argument, after
// the stream is synchronized; the work after the call is on a new stream.
// CHECK-LABEL: func.func @globals_and_host_calls
// CHECK:         %[[T0:.*]] = gpu.wait async
// CHECK:         %[[G:.*]] = memref.get_global @weights : memref<4xf32>
// CHECK:         %[[DEV:.*]], %[[T1:.*]] = gpu.alloc async [%[[T0]]] () : memref<4xf32>
// CHECK:         %[[T2:.*]] = gpu.memcpy async [%[[T1]]] %[[DEV]], %[[G]] : memref<4xf32>, memref<4xf32>
// CHECK:         %[[OUT:.*]], %[[T3:.*]] = gpu.alloc async [%[[T2]]] () : memref<4xf32>
// CHECK:         %[[T4:.*]] = gpu.launch_func async [%[[T3]]] @k::@scale {{.*}} args(%[[DEV]] : memref<4xf32>, %[[OUT]] : memref<4xf32>)
// CHECK:         %[[T5:.*]] = gpu.dealloc async [%[[T4]]] %[[DEV]] : memref<4xf32>
// CHECK:         %[[HOST:.*]] = memref.alloc() : memref<4xf32>
// CHECK:         %[[T6:.*]] = gpu.memcpy async [%[[T5]]] %[[HOST]], %[[OUT]] : memref<4xf32>, memref<4xf32>
// CHECK:         %[[T7:.*]] = gpu.dealloc async [%[[T6]]] %[[OUT]] : memref<4xf32>
// CHECK:         %[[U:.*]] = memref.cast %[[HOST]] : memref<4xf32> to memref<*xf32>
// CHECK:         gpu.wait [%[[T7]]]
// CHECK-NEXT:    call @printMemrefF32(%[[U]])
// CHECK-NEXT:    %[[T8:.*]] = gpu.wait async
// CHECK-NEXT:    memref.dealloc %[[HOST]] : memref<4xf32>
// CHECK:         gpu.wait [%[[T8]]]
// CHECK-NEXT:    return
module attributes {gpu.container_module} {
  memref.global "private" constant @weights : memref<4xf32> = dense<[1.0, 2.0, 3.0, 4.0]>
  gpu.module @k {
    gpu.func @scale(%x: memref<4xf32>, %y: memref<4xf32>) kernel { gpu.return }
  }
  func.func private @printMemrefF32(memref<*xf32>)
  func.func @globals_and_host_calls() {
    %c1 = arith.constant 1 : index
    %w = memref.get_global @weights : memref<4xf32>
    %out = memref.alloc() : memref<4xf32>
    gpu.launch_func @k::@scale blocks in (%c1, %c1, %c1) threads in (%c1, %c1, %c1) args(%w : memref<4xf32>, %out : memref<4xf32>)
    %u = memref.cast %out : memref<4xf32> to memref<*xf32>
    call @printMemrefF32(%u) : (memref<*xf32>) -> ()
    return
  }
}

// -----

// A call of a compiled function passes device buffers as they are, after
// the stream is synchronized (the callee runs its own stream).
// CHECK-LABEL: func.func @caller
// CHECK:         %[[T0:.*]] = gpu.wait async
// CHECK:         %[[BUF:.*]], %[[T1:.*]] = gpu.alloc async [%[[T0]]]
// CHECK:         gpu.wait [%[[T1]]]
// CHECK-NEXT:    call @callee(%[[BUF]]) : (memref<8xf32>) -> ()
// CHECK-NEXT:    %[[T2:.*]] = gpu.wait async
// CHECK:         gpu.dealloc async [%[[T2]]] %[[BUF]]
func.func @callee(%x: memref<8xf32>) {
  return
}
func.func @caller() {
  %buf = memref.alloc() : memref<8xf32>
  call @callee(%buf) : (memref<8xf32>) -> ()
  return
}

// -----

func.func private @printMemrefF32(memref<*xf32>)
func.func @strided_to_host(%n: index) {
  %a = memref.alloc() : memref<8x8xf32>
  %v = memref.subview %a[0, 0] [4, 4] [1, 1] : memref<8x8xf32> to memref<4x4xf32, strided<[8, 1]>>
  %u = memref.cast %v : memref<4x4xf32, strided<[8, 1]>> to memref<*xf32>
  // expected-error @+1 {{mhc-gpu-host-memory: a strided view of a device buffer passed to host function @printMemrefF32; not supported}}
  call @printMemrefF32(%u) : (memref<*xf32>) -> ()
  return
}

// -----

// A function argument is not known to be device memory: passed on as it is.
// CHECK-LABEL: func.func @unranked_argument
// CHECK-SAME: (%[[U:.*]]: memref<*xf32>)
// CHECK-NOT: gpu.
// CHECK: call @printMemrefF32(%[[U]])
func.func private @printMemrefF32(memref<*xf32>)
func.func @unranked_argument(%u: memref<*xf32>) {
  call @printMemrefF32(%u) : (memref<*xf32>) -> ()
  return
}

// -----

// Hand-written GPU host code that orders its work with async tokens is left
// as it is (no second stream, no copies of host buffers).
// CHECK-LABEL: func.func @hand_written_async
// CHECK-NEXT: %[[T0:.*]] = gpu.wait async
// CHECK-NEXT: %[[D:.*]], %[[T1:.*]] = gpu.alloc async [%[[T0]]] ()
// CHECK-NEXT: %[[T2:.*]] = gpu.memcpy async [%[[T1]]] %[[D]], %arg0
// CHECK-NEXT: %[[T3:.*]] = gpu.dealloc async [%[[T2]]] %[[D]]
// CHECK-NEXT: gpu.wait [%[[T3]]]
// CHECK-NEXT: return
func.func @hand_written_async(%x: memref<8xf32>) {
  %t0 = gpu.wait async
  %d, %t1 = gpu.alloc async [%t0] () : memref<8xf32>
  %t2 = gpu.memcpy async [%t1] %d, %x : memref<8xf32>, memref<8xf32>
  %t3 = gpu.dealloc async [%t2] %d : memref<8xf32>
  gpu.wait [%t3]
  return
}

// -----

func.func @async_and_buffers(%x: memref<8xf32>) {
  %a = memref.alloc() : memref<8xf32>
  // expected-error @+1 {{mhc-gpu-host-memory: this function orders GPU work with async tokens and also holds mhc kernels or buffers; mixing the two is not supported}}
  %t0 = gpu.wait async
  %t1 = gpu.memcpy async [%t0] %a, %x : memref<8xf32>, memref<8xf32>
  gpu.wait [%t1]
  return
}

// -----

func.func @host_store(%v: f32) {
  %c0 = arith.constant 0 : index
  %a = memref.alloc() : memref<8xf32>
  // expected-error @+1 {{mhc-gpu-host-memory: host code reads or writes a buffer that lives on the device; not supported}}
  memref.store %v, %a[%c0] : memref<8xf32>
  return
}
