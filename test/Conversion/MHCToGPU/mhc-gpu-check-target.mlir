// The target check alone: silent on what the toolchain can build, a located
// error (and no output) otherwise. pipeline-options.mlir has the other cases.
// RUN: mhc-opt %s --mhc-gpu-check-target="chip=sm_90 format=isa" | FileCheck %s
// RUN: mhc-opt %s --mhc-gpu-check-target="chip=sm_120 features=+ptx87 format=isa" | FileCheck %s
// RUN: not mhc-opt %s --mhc-gpu-check-target="chip=sm_120 features=+ptx86 format=isa" 2>&1 | FileCheck %s --check-prefix=OLDPTX
// RUN: not mhc-opt %s --mhc-gpu-check-target="chip=sm_90 format=elf" 2>&1 | FileCheck %s --check-prefix=FORMAT

// CHECK-LABEL: func.func @f
// OLDPTX: mhc-gpu-check-target.mlir:0:0: error: mhc-gpu-check-target: chip sm_120 needs PTX ISA 8.7 or newer (features=+ptx87), got +ptx86
// FORMAT: for the --format option: Cannot find option named 'elf'!
func.func @f() {
  return
}
