// --mhc-split-deallocs (a step of --mhc-cpu-pipeline): one dealloc per group
// of memrefs that may alias, and retained values dropped where they provably
// do not alias, so that buffer-deallocation-simplification stays linear.
// RUN: mhc-opt %s -split-input-file --mhc-split-deallocs | FileCheck %s

// Distinct allocations each get their own dealloc. The returned buffer keeps
// its retain (it must not be freed); the others drop it, and the updated
// condition is the disjunction over the parts that keep it.
// CHECK-LABEL: func.func @distinct_allocations
// CHECK-SAME:    (%[[C:.*]]: i1)
// CHECK:         %[[A:.*]] = memref.alloc
// CHECK:         %[[B:.*]] = memref.alloc
// CHECK:         %[[R:.*]] = memref.alloc
// CHECK:         bufferization.dealloc (%[[A]] : memref<4xf32>) if (%[[C]]){{$}}
// CHECK:         bufferization.dealloc (%[[B]] : memref<4xf32>) if (%[[C]]){{$}}
// CHECK:         %[[U:.*]] = bufferization.dealloc (%[[R]] : memref<4xf32>) if (%[[C]]) retain (%[[R]] : memref<4xf32>)
// CHECK-NOT:     bufferization.dealloc
// CHECK:         return %[[R]], %[[U]]
func.func @distinct_allocations(%c: i1) -> (memref<4xf32>, i1) {
  %a = memref.alloc() : memref<4xf32>
  %b = memref.alloc() : memref<4xf32>
  %r = memref.alloc() : memref<4xf32>
  %u = bufferization.dealloc (%a, %b, %r : memref<4xf32>, memref<4xf32>, memref<4xf32>) if (%c, %c, %c) retain (%r : memref<4xf32>)
  return %r, %u : memref<4xf32>, i1
}

// -----

// A view shares its allocation's group; a loop result joins the allocations
// it may be (its init); function arguments stay together. Groups come in the
// order of their first memref.
// CHECK-LABEL: func.func @groups
// CHECK-SAME:    (%[[ARG0:[^:]*]]: memref<4xf32>, %[[ARG1:[^:]*]]: memref<4xf32>, %[[C:.*]]: i1)
// CHECK:         %[[A:.*]] = memref.alloc
// CHECK:         %[[V:.*]] = memref.subview %[[A]]
// CHECK:         %[[INIT:.*]] = memref.alloc
// CHECK:         %[[LOOP:.*]] = scf.for
// CHECK:         %[[OTHER:.*]] = memref.alloc
// CHECK:         bufferization.dealloc (%[[A]], %[[V]] : memref<4xf32>, memref<2xf32, strided<[1]>>) if (%[[C]], %[[C]]){{$}}
// CHECK:         bufferization.dealloc (%[[ARG0]], %[[ARG1]] : memref<4xf32>, memref<4xf32>) if (%[[C]], %[[C]]){{$}}
// CHECK:         bufferization.dealloc (%[[INIT]], %[[LOOP]] : memref<4xf32>, memref<4xf32>) if (%[[C]], %[[C]]){{$}}
// CHECK:         bufferization.dealloc (%[[OTHER]] : memref<4xf32>) if (%[[C]]){{$}}
// CHECK-NOT:     bufferization.dealloc
func.func @groups(%arg0: memref<4xf32>, %arg1: memref<4xf32>, %c: i1) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c2 = arith.constant 2 : index
  %a = memref.alloc() : memref<4xf32>
  %v = memref.subview %a[0] [2] [1] : memref<4xf32> to memref<2xf32, strided<[1]>>
  %init = memref.alloc() : memref<4xf32>
  %loop = scf.for %i = %c0 to %c2 step %c1 iter_args(%x = %init) -> memref<4xf32> {
    scf.yield %x : memref<4xf32>
  }
  %other = memref.alloc() : memref<4xf32>
  bufferization.dealloc (%a, %arg0, %init, %v, %loop, %arg1, %other : memref<4xf32>, memref<4xf32>, memref<4xf32>, memref<2xf32, strided<[1]>>, memref<4xf32>, memref<4xf32>, memref<4xf32>) if (%c, %c, %c, %c, %c, %c, %c)
  return
}

// -----

// A call to a function that returns buffers it allocates gives a fresh
// buffer; a call to an external function may return anything, so that
// dealloc is left whole.
func.func private @fresh(%x: memref<4xf32>) -> memref<4xf32> {
  %a = memref.alloc() : memref<4xf32>
  memref.copy %x, %a : memref<4xf32> to memref<4xf32>
  return %a : memref<4xf32>
}
func.func private @unknown(%x: memref<4xf32>) -> memref<4xf32>

// CHECK-LABEL: func.func @calls
// CHECK:         %[[F:.*]] = call @fresh
// CHECK:         %[[A:.*]] = memref.alloc
// CHECK:         bufferization.dealloc (%[[F]] : memref<4xf32>) if
// CHECK:         bufferization.dealloc (%[[A]] : memref<4xf32>) if
// CHECK:         %[[U:.*]] = call @unknown
// CHECK:         %[[B:.*]] = memref.alloc
// CHECK:         bufferization.dealloc (%[[U]], %[[B]] : memref<4xf32>, memref<4xf32>) if
func.func @calls(%x: memref<4xf32>, %c: i1) {
  %f = func.call @fresh(%x) : (memref<4xf32>) -> memref<4xf32>
  %a = memref.alloc() : memref<4xf32>
  bufferization.dealloc (%f, %a : memref<4xf32>, memref<4xf32>) if (%c, %c)
  %u = func.call @unknown(%x) : (memref<4xf32>) -> memref<4xf32>
  %b = memref.alloc() : memref<4xf32>
  bufferization.dealloc (%u, %b : memref<4xf32>, memref<4xf32>) if (%c, %c)
  return
}
