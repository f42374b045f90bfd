// Whole programs through --mhc-gpu-pipeline, run here against the mock
// runtime (no GPU; kernels are not run, memory copies are real): constants
// are copied to the device, the tensor math between mhc ops (math.tanh, the
// casts) runs as kernels next to the mhc kernels, and printMemrefF32 gets a
// host copy after the stream is synchronized. The same programs run on the
// CPU path (examples/sublayer.mlir is the README's CPU example); their GPU
// results are checked on the H200 by test/Integration/GPU/harness/run_programs.py.
//
// REQUIRES: ptxas
// RUN: mhc-opt %s --mhc-gpu-pipeline="format=isa" \
// RUN: | mlir-runner -e main --entry-point-result=void \
// RUN:     --shared-libs=%mhc_lib_dir/libmhc_runtime_mock.so,%runner_utils,%c_runner_utils \
// RUN: | FileCheck %s
// RUN: mhc-opt %mhc_src_root/examples/sublayer.mlir --mhc-gpu-pipeline="format=isa" \
// RUN: | mlir-runner -e main --entry-point-result=void \
// RUN:     --shared-libs=%mhc_lib_dir/libmhc_runtime_mock.so,%runner_utils,%c_runner_utils \
// RUN: | FileCheck %s --check-prefix=SUBLAYER

func.func private @printMemrefF32(memref<*xf32>)

func.func @main() {
  %x = arith.constant dense<[[1.0, -2.0, 3.5]]> : tensor<1x3xf32>
  %streams = mhc.expand %x, streams = 2 : tensor<1x3xf32> -> tensor<1x2x3xf32>
  %y = math.tanh %x : tensor<1x3xf32>
  %h = mhc.collapse %streams : tensor<1x2x3xf32> -> tensor<1x3xf32>
  %sum = arith.addf %h, %y : tensor<1x3xf32>
  // read_only: the constant itself (its device copy) goes to the printer; a
  // writable buffer would be a fresh copy, made by a kernel.
  %b0 = bufferization.to_buffer %x read_only : tensor<1x3xf32> to memref<1x3xf32>
  %p0 = memref.cast %b0 : memref<1x3xf32> to memref<*xf32>
  call @printMemrefF32(%p0) : (memref<*xf32>) -> ()
  %b1 = bufferization.to_buffer %sum : tensor<1x3xf32> to memref<1x3xf32>
  %p1 = memref.cast %b1 : memref<1x3xf32> to memref<*xf32>
  call @printMemrefF32(%p1) : (memref<*xf32>) -> ()
  return
}

// Kernels: the mhc ones in one module, the host math in another.
// CHECK-COUNT-2: mgpuModuleLoadJIT
// CHECK:       mgpuStreamCreate() -> stream0
// Device copies of the constant, one per read.
// CHECK-COUNT-2: mgpuMemcpy(buf{{[0-9]+}} <- host, 12 bytes, stream0)
// CHECK:       mgpuLaunchKernel(mhc_expand_0,
// CHECK:       mgpuLaunchKernel(mhc_collapse_1,
// tanh + add: one fused elementwise kernel.
// CHECK:       mgpuLaunchKernel(main_kernel, grid (1,1,1), block (256,1,1)
// The printer reads a host copy, after the stream is synchronized.
// CHECK:       mgpuMemcpy(host <- buf{{[0-9]+}}, 12 bytes, stream0)
// CHECK:       mgpuStreamSynchronize(stream0)
// CHECK-NEXT:  mgpuStreamDestroy(stream0)
// CHECK-NEXT:  Unranked Memref {{.*}} sizes = [1, 3]
// CHECK-NEXT:  {{\[}}[1,   -2,   3.5]]
// CHECK-NEXT:  mhc-mock: mgpuStreamCreate() -> stream0
// CHECK-NEXT:  mhc-mock: mgpuMemcpy(host <- buf{{[0-9]+}}, 12 bytes, stream0)
// CHECK:       mgpuStreamSynchronize(stream0)
// CHECK-NEXT:  mgpuStreamDestroy(stream0)
// CHECK-NEXT:  Unranked Memref {{.*}} sizes = [1, 3]
// CHECK:       mgpuModuleUnload

// examples/sublayer.mlir: its four constants copied over, the pre and post
// kernels, the tanh (with its casts) between them, one host copy to print.
// SUBLAYER:       mgpuStreamCreate() -> stream0
// SUBLAYER-COUNT-4: mgpuMemcpy(buf{{[0-9]+}} <- host
// SUBLAYER:       mgpuLaunchKernel(mhc_pre_0, grid (1,1,1), block (128,1,1)
// SUBLAYER:       mgpuLaunchKernel(main_kernel
// SUBLAYER:       mgpuLaunchKernel(mhc_post_1,
// SUBLAYER:       mgpuLaunchKernel(main_kernel
// SUBLAYER:       mgpuMemcpy(host <- buf{{[0-9]+}}, 256 bytes, stream0)
// SUBLAYER:       mgpuStreamSynchronize(stream0)
// SUBLAYER-NEXT:  mgpuStreamDestroy(stream0)
// SUBLAYER-NEXT:  Unranked Memref {{.*}} sizes = [2, 4, 8]
