//===- LinalgBuilders.cpp - small builders for linalg on tensors ----------===//
#include "mhc/Utils/LinalgBuilders.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

using namespace mlir;

Value mhc::f32Const(OpBuilder &b, Location loc, double value) {
  return arith::ConstantOp::create(b, loc, b.getF32FloatAttr(value));
}

Value mhc::widenToF32(OpBuilder &b, Location loc, Value v) {
  Type elem = getElementTypeOrSelf(v.getType());
  if (elem.isF32())
    return v;
  Type f32 = b.getF32Type();
  if (auto shaped = dyn_cast<ShapedType>(v.getType()))
    f32 = shaped.clone(f32);
  return arith::ExtFOp::create(b, loc, f32, v);
}

Value mhc::emptyTensor(OpBuilder &b, Location loc, RankedTensorType type,
                       Value leader) {
  SmallVector<Value> dynamicSizes;
  for (int64_t d = 0; d < type.getRank(); ++d)
    if (type.isDynamicDim(d))
      dynamicSizes.push_back(tensor::DimOp::create(b, loc, leader, d));
  return tensor::EmptyOp::create(b, loc, type, dynamicSizes);
}

Value mhc::emptyWithLeading(OpBuilder &b, Location loc, Value leader,
                            unsigned numLead, ArrayRef<int64_t> tail,
                            Type elem) {
  auto like = cast<RankedTensorType>(leader.getType());
  SmallVector<int64_t> shape(like.getShape().take_front(numLead));
  llvm::append_range(shape, tail);
  return emptyTensor(b, loc, RankedTensorType::get(shape, elem), leader);
}

Value mhc::fillF32(OpBuilder &b, Location loc, Value init, double value) {
  return linalg::FillOp::create(b, loc, ValueRange{f32Const(b, loc, value)},
                                ValueRange{init})
      .getResult(0);
}

SmallVector<utils::IteratorType> mhc::iteratorList(unsigned parallel,
                                                   unsigned reduce) {
  SmallVector<utils::IteratorType> it(parallel, utils::IteratorType::parallel);
  it.append(reduce, utils::IteratorType::reduction);
  return it;
}

Value mhc::buildGeneric(OpBuilder &b, Location loc, ValueRange inputs,
                        Value init, ArrayRef<AffineMap> maps,
                        ArrayRef<utils::IteratorType> iterators,
                        GenericBodyFn body) {
  auto generic = linalg::GenericOp::create(
      b, loc, TypeRange{init.getType()}, inputs, ValueRange{init}, maps,
      iterators, [&](OpBuilder &nb, Location nloc, ValueRange args) {
        linalg::YieldOp::create(nb, nloc, body(nb, nloc, args));
      });
  return generic.getResult(0);
}

Value mhc::sigmoidF32(OpBuilder &b, Location loc, Value a) {
  Value negExp = math::ExpOp::create(b, loc, arith::NegFOp::create(b, loc, a));
  Value denom = arith::AddFOp::create(b, loc, f32Const(b, loc, 1.0), negExp);
  return arith::DivFOp::create(b, loc, f32Const(b, loc, 1.0), denom);
}
