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

/// Largest `iterations` of mhc.sinkhorn_grad: its backward replays all
/// 2 * iterations - 1 normalisations (DeepSeek uses 20).
constexpr int64_t kMaxSinkhornGradIterations = 1000;

/// The gradient of sinkhornInPlace for one row-major n x n matrix: `g` holds
/// the cotangent of the result on entry and that of `logits` on exit. The
/// iterates are recomputed from `logits` in f32 (used by the folder).
void sinkhornGradInPlace(const float *logits, float *g, int64_t n,
                         int64_t iterations, float eps);

} // namespace mlir::mhc

#endif // MHC_DIALECT_MHC_IR_MHCOPS_H
