//===- MHCDialect.cpp - the mhc dialect -----------------------------------===//
#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

using namespace mlir;
using namespace mlir::mhc;

#include "mhc/Dialect/MHC/IR/MHCOpsDialect.cpp.inc"

void MHCDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "mhc/Dialect/MHC/IR/MHCOps.cpp.inc"
      >();
}

Operation *MHCDialect::materializeConstant(OpBuilder &builder, Attribute value,
                                          Type type, Location loc) {
  auto typed = dyn_cast<TypedAttr>(value);
  if (!typed || typed.getType() != type)
    return nullptr;
  return arith::ConstantOp::create(builder, loc, type, typed);
}
