// The host side of --mhc-gpu-pipeline, run under mlir-runner against the
// mock runtime (no GPU): the kernels are compiled to PTX (format=isa, no
// ptxas needed) but not run; the test checks what the generated host code asks
// the runtime for -- module load at start, one stream per function, device
// buffers for the inputs, one launch per fused group, results left to the
// caller, temporaries freed, module unloaded at exit.
// RUN: mhc-opt %s --mhc-gpu-pipeline="chip=sm_90 format=isa" \
// RUN: | mlir-runner --shared-libs=%mhc_lib_dir/libmhc_runtime_mock.so,%c_runner_utils \
// RUN:   --entry-point-result=void \
// RUN: | FileCheck %s

module {
  func.func @pre(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>, %scale: tensor<3xf32>,
                 %base: tensor<24xf32>)
      -> (tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>) {
    %mix = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
    %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
    %comb = mhc.sinkhorn %l : tensor<?x4x4xf32>
    %u = mhc.pre_apply %x, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
    return %u, %post, %comb : tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>
  }

  func.func @post(%y: tensor<?x64xbf16>, %x: tensor<?x4x64xbf16>, %post: tensor<?x4xf32>,
                  %comb: tensor<?x4x4xf32>) -> tensor<?x4x64xbf16> {
    %xn = mhc.post_res %y, %x, %post, %comb : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
    return %xn : tensor<?x4x64xbf16>
  }

  func.func @main() {
    %t = arith.constant 1000 : index
    %x = tensor.empty(%t) : tensor<?x4x64xbf16>
    %fn = tensor.empty() : tensor<24x256xf32>
    %scale = tensor.empty() : tensor<3xf32>
    %base = tensor.empty() : tensor<24xf32>
    %u, %post, %comb = call @pre(%x, %fn, %scale, %base) : (tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>) -> (tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>)
    %xn = call @post(%u, %x, %post, %comb) : (tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>) -> tensor<?x4x64xbf16>
    return
  }
}

// T = 1000 tokens, n = 4, C = 64, bf16.
// CHECK: mhc-mock: mgpuModuleLoadJIT(PTX of {{[0-9]+}} chars, O{{[0-3]}}) -> module0
// main's inputs live on the device: x 1000*4*64*2, fn 24*256*4, scale 3*4, base 24*4 bytes.
// CHECK-DAG: mhc-mock: mgpuMemAlloc(512000 bytes, stream0) -> [[X:buf[0-9]+]]
// CHECK-DAG: mhc-mock: mgpuMemAlloc(24576 bytes, stream0) -> [[FN:buf[0-9]+]]
// CHECK-DAG: mhc-mock: mgpuMemAlloc(12 bytes, stream0) -> [[SCALE:buf[0-9]+]]
// CHECK-DAG: mhc-mock: mgpuMemAlloc(96 bytes, stream0) -> [[BASE:buf[0-9]+]]
// @pre allocates its results (post 1000*4*4, comb 1000*16*4, u 1000*64*2) and
// runs the whole "pre" group -- norm_project, split_mixes, sinkhorn,
// pre_apply -- as one kernel.
// CHECK-DAG: mhc-mock: mgpuMemAlloc(16000 bytes, stream0) -> [[POST:buf[0-9]+]]
// CHECK-DAG: mhc-mock: mgpuMemAlloc(64000 bytes, stream0) -> [[COMB:buf[0-9]+]]
// CHECK-DAG: mhc-mock: mgpuMemAlloc(128000 bytes, stream0) -> [[U:buf[0-9]+]]
// CHECK: mhc-mock: mgpuLaunchKernel(mhc_pre_{{[0-9]+}}, grid ({{[0-9]+}},1,1), block ({{[0-9]+}},1,1), smem {{[0-9]+}}, stream0, {{[0-9]+}} params)
// CHECK-NOT: mgpuLaunchKernel
// CHECK-NOT: mgpuMemFree([[POST]]
// CHECK-NOT: mgpuMemFree([[COMB]]
// CHECK-NOT: mgpuMemFree([[U]]
// @post: x_next 1000*4*64*2 bytes, one kernel.
// CHECK: mhc-mock: mgpuMemAlloc(512000 bytes, stream0) -> [[XN:buf[0-9]+]]
// CHECK: mhc-mock: mgpuLaunchKernel(mhc_post_{{[0-9]+}}, grid ({{[0-9]+}},1,1), block ({{[0-9]+}},1,1), smem {{[0-9]+}}, stream0, {{[0-9]+}} params)
// CHECK-NOT: mgpuLaunchKernel
// main frees its inputs after their last use.
// CHECK-DAG: mhc-mock: mgpuMemFree([[X]], stream0)
// CHECK: mhc-mock: mgpuModuleUnload(module0)
