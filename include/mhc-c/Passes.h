/*===- Passes.h - C API for the mhc passes and pipelines ----------*- C -*-===*\
|*                                                                            *|
|* Registration and creation of every mhc pass (generated from the .td files: *|
|* mlirRegisterMHCPasses, mlirCreateMHCMHCFuse, ...,                          *|
|* mlirRegisterMHCConversionPasses, mlirCreateMHCConversionConvertMHCToLinalg,*|
|* ...) and of the pipelines (--mhc-cpu-pipeline, --mhc-gpu-pipeline).        *|
|* Passes created here use their default options; to set options, register   *|
|* the passes and build the pass manager with mlirParsePassPipeline or        *|
|* mlirOpPassManagerAddPipeline, e.g. "func.func(mhc-fuse)" or                *|
|* "mhc-hyperconnect{streams=4 mode=mhc}".                                    *|
|*                                                                            *|
\*===----------------------------------------------------------------------===*/
#ifndef MHC_C_PASSES_H
#define MHC_C_PASSES_H

#include "mlir-c/Pass.h"

#include "mhc/Conversion/Passes.capi.h.inc"
#include "mhc/Dialect/MHC/Transforms/Passes.capi.h.inc"

#ifdef __cplusplus
extern "C" {
#endif

/// Registers --mhc-cpu-pipeline and --mhc-gpu-pipeline with MLIR's pass
/// pipeline registry so that pipeline strings can name them. Safe to call
/// more than once.
MLIR_CAPI_EXPORTED void mlirRegisterMHCPipelines(void);

/// Registers every mhc pass and pipeline (the three calls above together).
/// Safe to call more than once.
MLIR_CAPI_EXPORTED void mlirRegisterAllMHCPasses(void);

#ifdef __cplusplus
}
#endif

#endif /* MHC_C_PASSES_H */
