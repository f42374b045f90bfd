// The toolkit's ptxas decides which chips it can assemble: CUDA 13 renamed
// sm_101 to sm_110, so a cubin for sm_101 is an error naming ptxas's message
// (PTX text for it, format=isa, needs no ptxas: pipeline-options.mlir).
// REQUIRES: ptxas
// RUN: not mhc-opt %s --mhc-gpu-pipeline="chip=sm_101" 2>&1 | FileCheck %s
// CHECK: error: mhc-gpu-check-target: the CUDA toolkit at '{{.*}}' cannot build sm_101 with +ptx86 (ptxas: {{.*}}sm_101

func.func @project(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>) -> tensor<?x24xf32> {
  %m = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %m : tensor<?x24xf32>
}
