//===- MHCAttrs.h - mhc dialect attributes ----------------------*- C++ -*-===//
#ifndef MHC_DIALECT_MHC_IR_MHCATTRS_H
#define MHC_DIALECT_MHC_IR_MHCATTRS_H

#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mlir/IR/Attributes.h"
#include "mlir/IR/BuiltinAttributes.h"

#define GET_ATTRDEF_CLASSES
#include "mhc/Dialect/MHC/IR/MHCAttrs.h.inc"

namespace mlir::mhc {
/// Name of the discardable attribute that carries a kernel's schedule.
inline constexpr llvm::StringLiteral kScheduleAttrName = "mhc.schedule";
/// Name of the function attribute that tells schedule selection the most
/// tokens the function is meant for (a hint: its kernels stay correct at any
/// token count). mhc.torch compiles small-token variants with it.
inline constexpr llvm::StringLiteral kMaxTokensAttrName = "mhc.max_tokens";
} // namespace mlir::mhc

#endif // MHC_DIALECT_MHC_IR_MHCATTRS_H
