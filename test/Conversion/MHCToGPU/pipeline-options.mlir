// Bad options are errors with a non-zero exit (gpu-module-to-binary alone
// would print an error for a bad format and still exit 0).
// RUN: not mhc-opt %s --mhc-gpu-pipeline="format=cubin" 2>&1 | FileCheck %s --check-prefix=FORMAT
// RUN: not mhc-opt %s --mhc-gpu-pipeline="chip=sm_75" 2>&1 | FileCheck %s --check-prefix=CHIP
// RUN: not mhc-opt %s --mhc-gpu-pipeline="chip=hopper" 2>&1 | FileCheck %s --check-prefix=CHIP2
// RUN: not mhc-opt %s --mhc-gpu-pipeline="toolkit=%t.nonexistent" 2>&1 | FileCheck %s --check-prefix=TOOLKIT
// RUN: not mhc-opt %s --mhc-gpu-pipeline="tile-tokens=48" 2>&1 | FileCheck %s --check-prefix=TILE

// FORMAT: error: mhc-gpu-pipeline: bad format 'cubin', expected isa, bin or fatbin
// CHIP: error: mhc-gpu-pipeline: bad chip 'sm_75', expected sm_XX with XX >= 80 (e.g. sm_90)
// CHIP2: error: mhc-gpu-pipeline: bad chip 'hopper'
// TOOLKIT: error: mhc-gpu-pipeline: no libdevice at '{{.*}}nonexistent/nvvm/libdevice/libdevice.10.bc'; pass toolkit=<CUDA path>
// TILE: error: convert-mhc-to-gpu: tile-tokens must be 0 (auto), 16, 32 or 64, got 48

func.func @sinkhorn(%l: tensor<?x4x4xf32>) -> tensor<?x4x4xf32> {
  %c = mhc.sinkhorn %l : tensor<?x4x4xf32>
  return %c : tensor<?x4x4xf32>
}
