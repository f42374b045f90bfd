//===- GPUTarget.h - the one check of chip, PTX features, toolkit -*- C++ -*-//
//
// Every place that takes a chip (--convert-mhc-to-gpu, --mhc-select-schedule,
// --mhc-gpu-pipeline, python/mhc/compiler.py through mhc-opt) validates it
// here, by one rule: a chip LLVM's NVPTX backend knows, sm_80 or newer (the
// kernels use bf16 mma.sync and ldmatrix), with a PTX ISA version that the
// chip needs. An empty `features` means the chip's default (+ptx80 up to
// sm_90a, newer for Blackwell chips).
//
//===----------------------------------------------------------------------===//
#ifndef MHC_CONVERSION_GPUTARGET_H
#define MHC_CONVERSION_GPUTARGET_H

#include "mlir/IR/Diagnostics.h"
#include "mlir/Support/LLVM.h"
#include <string>

namespace mlir::mhc {

/// What gpu-module-to-binary produces: PTX text, a cubin or a fat binary.
/// What the GPU pipeline makes of the device code: Mlir leaves the gpu.module
/// (NVVM + LLVM dialects) for a compiler that serializes it itself; the others
/// are gpu-module-to-binary's formats.
enum class GPUBinaryFormat { Mlir, Llvm, Isa, Bin, Fatbin };

/// "mlir", or "llvm", "isa", "bin", "fatbin" (gpu-module-to-binary's
/// spelling).
StringRef stringifyGPUBinaryFormat(GPUBinaryFormat format);

struct GPUTarget {
  std::string chip;     // e.g. "sm_90", "sm_90a", "sm_100f"
  std::string features; // e.g. "+ptx80"
  unsigned ptxVersion;  // e.g. 80 for PTX ISA 8.0
};

/// The PTX features a chip gets when none are given ("+ptx80" for a chip
/// this file does not know; parseGPUTarget rejects those).
std::string defaultPTXFeatures(StringRef chip);

/// Parses and checks `chip` and `features`; on failure emits a diagnostic
/// through `emitError` (prefixed by `who`, e.g. "mhc-gpu-pipeline").
FailureOr<GPUTarget>
parseGPUTarget(StringRef chip, StringRef features, StringRef who,
               function_ref<InFlightDiagnostic()> emitError);

/// Checks that the CUDA toolkit at `toolkit` can build `target` in `format`:
/// libdevice exists, and for bin/fatbin its ptxas assembles an empty module
/// for the chip at the PTX version.
LogicalResult checkToolkit(const GPUTarget &target, GPUBinaryFormat format,
                           StringRef toolkit, StringRef who,
                           function_ref<InFlightDiagnostic()> emitError);

} // namespace mlir::mhc

#endif // MHC_CONVERSION_GPUTARGET_H
