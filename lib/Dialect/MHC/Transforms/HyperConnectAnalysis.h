//===- HyperConnectAnalysis.h - find residual chains ------------*- C++ -*-===//
//
// The matching half of --mhc-hyperconnect: which adds are residual adds
// `x_{l+1} = x_l + F_l(x_l)`, what their branch F_l is, and how they chain.
// Kept apart from the rewrite so that each can be read alone.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_LIB_DIALECT_MHC_TRANSFORMS_HYPERCONNECTANALYSIS_H
#define MHC_LIB_DIALECT_MHC_TRANSFORMS_HYPERCONNECTANALYSIS_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Operation.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/ADT/SmallVector.h"
#include <string>
#include <vector>

namespace mlir::mhc::hyperconnect {

/// One residual block `r = x + y` with `y = F(x)`.
struct ResidualBlock {
  /// The add (arith.addf, linalg.add, elementwise linalg.generic, tosa.add).
  Operation *add = nullptr;
  /// The add's result r, its residual operand x and its branch operand y.
  Value result, residual, branch;
  /// The stream value the residual operand is a view of (x itself when there
  /// is none); chains link through it.
  Value stream;
  /// The view ops (dtype conversions, reshapes and casts that keep C) from
  /// `stream` to `residual`, in program order.
  SmallVector<Operation *> path;
  /// Index in `path` of the last op that changes the shape (a reshape or
  /// cast), or -1. The coefficients are computed on the widened result of
  /// that op (on the widened stream if -1), so F reads no value before it.
  int64_t coeffAt = -1;
  /// F: the ops that depend on the stream and feed y (path ops excluded),
  /// and the size checks (cf.assert and what only feeds it) that read them.
  /// For a parallel block written residual-first, `(x + F1(x)) + F2(x)`,
  /// both adds are blocks (the second's stream is the first's result) and
  /// both have F = F1 + F2: the first block's pre_apply feeds both.
  llvm::SmallPtrSet<Operation *, 32> body;
};

/// An add left alone, and why.
struct SkippedAdd {
  Operation *add;
  std::string why;
  /// It has the form of a residual add (x + F(x), F not elementwise), so
  /// leaving it alone is worth a warning.
  bool residual;
  /// The stream's type (null when the add is not x + F(x)).
  Type streamType;
};

/// What the analysis found in one function.
struct ChainAnalysis {
  /// Chains in program order; each is a list of blocks where the result of
  /// one is the stream of the next.
  std::vector<std::vector<ResidualBlock>> chains;
  /// Candidate adds that were left alone, in program order.
  SmallVector<SkippedAdd> skipped;
  /// Work done (ops and uses visited), reported as a pass statistic so that
  /// a test can check it grows linearly with the size of the function.
  uint64_t steps = 0;
  /// Adds found to have the form x + F(x), converted or not.
  uint64_t residualAdds = 0;
};

/// Finds the residual chains of `func` (its entry block only) that have at
/// least `minBlocks` blocks.
ChainAnalysis analyzeFunction(func::FuncOp func, int64_t minBlocks);

/// If `op` is a view of a stream `[..., C]` that the widened stream
/// `[..., n, C]` can replay, returns its input; else a null value. Views:
/// floating-point conversions (arith.extf/truncf on tensors, or a one-input
/// elementwise linalg.generic doing just that), tensor.cast, and
/// tensor.expand_shape/collapse_shape keeping the last dim as its own group.
Value streamViewSource(Operation *op);

/// True for the views that keep the shape (the dtype conversions).
bool keepsStreamShape(Operation *op);

} // namespace mlir::mhc::hyperconnect

#endif // MHC_LIB_DIALECT_MHC_TRANSFORMS_HYPERCONNECTANALYSIS_H
