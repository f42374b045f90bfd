//===- Passes.cpp - C API for the mhc passes and pipelines ----------------===//
#include "mhc-c/Passes.h"

#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/CAPI/Pass.h"
#include "mlir/Pass/Pass.h"

// The generated definitions call registerX()/createX() unqualified.
using namespace mlir::mhc;

#include "mhc/Conversion/Passes.capi.cpp.inc"
#include "mhc/Dialect/MHC/Transforms/Passes.capi.cpp.inc"

void mlirRegisterMHCPipelines(void) { registerMHCPipelines(); }

void mlirRegisterAllMHCPasses(void) {
  registerMHCPasses();
  registerMHCConversionPasses();
  registerMHCPipelines();
}
