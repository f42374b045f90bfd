// --mhc-cpu-pipeline takes a program written like upstream's CPU integration
// tests (mhc ops on bf16 and f16 and elementwise arith on tensors, bufferization.to_buffer,
// printMemrefF32) all the way to the LLVM dialect, with no bf16 conversion
// left for compiler-rt, and the result runs. Values are checked against the
// reference by the .py tests beside this file; here only the structure and
// the printed shapes.
//
// RUN: mhc-opt %s --mhc-cpu-pipeline | FileCheck %s --check-prefix=LLVM
// RUN: mhc-opt %s --mhc-cpu-pipeline | mlir-translate --mlir-to-llvmir \
// RUN:   | llc -O2 -mcpu=x86-64 | FileCheck %s --check-prefix=ASM
// RUN: mhc-opt %s --mhc-cpu-pipeline \
// RUN:   | mlir-runner -e main --entry-point-result=void \
// RUN:       --shared-libs=%runner_utils,%c_runner_utils \
// RUN:   | FileCheck %s --check-prefix=OUT

// Compiled for a baseline x86-64 (no F16C, no AVX512-BF16), the code needs no
// compiler-rt helper for bf16 (mlir-runner's process has no __truncsfbf2);
// f16 conversions call libgcc's __truncsfhf2/__extendhfsf2 (GCC >= 12), which
// mlir-runner loads. (mlir-runner itself JITs for the host CPU: --mattr does
// not reach its code generator, so this is checked on the assembly.)
// ASM-NOT: __truncsfbf2
// ASM-NOT: __extendbfsf2
// ASM-NOT: __truncdfbf2
// ASM: main:
// ASM-NOT: __truncsfbf2
// ASM-NOT: __extendbfsf2

// Only LLVM dialect ops remain; bf16 is converted with integer ops.
// LLVM-NOT: mhc.
// LLVM-NOT: linalg.
// LLVM-NOT: memref.
// LLVM-NOT: scf.
// LLVM-NOT: cf.
// LLVM-NOT: fptrunc {{.*}} to bf16
// LLVM-NOT: fpext {{.*}}bf16
// LLVM-NOT: __truncsfbf2
// LLVM: llvm.func @main()

// OUT: rank = 2 offset = 0 sizes = [3, 16]
// OUT: rank = 2 offset = 0 sizes = [3, 16]
// OUT: rank = 3 offset = 0 sizes = [3, 4, 4]
// OUT: rank = 3 offset = 0 sizes = [3, 4, 16]

func.func private @printMemrefF32(memref<*xf32>)

func.func @main() {
  %h0 = arith.constant dense<[[0.5, -1.25, 2.0, 0.75, -0.5, 1.5, -2.0, 0.25, 1.0, -0.75, 0.125, -1.5, 2.5, -0.25, 0.875, -1.0],
                              [1.0, 0.5, -0.5, -1.0, 2.0, -2.0, 0.25, -0.25, 1.5, -1.5, 0.75, -0.75, 0.125, 3.0, -3.0, 0.0625],
                              [-0.5, 0.25, 1.75, -2.25, 0.5, 1.25, -1.75, 2.25, -0.125, 0.375, -0.625, 0.875, 1.125, -1.375, 1.625, -1.875]]> : tensor<3x16xbf16>
  %h = tensor.cast %h0 : tensor<3x16xbf16> to tensor<?x16xbf16>
  %x = mhc.expand %h, streams = 4 : tensor<?x16xbf16> -> tensor<?x4x16xbf16>
  %xw16 = arith.extf %x : tensor<?x4x16xbf16> to tensor<?x4x16xf32>
  %fn = arith.constant dense<0.01> : tensor<24x64xf32>
  %scale = arith.constant dense<[1.0, 1.0, 1.0]> : tensor<3xf32>
  %base = arith.constant dense<[0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -1.0, 1.1, -1.2,
                                1.3, -1.4, 1.5, -1.6, 1.7, -1.8, 1.9, -2.0, 2.1, -2.2, 2.3, -2.4]> : tensor<24xf32>
  %mix = mhc.norm_project %x, %fn : tensor<?x4x16xbf16>, tensor<24x64xf32> -> tensor<?x24xf32>
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %comb = mhc.sinkhorn %l : tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x16xbf16>, tensor<?x4xf32> -> tensor<?x16xbf16>
  %uw = arith.extf %u : tensor<?x16xbf16> to tensor<?x16xf32>
  %yw = math.tanh %uw : tensor<?x16xf32>
  %y = arith.truncf %yw : tensor<?x16xf32> to tensor<?x16xbf16>
  %xn = mhc.post_res %y, %x, %post, %comb : tensor<?x16xbf16>, tensor<?x4x16xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x16xbf16>

  // The same mix in f16.
  %xh = arith.truncf %xw16 : tensor<?x4x16xf32> to tensor<?x4x16xf16>
  %uh = mhc.pre_apply %xh, %pre : tensor<?x4x16xf16>, tensor<?x4xf32> -> tensor<?x16xf16>
  %uhw = arith.extf %uh : tensor<?x16xf16> to tensor<?x16xf32>
  %m3 = bufferization.to_buffer %uhw : tensor<?x16xf32> to memref<?x16xf32>
  %p3 = memref.cast %m3 : memref<?x16xf32> to memref<*xf32>
  call @printMemrefF32(%p3) : (memref<*xf32>) -> ()

  %m0 = bufferization.to_buffer %uw : tensor<?x16xf32> to memref<?x16xf32>
  %p0 = memref.cast %m0 : memref<?x16xf32> to memref<*xf32>
  call @printMemrefF32(%p0) : (memref<*xf32>) -> ()
  %m1 = bufferization.to_buffer %comb : tensor<?x4x4xf32> to memref<?x4x4xf32>
  %p1 = memref.cast %m1 : memref<?x4x4xf32> to memref<*xf32>
  call @printMemrefF32(%p1) : (memref<*xf32>) -> ()
  %xw = arith.extf %xn : tensor<?x4x16xbf16> to tensor<?x4x16xf32>
  %m2 = bufferization.to_buffer %xw : tensor<?x4x16xf32> to memref<?x4x16xf32>
  %p2 = memref.cast %m2 : memref<?x4x16xf32> to memref<*xf32>
  call @printMemrefF32(%p2) : (memref<*xf32>) -> ()
  return
}
