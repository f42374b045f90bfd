//===- Passes.h - mhc dialect transformation passes -------------*- C++ -*-===//
#ifndef MHC_DIALECT_MHC_TRANSFORMS_PASSES_H
#define MHC_DIALECT_MHC_TRANSFORMS_PASSES_H

#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"

namespace mlir::mhc {

/// --mhc-hyperconnect's coefficient form (option `mode`).
enum class HyperConnectMode { MHC, HC, StaticHC };
/// --mhc-hyperconnect's initialisation (option `init`).
enum class HyperConnectInit { Paper, Identity };
/// Where --mhc-hyperconnect puts the new parameters (option `params`).
enum class HyperConnectParams { Arguments, Constants };
/// What --mhc-generate-backward's forward saves (option `save`).
enum class BackwardSave { Mixes, All, Inputs };
/// How --mhc-hyperconnect combines a chain's streams at its end (`exit`).
enum class HyperConnectExit { Mean, Learned };

#define GEN_PASS_DECL
#include "mhc/Dialect/MHC/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "mhc/Dialect/MHC/Transforms/Passes.h.inc"

} // namespace mlir::mhc

#endif // MHC_DIALECT_MHC_TRANSFORMS_PASSES_H
