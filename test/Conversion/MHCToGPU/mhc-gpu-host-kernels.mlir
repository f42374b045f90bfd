// RUN: mhc-opt %s --split-input-file --verify-diagnostics --mhc-gpu-host-kernels | FileCheck %s

// A parallel loop (an elementwise op after linalg-to-parallel-loops) becomes
// one kernel over its flattened iteration space: 256 threads a block, at
// least one block, thread i runs iteration i, the last dim fastest.
// CHECK-LABEL: func.func @elementwise
// CHECK-SAME:    (%[[A:[a-z0-9_]+]]: memref<?x64xf32>, %[[B:[a-z0-9_]+]]: memref<?x64xf32>)
// CHECK:         %[[N:[a-z0-9_]+]] = memref.dim %[[A]]
// CHECK:         %[[ROWS:[a-z0-9_]+]] = arith.select %{{.*}}, %{{.*}}, %{{.*}} : index
// CHECK:         %[[ROWSX:[a-z0-9_]+]] = arith.muli %{{.*}}, %[[ROWS]] : index
// CHECK:         %[[COLS:[a-z0-9_]+]] = arith.select %{{.*}}, %{{.*}}, %{{.*}} : index
// CHECK:         %[[TOTAL:[a-z0-9_]+]] = arith.muli %[[ROWSX]], %[[COLS]] : index
// CHECK:         %[[BLOCKS:[a-z0-9_]+]] = arith.ceildivui %[[TOTAL]], %[[C256:[a-z0-9_]+]] : index
// CHECK:         %[[GRID:[a-z0-9_]+]] = arith.maxui %[[BLOCKS]], %{{.*}} : index
// CHECK:         gpu.launch blocks(%[[BX:[a-z0-9_]+]], %{{[a-z0-9_]+}}, %{{[a-z0-9_]+}}) in (%{{[a-z0-9_]+}} = %[[GRID]], {{.*}} threads(%[[TX:[a-z0-9_]+]], %{{[a-z0-9_]+}}, %{{[a-z0-9_]+}}) in (%{{[a-z0-9_]+}} = %[[T256:[a-z0-9_]+]],
// CHECK:           %[[BASE:[a-z0-9_]+]] = arith.muli %[[BX]], %[[T256]] : index
// CHECK:           %[[I:[a-z0-9_]+]] = arith.addi %[[BASE]], %[[TX]] : index
// CHECK:           %[[IN:[a-z0-9_]+]] = arith.cmpi ult, %[[I]], %[[TOTAL]] : index
// CHECK:           scf.if %[[IN]] {
// CHECK:             %[[COL:[a-z0-9_]+]] = arith.remui %[[I]], %[[COLS]] : index
// CHECK:             %[[ROW:[a-z0-9_]+]] = arith.divui %[[I]], %[[COLS]] : index
// CHECK:             %[[J:[a-z0-9_]+]] = arith.addi %{{.*}}, %{{.*}} : index
// CHECK:             %[[R:[a-z0-9_]+]] = arith.addi %{{.*}}, %{{.*}} : index
// CHECK:             %[[V:[a-z0-9_]+]] = memref.load %[[A]][%[[R]], %[[J]]]
// CHECK:             %[[T:[a-z0-9_]+]] = math.tanh %[[V]]
// CHECK:             memref.store %[[T]], %[[B]][%[[R]], %[[J]]]
// CHECK:           }
// CHECK:           gpu.terminator
// CHECK-NOT:     scf.parallel
func.func @elementwise(%a: memref<?x64xf32>, %b: memref<?x64xf32>) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c64 = arith.constant 64 : index
  %n = memref.dim %a, %c0 : memref<?x64xf32>
  scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c64) step (%c1, %c1) {
    %v = memref.load %a[%i, %j] : memref<?x64xf32>
    %t = math.tanh %v : f32
    memref.store %t, %b[%i, %j] : memref<?x64xf32>
    scf.reduce
  }
  return
}

// -----

// A matmul's k loop and a copy between strided views run inside the threads;
// a full reduction (no parallel dim) and a rank-0 store are one-thread
// kernels. Launches, host scalar code and declarations are left alone.
// CHECK-LABEL: func.func @mixed
// CHECK:         gpu.launch
// CHECK:           scf.for
// CHECK:           gpu.terminator
// CHECK:         memref.subview
// CHECK:         gpu.launch
// CHECK:           memref.load %{{.*}} : memref<4x4xf32, strided<[8, 1]>>
// CHECK:           memref.store
// CHECK:         %[[ONE:[a-z0-9_]+]] = arith.constant 1 : index
// CHECK:         gpu.launch blocks({{.*}}) in (%{{.*}} = %[[ONE]],
// CHECK:           arith.cmpi eq
// CHECK:           scf.if
// CHECK:             scf.for
// CHECK:         gpu.launch
// CHECK:           memref.store %{{.*}}[] : memref<f32>
// CHECK:         gpu.launch_func @kernels::@k
// CHECK-NOT:     memref.copy
// CHECK:         return
module attributes {gpu.container_module} {
func.func private @printMemrefF32(memref<*xf32>)
gpu.module @kernels {
  gpu.func @k(%x: memref<f32>) kernel { gpu.return }
}
func.func @mixed(%a: memref<8x8xf32>, %b: memref<8x8xf32>, %c: memref<8x8xf32>,
                 %s: memref<f32>) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c8 = arith.constant 8 : index
  %zero = arith.constant 0.0 : f32
  scf.parallel (%i, %j) = (%c0, %c0) to (%c8, %c8) step (%c1, %c1) {
    scf.for %k = %c0 to %c8 step %c1 {
      %x = memref.load %a[%i, %k] : memref<8x8xf32>
      %y = memref.load %b[%k, %j] : memref<8x8xf32>
      %z = memref.load %c[%i, %j] : memref<8x8xf32>
      %p = arith.mulf %x, %y : f32
      %q = arith.addf %z, %p : f32
      memref.store %q, %c[%i, %j] : memref<8x8xf32>
    }
    scf.reduce
  }
  %from = memref.subview %a[0, 0] [4, 4] [1, 1] : memref<8x8xf32> to memref<4x4xf32, strided<[8, 1]>>
  %to = memref.subview %b[4, 4] [4, 4] [1, 1] : memref<8x8xf32> to memref<4x4xf32, strided<[8, 1], offset: 36>>
  memref.copy %from, %to : memref<4x4xf32, strided<[8, 1]>> to memref<4x4xf32, strided<[8, 1], offset: 36>>
  scf.for %i = %c0 to %c8 step %c1 {
    %v = memref.load %c[%i, %i] : memref<8x8xf32>
    %acc = memref.load %s[] : memref<f32>
    %sum = arith.addf %v, %acc : f32
    memref.store %sum, %s[] : memref<f32>
  }
  memref.store %zero, %s[] : memref<f32>
  gpu.launch_func @kernels::@k blocks in (%c1, %c1, %c1) threads in (%c1, %c1, %c1) args(%s : memref<f32>)
  return
}
}

// -----

// Host code cannot use an element of a device buffer.
func.func @scalar_on_host(%a: memref<4xindex>) -> memref<?xf32> {
  %c0 = arith.constant 0 : index
  // expected-error @+1 {{mhc-gpu-host-kernels: host code reads an element of a device buffer (memref.load); the GPU pipeline keeps every buffer on the device}}
  %n = memref.load %a[%c0] : memref<4xindex>
  %out = memref.alloc(%n) : memref<?xf32>
  return %out : memref<?xf32>
}

// -----

func.func @outside_entry_block(%a: memref<4xf32>, %flag: i1) {
  %c0 = arith.constant 0 : index
  %x = arith.constant 1.0 : f32
  cf.cond_br %flag, ^store, ^done
^store:
  // expected-error @+1 {{mhc-gpu-host-kernels: device memory accessed outside the function's entry block}}
  memref.store %x, %a[%c0] : memref<4xf32>
  cf.br ^done
^done:
  return
}

// -----

func.func @parallel_reduction(%a: memref<8xf32>) -> f32 {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c8 = arith.constant 8 : index
  %zero = arith.constant 0.0 : f32
  // expected-error @+1 {{mhc-gpu-host-kernels: a parallel loop with reductions is not supported on the host}}
  %sum = scf.parallel (%i) = (%c0) to (%c8) step (%c1) init (%zero) -> f32 {
    %v = memref.load %a[%i] : memref<8xf32>
    scf.reduce(%v : f32) {
    ^bb0(%l: f32, %r: f32):
      %s = arith.addf %l, %r : f32
      scf.reduce.return %s : f32
    }
  }
  return %sum : f32
}
