// The host side of a GPU program, as gpu-to-llvm emits it, run under
// mlir-runner against libmhc_runtime_mock.so: no GPU needed. Checks the exact
// sequence of runtime calls (module load from the global constructor, one
// stream per thread, stream-ordered alloc/free, launch configuration, unload at
// exit) and that memcpy/memset really move data through the mock's memory.
// RUN: mlir-opt %s --gpu-lower-to-nvvm-pipeline="cubin-chip=sm_90 cubin-features=+ptx80 cubin-format=isa" \
// RUN: | mlir-runner --shared-libs=%mhc_lib_dir/libmhc_runtime_mock.so,%runner_utils,%c_runner_utils \
// RUN:   --entry-point-result=void \
// RUN: | FileCheck %s
//
// The same program through --mhc-gpu-pipeline (it once crashed on the
// declaration of printMemrefF32). The pipeline compiles host code for the
// GPU: @main's fill loop becomes a kernel and its buffers device buffers
// (freed on the stream, printed through a host copy); @run's hand-written
// async GPU code is left as it is.
// RUN: mhc-opt %s --mhc-gpu-pipeline="format=isa" \
// RUN: | mlir-runner --shared-libs=%mhc_lib_dir/libmhc_runtime_mock.so,%runner_utils,%c_runner_utils \
// RUN:   --entry-point-result=void \
// RUN: | FileCheck %s --check-prefix=PIPE

module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @scale(%a: f32, %x: memref<?xf32>) kernel {
      %i = gpu.global_id x
      %v = memref.load %x[%i] : memref<?xf32>
      %p = arith.mulf %a, %v : f32
      memref.store %p, %x[%i] : memref<?xf32>
      gpu.return
    }
  }

  func.func private @printMemrefF32(memref<*xf32>)

  // %x is copied to the device; its first half is then overwritten by a
  // memset; the kernel (not run by the mock) is launched; the result comes
  // back into %out.
  func.func @run(%x: memref<?xf32>, %out: memref<?xf32>) {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c128 = arith.constant 128 : index
    %n = memref.dim %x, %c0 : memref<?xf32>
    %half = arith.divui %n, %c2 : index
    %blocks = arith.ceildivui %n, %c128 : index
    %a = arith.constant 3.0 : f32
    %fill = arith.constant -1.5 : f32
    %t0 = gpu.wait async
    %d, %t1 = gpu.alloc async [%t0] (%n) : memref<?xf32>
    %t2 = gpu.memcpy async [%t1] %d, %x : memref<?xf32>, memref<?xf32>
    %lo = memref.subview %d[0] [%half] [1] : memref<?xf32> to memref<?xf32, strided<[1]>>
    %lo2 = memref.cast %lo : memref<?xf32, strided<[1]>> to memref<?xf32>
    %t3 = gpu.memset async [%t2] %lo2, %fill : memref<?xf32>, f32
    %t4 = gpu.launch_func async [%t3] @kernels::@scale
        blocks in (%blocks, %c1, %c1) threads in (%c128, %c1, %c1)
        args(%a : f32, %d : memref<?xf32>)
    %t5 = gpu.memcpy async [%t4] %out, %d : memref<?xf32>, memref<?xf32>
    %t6 = gpu.dealloc async [%t5] %d : memref<?xf32>
    gpu.wait [%t6]
    return
  }

  func.func @main() {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %n = arith.constant 6 : index
    %x = memref.alloc(%n) : memref<?xf32>
    %out = memref.alloc(%n) : memref<?xf32>
    // x[i] = 0.25 + 1.5 * i
    scf.for %i = %c0 to %n step %c1 {
      %ii = arith.index_cast %i : index to i32
      %f = arith.sitofp %ii : i32 to f32
      %s = arith.constant 1.5 : f32
      %b = arith.constant 0.25 : f32
      %m = arith.mulf %f, %s : f32
      %v = arith.addf %m, %b : f32
      memref.store %v, %x[%i] : memref<?xf32>
    }
    call @run(%x, %out) : (memref<?xf32>, memref<?xf32>) -> ()
    %u = memref.cast %out : memref<?xf32> to memref<*xf32>
    call @printMemrefF32(%u) : (memref<*xf32>) -> ()
    memref.dealloc %x : memref<?xf32>
    memref.dealloc %out : memref<?xf32>
    return
  }
}

// CHECK: mhc-mock: mgpuModuleLoadJIT(PTX of {{[0-9]+}} chars, O{{[23]}}) -> module0
// CHECK-NEXT: mhc-mock: mgpuStreamCreate() -> stream0
// CHECK-NEXT: mhc-mock: mgpuMemAlloc(24 bytes, stream0) -> buf0
// CHECK-NEXT: mhc-mock: mgpuMemcpy(buf0 <- host, 24 bytes, stream0)
// CHECK-NEXT: mhc-mock: mgpuMemset32(buf0, 0xbfc00000, 3, stream0)
// CHECK-NEXT: mhc-mock: mgpuModuleGetFunction(module0, scale)
// CHECK-NEXT: mhc-mock: mgpuLaunchKernel(scale, grid (1,1,1), block (128,1,1), smem 0, stream0, 6 params)
// CHECK-NEXT: mhc-mock: mgpuMemcpy(host <- buf0, 24 bytes, stream0)
// CHECK-NEXT: mhc-mock: mgpuMemFree(buf0, stream0)
// CHECK-NEXT: mhc-mock: mgpuStreamSynchronize(stream0)
// CHECK-NEXT: mhc-mock: mgpuStreamDestroy(stream0)
// The mock does not run kernels: memset half, copied half.
// CHECK: [-1.5,  -1.5,  -1.5,  4.75,  6.25,  7.75]
// CHECK: mhc-mock: mgpuModuleUnload(module0)

// PIPE: mhc-mock: mgpuStreamCreate() -> stream0
// PIPE-NEXT: mhc-mock: mgpuMemAlloc(24 bytes, stream0) -> [[X:buf[0-9]+]]
// PIPE-NEXT: mhc-mock: mgpuMemAlloc(24 bytes, stream0) -> [[OUT:buf[0-9]+]]
// PIPE-NEXT: mhc-mock: mgpuModuleGetFunction(module{{[0-9]}}, main_kernel)
// PIPE-NEXT: mhc-mock: mgpuLaunchKernel(main_kernel,
// PIPE-NEXT: mhc-mock: mgpuStreamSynchronize(stream0)
// PIPE-NEXT: mhc-mock: mgpuStreamDestroy(stream0)
// PIPE-NEXT: mhc-mock: mgpuStreamCreate() -> stream0
// PIPE-NEXT: mhc-mock: mgpuMemAlloc(24 bytes, stream0) -> [[D:buf[0-9]+]]
// PIPE-NEXT: mhc-mock: mgpuMemcpy([[D]] <- [[X]], 24 bytes, stream0)
// PIPE-NEXT: mhc-mock: mgpuMemset32([[D]], 0xbfc00000, 3, stream0)
// PIPE-NEXT: mhc-mock: mgpuModuleGetFunction(module{{[0-9]}}, scale)
// PIPE-NEXT: mhc-mock: mgpuLaunchKernel(scale, grid (1,1,1), block (128,1,1), smem 0, stream0, 6 params)
// PIPE-NEXT: mhc-mock: mgpuMemcpy([[OUT]] <- [[D]], 24 bytes, stream0)
// PIPE-NEXT: mhc-mock: mgpuMemFree([[D]], stream0)
// PIPE-NEXT: mhc-mock: mgpuStreamSynchronize(stream0)
// PIPE-NEXT: mhc-mock: mgpuStreamDestroy(stream0)
// PIPE-NEXT: mhc-mock: mgpuStreamCreate() -> stream0
// PIPE-NEXT: mhc-mock: mgpuMemFree([[X]], stream0)
// PIPE-NEXT: mhc-mock: mgpuMemcpy(host <- [[OUT]], 24 bytes, stream0)
// PIPE-NEXT: mhc-mock: mgpuMemFree([[OUT]], stream0)
// PIPE-NEXT: mhc-mock: mgpuStreamSynchronize(stream0)
// PIPE-NEXT: mhc-mock: mgpuStreamDestroy(stream0)
// The mock runs no kernels (x is never filled): only the memset half is known.
// PIPE: [-1.5,  -1.5,  -1.5,
