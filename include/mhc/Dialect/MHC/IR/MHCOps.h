//===- MHCOps.h - mhc dialect operations ------------------------*- C++ -*-===//
#ifndef MHC_DIALECT_MHC_IR_MHCOPS_H
#define MHC_DIALECT_MHC_IR_MHCOPS_H

#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/ControlFlowInterfaces.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#define GET_OP_CLASSES
#include "mhc/Dialect/MHC/IR/MHCOps.h.inc"

namespace mlir::mhc {

/// Number of coefficients per token for n streams: pre (n), post (n), res (n*n).
inline int64_t numMixes(int64_t n) { return n * n + 2 * n; }

/// Sinkhorn projection of one row-major n x n matrix in place, in f32, with
/// exactly the numerics of the spec (shared by the folder and the tests'
/// expectations of it).
void sinkhornInPlace(float *matrix, int64_t n, int64_t iterations, float eps);

} // namespace mlir::mhc

#endif // MHC_DIALECT_MHC_IR_MHCOPS_H
