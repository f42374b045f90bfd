//===- MHCDialect.h - the mhc dialect ---------------------------*- C++ -*-===//
#ifndef MHC_DIALECT_MHC_IR_MHCDIALECT_H
#define MHC_DIALECT_MHC_IR_MHCDIALECT_H

#include "mlir/IR/Dialect.h"

#include "mhc/Dialect/MHC/IR/MHCOpsDialect.h.inc"

#endif // MHC_DIALECT_MHC_IR_MHCDIALECT_H
