//===- LinalgBuilders.h - small builders for linalg on tensors --*- C++ -*-===//
//
// Helpers shared by the passes that emit linalg on tensors
// (--convert-mhc-to-linalg, --mhc-hyperconnect, the backward generation):
// f32 widening, tensor.empty with token dims taken from a leader value,
// fills, iterator lists and a one-output linalg.generic.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_UTILS_LINALGBUILDERS_H
#define MHC_UTILS_LINALGBUILDERS_H

#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/IR/Builders.h"

namespace mlir::mhc {

/// An f32 arith.constant.
Value f32Const(OpBuilder &b, Location loc, double value);

/// Widens a bf16/f16 scalar or tensor to f32 (arith.extf); f32 passes through.
Value widenToF32(OpBuilder &b, Location loc, Value v);

/// tensor.empty of `type`; its dynamic dims are read (tensor.dim) from the
/// same positions of `leader`, whose leading dims are the same tokens.
Value emptyTensor(OpBuilder &b, Location loc, RankedTensorType type,
                  Value leader);

/// tensor.empty of shape (the first `numLead` dims of `leader`) ++ `tail`
/// with element type `elem`.
Value emptyWithLeading(OpBuilder &b, Location loc, Value leader,
                       unsigned numLead, ArrayRef<int64_t> tail, Type elem);

/// linalg.fill of `init` with the f32 constant `value`.
Value fillF32(OpBuilder &b, Location loc, Value init, double value);

/// `parallel` parallel iterators followed by `reduce` reduction iterators.
SmallVector<utils::IteratorType> iteratorList(unsigned parallel,
                                              unsigned reduce = 0);

/// Computes the yielded value of a generic from its block arguments (inputs
/// first, then the output/accumulator).
using GenericBodyFn = function_ref<Value(OpBuilder &, Location, ValueRange)>;

/// One linalg.generic with the single output `init`; returns its result.
Value buildGeneric(OpBuilder &b, Location loc, ValueRange inputs, Value init,
                   ArrayRef<AffineMap> maps,
                   ArrayRef<utils::IteratorType> iterators,
                   GenericBodyFn body);

/// 1 / (1 + exp(-a)) on an f32 scalar.
Value sigmoidF32(OpBuilder &b, Location loc, Value a);

} // namespace mlir::mhc

#endif // MHC_UTILS_LINALGBUILDERS_H
