//===- ExpandShapeRepair.cpp - consistent tensor.expand_shape sizes -------===//
#include "mhc/Utils/ExpandShapeRepair.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

using namespace mlir;

void mhc::repairExpandShapes(Operation *root) {
  SmallVector<tensor::ExpandShapeOp> inconsistent;
  root->walk([&](tensor::ExpandShapeOp op) {
    ArrayRef<int64_t> given = op.getStaticOutputShape();
    ArrayRef<int64_t> typed = op.getResultType().getShape();
    for (auto [g, t] : llvm::zip(given, typed))
      if (ShapedType::isDynamic(g) != ShapedType::isDynamic(t)) {
        inconsistent.push_back(op);
        return;
      }
  });
  for (tensor::ExpandShapeOp op : inconsistent) {
    OpBuilder b(op);
    SmallVector<OpFoldResult> sizes;
    for (auto [size, typed] :
         llvm::zip(op.getMixedOutputShape(), op.getResultType().getShape())) {
      if (!ShapedType::isDynamic(typed))
        sizes.push_back(b.getIndexAttr(typed));
      else if (auto attr = dyn_cast<Attribute>(size))
        sizes.push_back(
            arith::ConstantIndexOp::create(
                b, op.getLoc(), cast<IntegerAttr>(attr).getInt())
                .getResult());
      else
        sizes.push_back(size);
    }
    auto repaired = tensor::ExpandShapeOp::create(
        b, op.getLoc(), op.getResultType(), op.getSrc(),
        op.getReassociationIndices(), sizes);
    op.replaceAllUsesWith(repaired.getResult());
    op.erase();
  }
}
