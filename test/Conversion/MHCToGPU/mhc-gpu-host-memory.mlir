// RUN: mhc-opt %s --split-input-file --verify-diagnostics --mhc-gpu-host-memory | FileCheck %s

// Buffers of GPU code live on the device, on one stream: a temporary a
// kernel uses is freed after its last use (through views), a returned buffer
// is left to the caller, a declaration is left alone.
// CHECK-LABEL: func.func private @printMemrefF32(memref<*xf32>)
// CHECK-LABEL: func.func @buffers
// CHECK:         %[[T0:.*]] = gpu.wait async
// CHECK:         %[[TMP:.*]], %[[T1:.*]] = gpu.alloc async [%[[T0]]] (%{{.*}}) : memref<?x4xf32>
// CHECK:         %[[OUT:.*]], %[[T2:.*]] = gpu.alloc async [%[[T1]]] (%{{.*}}) : memref<?xf32>
// CHECK:         %[[FLAT:.*]] = memref.collapse_shape %[[TMP]]
// CHECK:         memref.dim
// CHECK:         %[[T3:.*]] = gpu.launch_func async [%[[T2]]] @k::@f {{.*}} args(%[[FLAT]] : memref<?xf32>, %[[OUT]] : memref<?xf32>)
// CHECK:         %[[T4:.*]] = gpu.dealloc async [%[[T3]]] %[[TMP]]
// CHECK-NOT:     gpu.dealloc
// CHECK:         gpu.wait [%[[T4]]]
// CHECK-NEXT:    return %[[OUT]]
module attributes {gpu.container_module} {
  gpu.module @k {
    gpu.func @f(%a: memref<?xf32>, %b: memref<?xf32>) kernel {
      gpu.return
    }
  }
  func.func private @printMemrefF32(memref<*xf32>)
  func.func @buffers(%n: index) -> memref<?xf32> {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %tmp = memref.alloc(%n) : memref<?x4xf32>
    %out = memref.alloc(%n) : memref<?xf32>
    %flat = memref.collapse_shape %tmp [[0, 1]] : memref<?x4xf32> into memref<?xf32>
    %d = memref.dim %flat, %c0 : memref<?xf32>
    gpu.launch_func @k::@f blocks in (%d, %c1, %c1) threads in (%c1, %c1, %c1) args(%flat : memref<?xf32>, %out : memref<?xf32>)
    return %out : memref<?xf32>
  }
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

func.func @callee(%a: memref<?xf32>) {
  return
}
func.func @nested(%n: index, %c: i1) {
  scf.if %c {
    // expected-error @+1 {{mhc-gpu-host-memory: allocation in nested control flow is not supported}}
    %a = memref.alloc(%n) : memref<?xf32>
    func.call @callee(%a) : (memref<?xf32>) -> ()
  }
  return
}

// -----

// Hand-written host code around GPU work: a buffer that only host code
// touches (stores, a call of a declaration) stays in host memory, and async
// GPU code that orders itself is left as it is.
// CHECK-LABEL: func.func @host_buffer
// CHECK:         %[[H:.*]] = memref.alloc() : memref<4xf32>
// CHECK:         memref.store %{{.*}}, %[[H]]
// CHECK:         %[[D:.*]], %[[T1:.*]] = gpu.alloc async [%{{.*}}] () : memref<4xf32>
// CHECK:         gpu.memcpy async [%[[T1]]] %[[D]], %[[H]]
// CHECK-NOT:     gpu.wait async
// CHECK:         call @printMemrefF32
// CHECK:         memref.dealloc %[[H]]
func.func private @printMemrefF32(memref<*xf32>)
func.func @host_buffer() {
  %c0 = arith.constant 0 : index
  %one = arith.constant 1.0 : f32
  %h = memref.alloc() : memref<4xf32>
  memref.store %one, %h[%c0] : memref<4xf32>
  %t0 = gpu.wait async
  %d, %t1 = gpu.alloc async [%t0] () : memref<4xf32>
  %t2 = gpu.memcpy async [%t1] %d, %h : memref<4xf32>, memref<4xf32>
  %t3 = gpu.dealloc async [%t2] %d : memref<4xf32>
  gpu.wait [%t3]
  %u = memref.cast %h : memref<4xf32> to memref<*xf32>
  call @printMemrefF32(%u) : (memref<*xf32>) -> ()
  memref.dealloc %h : memref<4xf32>
  return
}

// -----

// A buffer that a kernel takes and host code reads cannot be placed.
module attributes {gpu.container_module} {
  gpu.module @k {
    gpu.func @f(%a: memref<4xf32>) kernel {
      gpu.return
    }
  }
  func.func @mixed() -> f32 {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %a = memref.alloc() : memref<4xf32>
    gpu.launch_func @k::@f blocks in (%c1, %c1, %c1) threads in (%c1, %c1, %c1) args(%a : memref<4xf32>)
    // expected-error @+1 {{mhc-gpu-host-memory: host code uses a buffer that GPU code reads or writes (kernels and mhc functions take device memory); not supported}}
    %v = memref.load %a[%c0] : memref<4xf32>
    return %v : f32
  }
}

// -----

// A function that orders GPU work with async tokens and also has
// synchronous launches (here from mhc kernels) cannot be put on one stream.
module attributes {gpu.container_module} {
  gpu.module @k {
    gpu.func @f(%a: memref<4xf32>) kernel {
      gpu.return
    }
  }
  func.func @both() {
    %c1 = arith.constant 1 : index
    %a = memref.alloc() : memref<4xf32>
    gpu.launch_func @k::@f blocks in (%c1, %c1, %c1) threads in (%c1, %c1, %c1) args(%a : memref<4xf32>)
    // expected-error @+1 {{mhc-gpu-host-memory: this function orders GPU work with async tokens and also holds mhc kernels or buffers; mixing the two is not supported}}
    %t = gpu.wait async
    gpu.wait [%t]
    return
  }
}
