//===- IREEKernelABI.cpp - --mhc-gpu-iree-kernels -------------------------===//
//
// mhc's kernels take (T, then a 1-D memref descriptor per buffer); IREE's
// CUDA runtime launches an external kernel with one device pointer per
// binding, then 32-bit push constants. For every mhc kernel this adds an
// entry `<kernel>_iree` with IREE's ABI whose body is the kernel's own: see
// the pass description in include/mhc/Conversion/Passes.td.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/IR/IRMapping.h"

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCGPUIREEKERNELS
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

using namespace mlir;

namespace {

/// Fields of a lowered 1-D memref descriptor: allocated, aligned, offset,
/// size, stride.
constexpr unsigned kDescriptorFields = 5;

/// The number of buffers of a kernel with mhc's ABI (i64 T, then one
/// descriptor per buffer), or nothing when the signature is another.
static std::optional<unsigned> mhcBufferCount(LLVM::LLVMFuncOp kernel) {
  ArrayRef<Type> params = kernel.getFunctionType().getParams();
  if (params.empty() || !params[0].isInteger(64) ||
      (params.size() - 1) % kDescriptorFields != 0)
    return std::nullopt;
  for (size_t i = 1; i < params.size(); i += kDescriptorFields)
    if (!isa<LLVM::LLVMPointerType>(params[i]) ||
        !isa<LLVM::LLVMPointerType>(params[i + 1]) ||
        !params[i + 2].isInteger(64) || !params[i + 3].isInteger(64) ||
        !params[i + 4].isInteger(64))
      return std::nullopt;
  return (params.size() - 1) / kDescriptorFields;
}

struct MHCGPUIREEKernelsPass
    : mhc::impl::MHCGPUIREEKernelsBase<MHCGPUIREEKernelsPass> {
  using MHCGPUIREEKernelsBase::MHCGPUIREEKernelsBase;

  /// `<kernel>_iree(ptr b0, ..., ptr bN-1, i32 T, i32 numel0, ...,
  /// i32 numelN-1)`: the descriptors are rebuilt (aligned = allocated =
  /// the binding's pointer, offset 0, size numel, stride 1) and control
  /// enters a copy of the kernel's body.
  static void addIREEEntry(LLVM::LLVMFuncOp kernel, unsigned buffers) {
    MLIRContext *ctx = kernel.getContext();
    Location loc = kernel.getLoc();
    Type ptr = LLVM::LLVMPointerType::get(ctx);
    Type i32 = IntegerType::get(ctx, 32), i64 = IntegerType::get(ctx, 64);
    SmallVector<Type> params(buffers, ptr);
    params.append(buffers + 1, i32);
    OpBuilder b(kernel);
    b.setInsertionPointAfter(kernel);
    auto entry = LLVM::LLVMFuncOp::create(
        b, loc, (kernel.getSymName() + "_iree").str(),
        LLVM::LLVMFunctionType::get(LLVM::LLVMVoidType::get(ctx), params),
        kernel.getLinkage(), kernel.getDsoLocal(), kernel.getCConv());
    // nvvm.kernel, the launch bounds (maxntid, minctasm), gpu.kernel.
    for (NamedAttribute attr : kernel->getDiscardableAttrs())
      entry->setAttr(attr.getName(), attr.getValue());

    IRMapping map;
    kernel.getBody().cloneInto(&entry.getBody(), map);
    Block *body = &entry.getBody().front();
    Block *start = b.createBlock(&entry.getBody(), entry.getBody().begin(),
                                 params, SmallVector<Location>(params.size(), loc));
    b.setInsertionPointToStart(start);
    auto widen = [&](Value v) { return LLVM::ZExtOp::create(b, loc, i64, v); };
    Value zero = LLVM::ConstantOp::create(b, loc, i64, b.getI64IntegerAttr(0));
    Value one = LLVM::ConstantOp::create(b, loc, i64, b.getI64IntegerAttr(1));
    SmallVector<Value> operands{widen(start->getArgument(buffers))};
    for (unsigned i = 0; i < buffers; ++i) {
      Value binding = start->getArgument(i);
      operands.append({binding, binding, zero,
                       widen(start->getArgument(buffers + 1 + i)), one});
    }
    LLVM::BrOp::create(b, loc, operands, body);
  }

  void runOnOperation() override {
    SmallVector<std::pair<LLVM::LLVMFuncOp, unsigned>> kernels;
    for (auto f : getOperation().getOps<LLVM::LLVMFuncOp>()) {
      if (!f->hasAttr(NVVM::NVVMDialect::getKernelFuncAttrName()) || f.isExternal())
        continue;
      std::optional<unsigned> buffers = mhcBufferCount(f);
      if (!buffers) {
        f.emitError("mhc-gpu-iree-kernels: kernel @")
            << f.getSymName()
            << " does not take mhc's kernel ABI (i64 T, then 1-D memref "
               "descriptors)";
        return signalPassFailure();
      }
      kernels.push_back({f, *buffers});
    }
    for (auto [kernel, buffers] : kernels)
      addIREEEntry(kernel, buffers);
  }
};

} // namespace
