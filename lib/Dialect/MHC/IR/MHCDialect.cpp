//===- MHCDialect.cpp - the mhc dialect -----------------------------------===//
#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mhc/Dialect/MHC/IR/MHCAttrs.h"
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Interfaces/FunctionInterfaces.h"

using namespace mlir;
using namespace mlir::mhc;

#include "mhc/Dialect/MHC/IR/MHCOpsDialect.cpp.inc"
#define GET_ATTRDEF_CLASSES
#include "mhc/Dialect/MHC/IR/MHCAttrs.cpp.inc"

void MHCDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "mhc/Dialect/MHC/IR/MHCOps.cpp.inc"
      >();
  addAttributes<
#define GET_ATTRDEF_LIST
#include "mhc/Dialect/MHC/IR/MHCAttrs.cpp.inc"
      >();
}

/// `mhc.schedule` must be a #mhc.schedule (or an array of them, one per
/// kernel of a group) on an mhc op (a kernel root).
LogicalResult MHCDialect::verifyOperationAttribute(Operation *op,
                                                   NamedAttribute attr) {
  // Other mhc.* attributes (mhc.param, mhc.saved, mhc.vjp, ...) are labels
  // that passes read; only the schedule and the token hint have a structure
  // to check.
  if (attr.getName() == kMaxTokensAttrName) {
    auto hint = dyn_cast<IntegerAttr>(attr.getValue());
    if (!hint || hint.getValue().isNonPositive())
      return op->emitError() << "expects '" << kMaxTokensAttrName
                             << "' to be a positive integer, got "
                             << attr.getValue();
    if (!isa<FunctionOpInterface>(op))
      return op->emitError() << "'" << kMaxTokensAttrName
                             << "' belongs on a function";
    return success();
  }
  if (attr.getName() != kScheduleAttrName)
    return success();
  auto list = dyn_cast<ArrayAttr>(attr.getValue());
  bool ok = isa<ScheduleAttr>(attr.getValue()) ||
            (list && !list.empty() &&
             llvm::all_of(list, [](Attribute a) {
               return isa<ScheduleAttr>(a);
             }));
  if (!ok)
    return op->emitError() << "expects '" << kScheduleAttrName
                           << "' to be a #mhc.schedule or a non-empty array "
                              "of them (one per kernel), got "
                           << attr.getValue();
  if (op->getDialect() != op->getContext()->getLoadedDialect<MHCDialect>())
    return op->emitError() << "'" << kScheduleAttrName
                           << "' belongs on an mhc op (a kernel group)";
  return success();
}

Operation *MHCDialect::materializeConstant(OpBuilder &builder, Attribute value,
                                          Type type, Location loc) {
  auto typed = dyn_cast<TypedAttr>(value);
  if (!typed || typed.getType() != type)
    return nullptr;
  return arith::ConstantOp::create(builder, loc, type, typed);
}
