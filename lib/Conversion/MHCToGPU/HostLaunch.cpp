//===- HostLaunch.cpp - the host side of a kernel group -------------------===//
#include "HostLaunch.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"

using namespace mlir;
using namespace mlir::mhc::gpu_kernels;

HostLaunch::HostLaunch(Operation *root)
    : root(root), b(root), loc(root->getLoc()) {}

void HostLaunch::countTokens(Value src, unsigned trailing) {
  auto srcType = cast<RankedTensorType>(src.getType());
  unsigned lead = srcType.getRank() - trailing;
  T = arith::ConstantIndexOp::create(b, loc, 1);
  for (unsigned d = 0; d < lead; ++d) {
    Value dim = tensor::DimOp::create(b, loc, src, d);
    leadDims.push_back(dim);
    T = arith::MulIOp::create(b, loc, T, dim);
  }
}

/// A memref of any rank as memref<?xT> over the same contiguous data.
static Value flatten(OpBuilder &b, Location loc, Value m) {
  auto mt = cast<MemRefType>(m.getType());
  auto dyn = MemRefType::get({ShapedType::kDynamic}, mt.getElementType());
  if (mt.getRank() > 1) {
    ReassociationIndices all;
    for (int64_t i = 0; i < mt.getRank(); ++i)
      all.push_back(i);
    // The flat size is dynamic as soon as one dim is, even next to a static
    // 0 (the inferred type would be 0, which collapse_shape rejects).
    Type flat = mt.hasStaticShape()
                    ? MemRefType::get({mt.getNumElements()},
                                      mt.getElementType())
                    : dyn;
    m = memref::CollapseShapeOp::create(b, loc, flat, m,
                                        ArrayRef<ReassociationIndices>{all});
  }
  if (m.getType() != dyn)
    m = memref::CastOp::create(b, loc, dyn, m);
  return m;
}

Value HostLaunch::inputBuffer(Value tensor) {
  auto t = cast<RankedTensorType>(tensor.getType());
  auto mt = MemRefType::get(t.getShape(), t.getElementType());
  Value m = bufferization::ToBufferOp::create(b, loc, mt, tensor,
                                              b.getUnitAttr());
  return flatten(b, loc, m);
}

Value HostLaunch::outputBuffer(Value result) {
  auto t = cast<RankedTensorType>(result.getType());
  SmallVector<Value> dyn;
  for (int64_t d = 0; d < t.getRank(); ++d)
    if (t.isDynamicDim(d)) {
      if (d >= static_cast<int64_t>(leadDims.size())) {
        root->emitOpError("expects static non-token dims");
        return nullptr;
      }
      dyn.push_back(leadDims[d]);
    }
  Value alloc = memref::AllocOp::create(
      b, loc, MemRefType::get(t.getShape(), t.getElementType()), dyn);
  allocs.push_back(alloc);
  return flatten(b, loc, alloc);
}

Value HostLaunch::scratchBuffer(Type elem, Value numElements) {
  return memref::AllocOp::create(
      b, loc, MemRefType::get({ShapedType::kDynamic}, elem),
      ValueRange{numElements});
}

Value HostLaunch::tileGrid(int64_t tileTokens) {
  Value tt = arith::ConstantIndexOp::create(b, loc, tileTokens);
  Value one = arith::ConstantIndexOp::create(b, loc, 1);
  return arith::MaxUIOp::create(
      b, loc, arith::CeilDivUIOp::create(b, loc, T, tt), one);
}

void HostLaunch::launch(gpu::GPUFuncOp kernel, Value gridX, int64_t threads,
                        ValueRange args, int64_t gridY) {
  Value one = arith::ConstantIndexOp::create(b, loc, 1);
  Value block = arith::ConstantIndexOp::create(b, loc, threads);
  Value y = gridY == 1 ? one : arith::ConstantIndexOp::create(b, loc, gridY);
  gpu::LaunchFuncOp::create(b, loc, kernel, gpu::KernelDim3{gridX, y, one},
                            gpu::KernelDim3{block, one, one}, Value(), args);
}

void HostLaunch::finish(ArrayRef<Value> replaced) {
  for (auto [alloc, oldValue] : llvm::zip(allocs, replaced)) {
    Value old = oldValue;
    Value t = bufferization::ToTensorOp::create(
        b, loc, old.getType(), alloc, /*restrict=*/true, /*writable=*/true);
    old.replaceAllUsesWith(t);
  }
  root->erase();
}
