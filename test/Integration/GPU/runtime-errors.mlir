// libmhc_runtime.so reports a failing driver call with the call, the CUDA
// error and what it was doing -- never silently. The driver is pointed at a
// path that does not exist, so this runs (and fails the same way) on any
// machine, with or without a GPU.
// RUN: mlir-opt %s --gpu-lower-to-nvvm-pipeline="cubin-chip=sm_90 cubin-features=+ptx80 cubin-format=isa" -o %t.mlir
//
// Default mode: report, then abort.
// RUN: env MHC_LIBCUDA=%t.nonexistent/libcuda.so.1 not --crash mlir-runner %t.mlir \
// RUN:   --shared-libs=%mhc_lib_dir/libmhc_runtime.so,%c_runner_utils \
// RUN:   --entry-point-result=void 2>&1 | FileCheck %s --check-prefix=ABORT
//
// Sticky mode: report once, record the error, turn later calls into no-ops;
// the program reads the error through the C API and carries on.
// RUN: env MHC_LIBCUDA=%t.nonexistent/libcuda.so.1 MHC_RUNTIME_ERRORS=sticky mlir-runner %t.mlir \
// RUN:   --shared-libs=%mhc_lib_dir/libmhc_runtime.so,%c_runner_utils \
// RUN:   --entry-point-result=void 2>&1 | FileCheck %s --check-prefix=STICKY
//
// The same through --mhc-gpu-pipeline (which once crashed on the function
// declarations).
// RUN: mhc-opt %s --mhc-gpu-pipeline="format=isa" -o %t.mhc.mlir
// RUN: env MHC_LIBCUDA=%t.nonexistent/libcuda.so.1 not --crash mlir-runner %t.mhc.mlir \
// RUN:   --shared-libs=%mhc_lib_dir/libmhc_runtime.so,%c_runner_utils \
// RUN:   --entry-point-result=void 2>&1 | FileCheck %s --check-prefix=ABORT

module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @touch(%x: memref<?xf32>) kernel {
      gpu.return
    }
  }

  func.func private @mhcRuntimeGetLastError() -> i32
  func.func private @mhcRuntimeClearError()

  func.func @main() {
    %c1 = arith.constant 1 : index
    %c8 = arith.constant 8 : index
    %t0 = gpu.wait async
    %d, %t1 = gpu.alloc async [%t0] (%c8) : memref<?xf32>
    %t2 = gpu.launch_func async [%t1] @kernels::@touch blocks in (%c1, %c1, %c1)
        threads in (%c8, %c1, %c1) args(%d : memref<?xf32>)
    %t3 = gpu.dealloc async [%t2] %d : memref<?xf32>
    gpu.wait [%t3]
    %e = call @mhcRuntimeGetLastError() : () -> i32
    vector.print %e : i32
    call @mhcRuntimeClearError() : () -> ()
    %e2 = call @mhcRuntimeGetLastError() : () -> i32
    vector.print %e2 : i32
    return
  }
}

// The first call is the module load in the global constructor.
// ABORT: mhc_runtime: cuInit failed: CUDA driver not available (dlopen("{{.*}}nonexistent/libcuda.so.1"): {{.*}})
// ABORT-NOT: mhc_runtime:

// STICKY: mhc_runtime: cuInit failed: CUDA driver not available
// STICKY-NOT: mhc_runtime:
// CUDA_ERROR_NOT_INITIALIZED, then cleared.
// STICKY: {{^}}3
// STICKY-NEXT: {{^}}0
