//===- Dialects.cpp - C API for the mhc dialect ---------------------------===//
#include "mhc-c/Dialects.h"

#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mlir/CAPI/Registration.h"

MLIR_DEFINE_CAPI_DIALECT_REGISTRATION(MHC, mhc, mlir::mhc::MHCDialect)
