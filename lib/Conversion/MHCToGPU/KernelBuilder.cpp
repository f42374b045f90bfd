//===- KernelBuilder.cpp - shared helpers of the GPU kernel builders ------===//
#include "KernelBuilder.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"

#include <limits>

using namespace mlir;
using namespace mlir::mhc::gpu_kernels;

Value KernelBuilder::sigmoid(Value a) {
  Value e = math::ExpOp::create(b, loc, arith::NegFOp::create(b, loc, a));
  return fdiv(cf(1.0), fadd(cf(1.0), e));
}

Value KernelBuilder::sumOfSquaresOverflowed(Value sumSq) {
  return arith::CmpFOp::create(b, loc, arith::CmpFPredicate::OEQ, sumSq,
                               cf(std::numeric_limits<double>::infinity()));
}

Value KernelBuilder::normFactor(Value sumSq, Value row,
                                function_ref<Value()> token, int64_t K,
                                float eps) {
  return emitIfElse(
      b.getF32Type(), sumOfSquaresOverflowed(sumSq),
      [&]() -> SmallVector<Value> {
        if (!row)
          return {cf(std::numeric_limits<double>::quiet_NaN())};
        Value base = mul(token(), ci(K));
        Value scale = cf(0x1p-96);
        Value sum = emitFor(ci(0), ci(K), ci(1), {cf(0.0)},
                            [&](Value k, ValueRange acc) {
                              Value v =
                                  fmul(toF32(ld(row, add(base, k))), scale);
                              return SmallVector<Value>{
                                  fadd(acc[0], fmul(v, v))};
                            })[0];
        return {fmul(scale, math::RsqrtOp::create(
                                b, loc, fdiv(sum, cf(double(K)))))};
      },
      [&]() -> SmallVector<Value> {
        return {math::RsqrtOp::create(
            b, loc, fadd(fdiv(sumSq, cf(double(K))), cf(eps)))};
      })[0];
}

Value KernelBuilder::normFactorOfSums(Value sumSq, Value scaledSumSq, int64_t K,
                                      float eps) {
  Value plain =
      math::RsqrtOp::create(b, loc, fadd(fdiv(sumSq, cf(double(K))), cf(eps)));
  Value rescued =
      fmul(cf(0x1p-96),
           math::RsqrtOp::create(b, loc, fdiv(scaledSumSq, cf(double(K)))));
  return select(sumOfSquaresOverflowed(sumSq), rescued, plain);
}

SmallVector<Value> KernelBuilder::softmaxRows(ArrayRef<Value> L, int64_t n,
                                              Value plus) {
  SmallVector<Value> q(L.size());
  for (int64_t i = 0; i < int64_t(L.size()) / n; ++i) {
    Value mx = L[i * n];
    for (int64_t j = 1; j < n; ++j)
      mx = arith::MaximumFOp::create(b, loc, mx, L[i * n + j]);
    Value s;
    for (int64_t j = 0; j < n; ++j) {
      q[i * n + j] = math::ExpOp::create(b, loc, fsub(L[i * n + j], mx));
      s = j ? fadd(s, q[i * n + j]) : q[i * n + j];
    }
    Value r = fdiv(cf(1.0), s);
    for (int64_t j = 0; j < n; ++j) {
      q[i * n + j] = fmul(q[i * n + j], r);
      if (plus)
        q[i * n + j] = fadd(q[i * n + j], plus);
    }
  }
  return q;
}

Value KernelBuilder::warpSum(Value v, int64_t width) {
  for (int64_t off = width / 2; off >= 1; off /= 2) {
    auto sh =
        gpu::ShuffleOp::create(b, loc, v, off, 32, gpu::ShuffleMode::XOR);
    v = fadd(v, sh.getShuffleResult());
  }
  return v;
}

Value KernelBuilder::toF32(Value v) {
  if (acts.act == f32 || getElementTypeOrSelf(v.getType()).isF32())
    return v;
  auto vt = dyn_cast<VectorType>(v.getType());
  if (vt && vt.getElementType().isBF16() && vt.getRank() == 1 &&
      vt.getNumElements() % 2 == 0)
    return bf16PairsToF32(v);
  Type t = f32;
  if (vt)
    t = vt.clone(f32);
  return arith::ExtFOp::create(b, loc, t, v);
}

/// A bf16 is the upper half of the f32 it extends to, so a 32-bit word of
/// two bf16 extends with one instruction each: `w << 16` (element 2k) and
/// `w & 0xffff0000` (element 2k + 1). arith.extf of a vector becomes, per
/// word, that shift for the low half but a byte permute and a shift for the
/// high one (ptxas, sm_90). Bit-identical to extf, NaN payloads included.
Value KernelBuilder::bf16PairsToF32(Value v) {
  auto vt = cast<VectorType>(v.getType());
  int64_t words = vt.getNumElements() / 2;
  Type i32 = b.getI32Type();
  auto wordsType = VectorType::get({words}, i32);
  auto floatsType = VectorType::get({words}, f32);
  Value w = vector::BitCastOp::create(b, loc, wordsType, v);
  Value low = arith::ShLIOp::create(b, loc, w, splat(ci32(16), wordsType));
  Value high = arith::AndIOp::create(
      b, loc, w, splat(ci32(int32_t(0xffff0000u)), wordsType));
  SmallVector<int64_t> interleave;
  for (int64_t k = 0; k < words; ++k)
    interleave.append({k, words + k});
  return vector::ShuffleOp::create(
      b, loc, vector::BitCastOp::create(b, loc, floatsType, low),
      vector::BitCastOp::create(b, loc, floatsType, high), interleave);
}

Value KernelBuilder::toAct(Value v, Type t) {
  // Values already in the activation type pass (a copy: no round trip
  // through f32, which LLVM folds for extf but not for bf16PairsToF32).
  return acts.act == f32 || v.getType() == t
             ? v
             : arith::TruncFOp::create(b, loc, t, v);
}

Value KernelBuilder::roundAct(Value v) {
  if (acts.act == f32)
    return v;
  auto vt = dyn_cast<VectorType>(v.getType());
  Type t = vt ? Type(vt.clone(acts.act)) : acts.act;
  return toF32(toAct(v, t));
}

Value KernelBuilder::loadElements(Value mem, Value base, Value c, Value ok,
                                  bool raw) {
  VectorType vt = raw ? vecAct() : vecF32();
  Value v = arith::ConstantOp::create(b, loc, b.getZeroAttr(vt));
  Value zero =
      arith::ConstantOp::create(b, loc, b.getZeroAttr(vt.getElementType()));
  for (int64_t e = 0; e < acts.vec; ++e) {
    Value ce = add(c, ci(e));
    Value inb = band(ok, ult(ce, ci(acts.C)));
    Value s = emitIfElse(
        vt.getElementType(), inb,
        [&]() -> SmallVector<Value> {
          Value loaded = ld(mem, add(base, ce));
          return {raw ? loaded : toF32(loaded)};
        },
        [&]() -> SmallVector<Value> { return {zero}; })[0];
    v = vector::InsertOp::create(b, loc, s, v, e);
  }
  return v;
}

Value KernelBuilder::loadAct(Value mem, Value base, Value c, Value ok,
                             bool raw) {
  VectorType vt = raw ? vecAct() : vecF32();
  auto scalarPath = [&]() -> SmallVector<Value> {
    return {loadElements(mem, base, c, ok, raw)};
  };
  if (!aligned)
    return scalarPath()[0];
  Value fast = band(band(aligned, ok), ult(c, ci(acts.C)));
  return emitIfElse(
      vt, fast,
      [&]() -> SmallVector<Value> {
        return {loadActInRange(mem, base, c, raw)};
      },
      scalarPath)[0];
}

void KernelBuilder::storeAct(Value v, Value mem, Value base, Value c,
                             Value ok) {
  auto scalarPath = [&]() {
    for (int64_t e = 0; e < acts.vec; ++e) {
      Value ce = add(c, ci(e));
      Value inb = band(ok, ult(ce, ci(acts.C)));
      emitIf(inb, [&]() {
        Value s = vector::ExtractOp::create(b, loc, v, e);
        st(toAct(s, acts.act), mem, add(base, ce));
      });
    }
  };
  if (!aligned) {
    scalarPath();
    return;
  }
  Value fast = band(band(aligned, ok), ult(c, ci(acts.C)));
  emitIfElse(
      fast, [&]() { storeActInRange(v, mem, base, c); }, scalarPath);
}

Value KernelBuilder::loadActInRange(Value mem, Value base, Value c,
                                    bool raw) {
  Value v = vector::LoadOp::create(b, loc, vecAct(), mem,
                                   ValueRange{add(base, c)}, false,
                                   llvm::MaybeAlign(16));
  return raw ? v : toF32(v);
}

void KernelBuilder::storeActInRange(Value v, Value mem, Value base,
                                    Value c) {
  vector::StoreOp::create(b, loc, toAct(v, vecAct()), mem,
                          ValueRange{add(base, c)}, false,
                          llvm::MaybeAlign(16));
}

Value KernelBuilder::asI32(Value bf16x2) {
  Value w =
      vector::BitCastOp::create(b, loc, VectorType::get({1}, i32), bf16x2);
  return vector::ExtractOp::create(b, loc, w, 0);
}

std::pair<Value, Value> KernelBuilder::headAndRemainder(Value f32s) {
  Type bt = b.getBF16Type();
  if (auto vt = dyn_cast<VectorType>(f32s.getType()))
    bt = VectorType::get(vt.getShape(), bt);
  Value h = arith::TruncFOp::create(b, loc, bt, f32s);
  Value rest = fsub(f32s, arith::ExtFOp::create(b, loc, f32s.getType(), h));
  return {h, arith::TruncFOp::create(b, loc, bt, rest)};
}

std::pair<Value, Value> KernelBuilder::splitBf16(Value f32x2) {
  auto [h, l] = headAndRemainder(f32x2);
  return {asI32(h), asI32(l)};
}

Value KernelBuilder::f32Pair(Value first, Value second) {
  return vector::FromElementsOp::create(b, loc, vecF32Of(2),
                                        ValueRange{first, second});
}

void KernelBuilder::mmaBf16(MutableArrayRef<Value> acc, ArrayRef<Value> a,
                            Value b0, Value b1) {
  auto res = NVVM::MmaOp::create(
      b, loc,
      LLVM::LLVMStructType::getLiteral(b.getContext(), {f32, f32, f32, f32}),
      ValueRange(a), ValueRange{b0, b1},
      ValueRange(ArrayRef<Value>(acc.data(), acc.size())),
      ArrayRef<int64_t>{16, 8, 16}, std::nullopt, std::nullopt,
      std::array<NVVM::MMATypes, 2>{NVVM::MMATypes::bf16,
                                    NVVM::MMATypes::bf16},
      std::array<NVVM::MMALayout, 2>{NVVM::MMALayout::row,
                                     NVVM::MMALayout::col});
  for (int64_t e = 0; e < 4; ++e)
    acc[e] = LLVM::ExtractValueOp::create(b, loc, res, e);
}
