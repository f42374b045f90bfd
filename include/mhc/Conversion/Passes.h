//===- Passes.h - mhc lowerings ---------------------------------*- C++ -*-===//
#ifndef MHC_CONVERSION_PASSES_H
#define MHC_CONVERSION_PASSES_H

#include "mhc/Conversion/GPUTarget.h"
#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"

namespace mlir::mhc {

#define GEN_PASS_DECL
#include "mhc/Conversion/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "mhc/Conversion/Passes.h.inc"

} // namespace mlir::mhc

#endif // MHC_CONVERSION_PASSES_H
