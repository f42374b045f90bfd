//===- ExpandShapeRepair.h - keep canonicalize off a crashing pattern -*- C++ -*-//
//
// MLIR 22's verifier accepts a tensor.expand_shape whose output_shape gives a
// static size for a dim that its result type leaves dynamic (e.g.
// `output_shape [1, 4, 16] : tensor<?x16xf32> into tensor<1x?x16xf32>`), but
// its canonicalization patterns then read an SSA size that is not there and
// crash (upstream mlir-opt --canonicalize does too). The mhc passes that run
// before the pipelines' first canonicalize rewrite such ops into the same
// expansion with consistent sizes (docs/Guarantees.md).
//
//===----------------------------------------------------------------------===//
#ifndef MHC_UTILS_EXPANDSHAPEREPAIR_H
#define MHC_UTILS_EXPANDSHAPEREPAIR_H

#include "mlir/IR/Operation.h"

namespace mlir::mhc {

/// Rewrites every tensor.expand_shape under `root` whose output_shape
/// disagrees with its result type about which dims are static: static dims
/// take the type's size, dynamic ones an SSA value (an index constant where
/// output_shape had a number). The same values; no other op changes.
void repairExpandShapes(Operation *root);

} // namespace mlir::mhc

#endif // MHC_UTILS_EXPANDSHAPEREPAIR_H
