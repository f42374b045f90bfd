//===- KernelBuilder.h - shared helpers of the GPU kernel builders -*- C++ -*-//
//
// What every mhc kernel body is written with: index and f32 arithmetic,
// structured control flow (scf.if / scf.for built from lambdas), memory
// accesses, barriers and warp shuffles, and the activation accesses of the
// streaming kernels (16-byte vector loads/stores with a guarded scalar path
// for tails and misaligned pointers, f32 conversion, rounding as stored), and
// the bf16 tensor-core product (mma.sync) the projection kernels share.
// All index math is on `index` values.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_LIB_CONVERSION_MHCTOGPU_KERNELBUILDER_H
#define MHC_LIB_CONVERSION_MHCTOGPU_KERNELBUILDER_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/Builders.h"

namespace mlir::mhc::gpu_kernels {

/// How a kernel reads and writes activations: `vec` elements of `act`
/// (bf16/f16/f32) per 16-byte vector, rows of `C` elements.
struct ActivationLayout {
  Type act;
  int64_t vec = 1;
  int64_t C = 0;
};

class KernelBuilder {
public:
  KernelBuilder(OpBuilder &b, Location loc)
      : b(b), loc(loc), f32(b.getF32Type()), i32(b.getI32Type()),
        idxT(b.getIndexType()) {}

  OpBuilder &b;
  Location loc;
  Type f32, i32, idxT;

  // --- constants and arithmetic -----------------------------------------
  Value ci(int64_t v) { return arith::ConstantIndexOp::create(b, loc, v); }
  Value ci32(int32_t v) {
    return arith::ConstantOp::create(b, loc, b.getI32IntegerAttr(v));
  }
  Value cf(double v) {
    return arith::ConstantOp::create(b, loc, b.getF32FloatAttr(v));
  }
  Value add(Value x, Value y) { return arith::AddIOp::create(b, loc, x, y); }
  Value sub(Value x, Value y) { return arith::SubIOp::create(b, loc, x, y); }
  Value mul(Value x, Value y) { return arith::MulIOp::create(b, loc, x, y); }
  Value div(Value x, int64_t d) {
    return arith::DivUIOp::create(b, loc, x, ci(d));
  }
  Value rem(Value x, int64_t d) {
    return arith::RemUIOp::create(b, loc, x, ci(d));
  }
  Value ult(Value x, Value y) {
    return arith::CmpIOp::create(b, loc, arith::CmpIPredicate::ult, x, y);
  }
  Value ult(Value x, int64_t y) { return ult(x, ci(y)); }
  Value ule(Value x, Value y) {
    return arith::CmpIOp::create(b, loc, arith::CmpIPredicate::ule, x, y);
  }
  Value eq(Value x, Value y) {
    return arith::CmpIOp::create(b, loc, arith::CmpIPredicate::eq, x, y);
  }
  Value band(Value x, Value y) { return arith::AndIOp::create(b, loc, x, y); }
  Value select(Value c, Value x, Value y) {
    return arith::SelectOp::create(b, loc, c, x, y);
  }
  Value fadd(Value x, Value y) { return arith::AddFOp::create(b, loc, x, y); }
  Value fsub(Value x, Value y) { return arith::SubFOp::create(b, loc, x, y); }
  Value fmul(Value x, Value y) { return arith::MulFOp::create(b, loc, x, y); }
  Value fdiv(Value x, Value y) { return arith::DivFOp::create(b, loc, x, y); }
  Value fma(Value x, Value y, Value acc) {
    return math::FmaOp::create(b, loc, x, y, acc);
  }
  Value sigmoid(Value a);
  /// norm_project's r = rsqrt(sumSq / K + eps) for one token, without
  /// overflow (docs/Guarantees.md): where the f32 sum of squares is +inf,
  /// re-reads the token's K elements of `row` (flat, from `token() * K`)
  /// scaled by 2^-96 and returns 2^-96 rsqrt(sum / K); NaN when `row` is null
  /// (the row is not in memory). The CPU lowering's normFactor does the same.
  Value normFactor(Value sumSq, Value row, function_ref<Value()> token,
                   int64_t K, float eps);
  /// True where a token's f32 sum of squares overflowed (+inf): the case
  /// normFactor rescues (r ~ 2^-96 or less there).
  Value sumOfSquaresOverflowed(Value sumSq);
  /// The same factor where the kernel has summed the squares of 2^-96 x
  /// beside the plain ones (`scaledSumSq`; no row to read again): rsqrt(sumSq
  /// / K + eps), or 2^-96 rsqrt(scaledSumSq / K) where sumSq overflowed.
  Value normFactorOfSums(Value sumSq, Value scaledSumSq, int64_t K, float eps);
  /// The softmax of each row of the row-major matrix `L` with rows of n
  /// (held in registers, one value per entry), with the row max subtracted;
  /// `plus`
  /// (when given) is added to every entry.
  SmallVector<Value> softmaxRows(ArrayRef<Value> L, int64_t n,
                                 Value plus = {});
  Value splat(Value s, VectorType t) {
    return vector::BroadcastOp::create(b, loc, t, s);
  }

  // --- memory and synchronisation ----------------------------------------
  Value ld(Value mem, Value i) {
    return memref::LoadOp::create(b, loc, mem, ValueRange{i});
  }
  void st(Value v, Value mem, Value i) {
    memref::StoreOp::create(b, loc, v, mem, ValueRange{i});
  }
  void barrier() { gpu::BarrierOp::create(b, loc); }
  /// v + shuffle_xor(v, off) for off = width/2 .. 1: the sum over `width`
  /// consecutive lanes (a power of two <= 32), in every one of them.
  Value warpSum(Value v, int64_t width);

  // --- tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate) ----------
  /// A vector<2xbf16> as the i32 register the mma instructions take.
  Value asI32(Value bf16x2);
  /// f32 (scalar or vector) -> (bf16 head, bf16 of the remainder): hi*a +
  /// lo*a carries ~16 bits of the f32 operand.
  std::pair<Value, Value> headAndRemainder(Value f32s);
  /// headAndRemainder of an f32 pair, each as the bf16x2 i32 register the
  /// mma instructions take.
  std::pair<Value, Value> splitBf16(Value f32x2);
  /// Two f32 scalars as a vector<2xf32>.
  Value f32Pair(Value first, Value second);
  /// acc[4] += A(16x16 bf16) * B(16x8 bf16); A row-major, B column-major.
  void mmaBf16(MutableArrayRef<Value> acc, ArrayRef<Value> a, Value b0,
               Value b1);

  // --- structured control flow -------------------------------------------
  template <typename F> void emitIf(Value cond, F thenFn) {
    auto ifOp = scf::IfOp::create(b, loc, TypeRange{}, cond, false);
    OpBuilder::InsertionGuard g(b);
    b.setInsertionPointToStart(ifOp.thenBlock());
    thenFn();
  }
  /// The same with an else branch and no results.
  template <typename F, typename G>
  void emitIfElse(Value cond, F thenFn, G elseFn) {
    auto ifOp = scf::IfOp::create(b, loc, TypeRange{}, cond, true);
    OpBuilder::InsertionGuard g(b);
    b.setInsertionPointToStart(ifOp.thenBlock());
    thenFn();
    b.setInsertionPointToStart(ifOp.elseBlock());
    elseFn();
  }
  template <typename F, typename G>
  SmallVector<Value> emitIfElse(TypeRange types, Value cond, F thenFn,
                                G elseFn) {
    auto ifOp = scf::IfOp::create(b, loc, types, cond, true);
    {
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointToStart(ifOp.thenBlock());
      scf::YieldOp::create(b, loc, thenFn());
      b.setInsertionPointToStart(ifOp.elseBlock());
      scf::YieldOp::create(b, loc, elseFn());
    }
    return SmallVector<Value>(ifOp.getResults());
  }
  /// `cond ? thenFn() : 0.0f` for one f32 value.
  template <typename F> Value f32OrZero(Value cond, F thenFn) {
    return emitIfElse(
        f32, cond, [&]() -> SmallVector<Value> { return {thenFn()}; },
        [&]() -> SmallVector<Value> { return {cf(0.0)}; })[0];
  }
  template <typename F>
  SmallVector<Value> emitFor(Value lb, Value ub, Value step, ValueRange inits,
                             F body) {
    auto forOp = scf::ForOp::create(b, loc, lb, ub, step, inits);
    OpBuilder::InsertionGuard g(b);
    b.setInsertionPointToStart(forOp.getBody());
    SmallVector<Value> next =
        body(forOp.getInductionVar(), forOp.getRegionIterArgs());
    if (!inits.empty())
      scf::YieldOp::create(b, loc, next);
    return SmallVector<Value>(forOp.getResults());
  }

  // --- activations ---------------------------------------------------------
  /// Set by the kernel: the activation layout, and the i1 value that says
  /// every activation pointer is 16-byte aligned (null: never; the vector
  /// path also needs C % vec == 0, which the kernel checks statically).
  ActivationLayout acts;
  Value aligned;

  VectorType vecF32() { return VectorType::get({acts.vec}, f32); }
  VectorType vecF32Of(int64_t width) { return VectorType::get({width}, f32); }
  VectorType vecAct() { return VectorType::get({acts.vec}, acts.act); }
  /// Widens an activation scalar or vector to f32 (f32 passes).
  Value toF32(Value v);
  Value bf16PairsToF32(Value v); // toF32 of a bf16 vector of even length
  /// Rounds f32 to the activation type `t` (scalar or vector type); a value
  /// already of type `t` is returned as it is.
  Value toAct(Value v, Type t);
  /// Rounds f32 values (a scalar or a vector) to the activation type and
  /// back (what is stored).
  Value roundAct(Value v);
  /// Loads `vec` activations at mem[base + c ..] (as f32, or in the
  /// activation type when `raw`: half the registers for values held across
  /// a loop); lanes with c + e >= C or !ok read as 0.
  Value loadAct(Value mem, Value base, Value c, Value ok, bool raw = false);
  /// loadAct's guarded path: `vec` element loads, each behind its guard
  /// (tails, misaligned pointers). Also reads an f32 row beside bf16/f16
  /// activations (not raw).
  Value loadElements(Value mem, Value base, Value c, Value ok,
                     bool raw = false);
  /// Stores `vec` f32 values rounded to the activation type at
  /// mem[base + c ..]; lanes with c + e >= C or !ok are skipped.
  void storeAct(Value v, Value mem, Value base, Value c, Value ok);
  /// The same without guards, for callers that know the vector is in range
  /// and `aligned` holds (one uniform branch instead of one per vector).
  Value loadActInRange(Value mem, Value base, Value c, bool raw = false);
  void storeActInRange(Value v, Value mem, Value base, Value c);
};

} // namespace mlir::mhc::gpu_kernels

#endif // MHC_LIB_CONVERSION_MHCTOGPU_KERNELBUILDER_H
