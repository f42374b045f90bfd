// Bad options are errors with a non-zero exit, before anything is compiled
// (gpu-module-to-binary alone would print an error for a bad format and
// still exit 0; the backend would stop with "LLVM ERROR" for a PTX version
// too old for the chip).
// RUN: not mhc-opt %s --mhc-gpu-pipeline="format=cubin" 2>&1 | FileCheck %s --check-prefix=FORMAT
// RUN: not mhc-opt %s --mhc-gpu-pipeline="chip=sm_75" 2>&1 | FileCheck %s --check-prefix=CHIP
// RUN: not mhc-opt %s --mhc-gpu-pipeline="chip=hopper" 2>&1 | FileCheck %s --check-prefix=CHIP2
// RUN: not mhc-opt %s --mhc-gpu-pipeline="chip=sm_200" 2>&1 | FileCheck %s --check-prefix=CHIP3
// RUN: not mhc-opt %s --mhc-gpu-pipeline="chip=sm_100 features=+ptx80" 2>&1 | FileCheck %s --check-prefix=PTX
// RUN: not mhc-opt %s --mhc-gpu-pipeline="features=+ptx99" 2>&1 | FileCheck %s --check-prefix=PTX99
// RUN: not mhc-opt %s --mhc-gpu-pipeline="features=+sm_90" 2>&1 | FileCheck %s --check-prefix=NOPTX
// RUN: not mhc-opt %s --mhc-gpu-pipeline="toolkit=%t.nonexistent" 2>&1 | FileCheck %s --check-prefix=TOOLKIT
// RUN: not mhc-opt %s --mhc-gpu-pipeline="tile-tokens=40" 2>&1 | FileCheck %s --check-prefix=TILE

// FORMAT: for the --format option: Cannot find option named 'cubin'!
// CHIP: error: mhc-gpu-check-target: chip sm_75 is not supported; the kernels need sm_80 or newer (bf16 mma.sync)
// CHIP2: error: mhc-gpu-check-target: bad chip 'hopper', expected one of sm_80,
// CHIP3: error: mhc-gpu-check-target: bad chip 'sm_200', expected one of sm_80,
// PTX: error: mhc-gpu-check-target: chip sm_100 needs PTX ISA 8.6 or newer (features=+ptx86), got +ptx80
// PTX99: error: mhc-gpu-check-target: PTX ISA 9.9 is newer than LLVM 22 emits (+ptx90 at most)
// NOPTX: error: mhc-gpu-check-target: features '+sm_90' name no PTX version (e.g. +ptx80)
// TOOLKIT: error: mhc-gpu-check-target: no libdevice at '{{.*}}nonexistent/nvvm/libdevice/libdevice.10.bc'; pass toolkit=<CUDA path>
// TILE: error: 'mhc.norm_project' op schedule: tile_tokens must be a multiple of 16 (tensor-core row tiles) in a norm_project kernel, got 40

// format=mlir leaves the device code as a gpu.module of NVVM/LLVM ops (for a
// compiler that serializes it itself: no libdevice, no ptxas needed, even with
// a toolkit path that does not exist); format=llvm serializes it to LLVM
// bitcode (gpu.binary with an offload object).
// RUN: mhc-opt %s --mhc-gpu-pipeline="format=mlir toolkit=%t.nonexistent" | FileCheck %s --check-prefix=MLIR
// MLIR-NOT: gpu.binary
// MLIR:     gpu.module @mhc_kernels [#nvvm.target<O = 3, chip = "sm_90", features = "+ptx80">]
// MLIR:       llvm.func @mhc_
// MLIR-SAME:    gpu.kernel
// MLIR:       nvvm.read.ptx.sreg.tid.x
// RUN: mhc-opt %s --mhc-gpu-pipeline="format=llvm" | FileCheck %s --check-prefix=LLVM
// LLVM: gpu.binary @mhc_kernels  [#gpu.object<#nvvm.target<O = 3, chip = "sm_90", features = "+ptx80">, offload = "BC

// Chips newer than sm_90 get their PTX version by default (the backend used
// to stop with "LLVM ERROR" and no location for these with +ptx80).
// RUN: mhc-opt %s --mhc-gpu-pipeline="chip=sm_100 format=isa" | FileCheck %s --check-prefix=SM100
// SM100: gpu.binary @mhc_kernels  [#gpu.object<#nvvm.target<O = 3, chip = "sm_100", features = "+ptx86">
// SM100-SAME: .version 8.6
// SM100-SAME: .target sm_100
// RUN: mhc-opt %s --mhc-gpu-pipeline="chip=sm_101 format=isa" | FileCheck %s --check-prefix=SM101
// SM101: .version 8.6
// SM101-SAME: .target sm_101
// RUN: mhc-opt %s --mhc-gpu-pipeline="chip=sm_103 format=isa" | FileCheck %s --check-prefix=SM103
// SM103: .version 8.8
// SM103-SAME: .target sm_103
// RUN: mhc-opt %s --mhc-gpu-pipeline="chip=sm_120 format=isa" | FileCheck %s --check-prefix=SM120
// SM120: .version 8.7
// SM120-SAME: .target sm_120

func.func @project(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>) -> tensor<?x24xf32> {
  %m = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %m : tensor<?x24xf32>
}
