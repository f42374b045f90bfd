// RUN: not mhc-opt %s --convert-mhc-to-gpu="chip=sm_70" 2>&1 | FileCheck %s --check-prefix=OLD
// RUN: not mhc-opt %s --convert-mhc-to-gpu="chip=gfx90a" 2>&1 | FileCheck %s --check-prefix=BAD
// RUN: not mhc-opt %s --convert-mhc-to-gpu 2>&1 | FileCheck %s --check-prefix=GROUP

// OLD: error: convert-mhc-to-gpu: chip sm_70 is not supported; the kernels need sm_80 or newer
// BAD: error: convert-mhc-to-gpu: bad chip 'gfx90a', expected sm_XX

// A hand-written group the kernels cannot take: two post_res in one kernel.
// GROUP: error: 'mhc.fused' op holds two ops of the same kind; a kernel takes at most one of each
func.func @two_post(%y: tensor<?x8xf32>, %x: tensor<?x2x8xf32>, %p: tensor<?x2xf32>, %c: tensor<?x2x2xf32>) -> tensor<?x2x8xf32> {
  %r = mhc.fused "post" -> tensor<?x2x8xf32> {
    %a = mhc.post_res %y, %x, %p, %c : tensor<?x8xf32>, tensor<?x2x8xf32>, tensor<?x2xf32>, tensor<?x2x2xf32> -> tensor<?x2x8xf32>
    %b = mhc.post_res %y, %a, %p, %c : tensor<?x8xf32>, tensor<?x2x8xf32>, tensor<?x2xf32>, tensor<?x2x2xf32> -> tensor<?x2x8xf32>
    mhc.yield %b : tensor<?x2x8xf32>
  }
  return %r : tensor<?x2x8xf32>
}
