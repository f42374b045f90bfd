//===- ForwardKernel.h - the forward mhc kernels -----------------*- C++ -*-===//
//
// One kernel per forward group: "post" (post_res [+ the next norm_project]),
// "pre" ([norm_project +] split_mixes + sinkhorn + pre_apply [+ rms_norm of
// its u]) or any forward
// op alone; before a norm_project kernel, when its schedule says so, a small
// kernel that prepares fn once per call (`<kernel>_prepare_fn`). One block
// owns a tile of `tileTokens` tokens and runs the stages its members need,
// each in its own file:
//
//   StreamStage.cpp      the chunk loop over C: post_res's x_next and the
//                        projection input (a bf16 shared tile), ~256-byte
//                        runs of every row (post_res and/or norm_project)
//   ProjectionStage.cpp  the norm_project product on the tensor cores and
//                        mix = dot * rsqrt(mean square + eps); the fn
//                        prepare kernel
//   CoefficientStage.cpp split_mixes + sinkhorn, one thread per token
//   MixStage.cpp         pre_apply, expand, collapse (vectorised over the
//                        tile's [tokens x C] positions), and rms_norm of
//                        pre_apply's u or of an input (one warp a row)
//
// ForwardKernel.cpp holds the family (legality, default schedule, schedule
// checks), the kernel's shared memory and the order of the stages.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_LIB_CONVERSION_MHCTOGPU_FORWARDKERNEL_H
#define MHC_LIB_CONVERSION_MHCTOGPU_FORWARDKERNEL_H

#include "KernelBuilder.h"
#include "KernelGroup.h"

namespace mlir::mhc::gpu_kernels {

/// The forward family (registered in KernelFamilies.cpp).
const KernelFamily &forwardKernelFamily();

/// A forward group's members by kind (null when absent), its stream shape
/// and the geometry derived from its schedule.
struct ForwardPlan {
  PostResOp pr;
  NormProjectOp np;
  SplitMixesOp sp;
  SinkhornOp sk;
  PreApplyOp pa;
  RmsNormOp rn;
  ExpandOp ex;
  CollapseOp co;
  int64_t n = 1, C = 0;
  Type act; // activation element type (bf16 / f16 / f32)
  Schedule s;
  /// The fn prepare kernel's schedule; none: the projection reads and
  /// splits fn itself, once per tile of tokens.
  std::optional<Schedule> prepare;

  int64_t M() const { return numMixes(n); }
  /// Column tiles of 8 mixes, row tiles of 16 tokens of the projection.
  int64_t NT() const { return (M() + 7) / 8; }
  int64_t MT() const { return s.tileTokens / 16; }
  /// Projection inputs per chunk (n streams x chunk columns).
  int64_t KCH() const { return n * s.chunkColumns; }
  int64_t chunks() const { return (C + s.chunkColumns - 1) / s.chunkColumns; }
  /// The prepared fn, in the order the projection reads it: per chunk, k16
  /// step of the chunk, n8 tile and lane, the lane's B fragment as 4 i32
  /// words (bf16x2 head and remainder of k 2q..2q+1, then of k 2q+8..2q+9;
  /// 16 bytes, one load).
  int64_t preparedFnWords() const {
    return chunks() * (KCH() / 16) * NT() * 32 * 4;
  }
  /// Row pitch of the bf16 projection tile: 16 bytes of padding make the
  /// ldmatrix row addresses of a warp hit distinct banks.
  int64_t ldA() const { return KCH() + 8; }
  int64_t warps() const { return s.threads / 32; }
  /// True when the group's pre_apply takes pre from its split_mixes.
  bool preFromSplit() { return pa && sp && pa.getPre() == sp.getPre(); }
};

/// Builds the body of one forward kernel; the stage methods are defined in
/// the stage files named in the header comment.
struct ForwardKernelBuilder : KernelBuilder {
  ForwardKernelBuilder(OpBuilder &b, Location loc, ForwardPlan &p,
                       const KernelGroup &group)
      : KernelBuilder(b, loc), p(p), group(group) {}

  ForwardPlan &p; // op getters are not const
  const KernelGroup &group;
  DenseMap<Value, Value> argOf; // tensor value -> kernel memref argument
  Value T, tid, lane, warp, tile0, fnAligned;
  Value fnPrepared; // the prepared fn (i32 words), null when not prepared
  // Shared memory (null when unused).
  Value aTile, aTileLo, red, ssTok, postS, combS, preS;

  Value arg(Value tensor) { return argOf.lookup(tensor); }
  /// The kernel argument `v` is written to, or null if it stays on chip.
  Value outputArg(Value v) {
    return llvm::is_contained(group.outputs, v) ? arg(v) : Value();
  }

  // ForwardKernel.cpp
  void loadCoeffTile(Value src, Value dst, int64_t width);

  // StreamStage.cpp
  void emitChunkLoop();
  SmallVector<Value> loadItem(Value item, Value c0, Value itemOk);
  Value emitItem(Value item, Value c0, ArrayRef<Value> loaded);

  // ProjectionStage.cpp
  Value loadFnPair(Value m, Value stream, Value col, bool vec);
  SmallVector<Value> splitFnFragment(Value c0, Value step, Value nt,
                                     Value ln, bool vec);
  void emitPrepareFn(int64_t threads);
  SmallVector<Value> emitMma(Value c0, SmallVector<Value> acc, bool vecFn);
  void finishProjection(ArrayRef<Value> acc, ArrayRef<Value> ss,
                        int64_t itemsPerThread, bool ragged);

  // CoefficientStage.cpp
  SmallVector<Value> sinkhorn(SmallVector<Value> P, int64_t n, int64_t iters,
                              float epsv);
  void emitPerToken();

  // MixStage.cpp
  template <typename L, typename S> void forTileVectors(L load, S compute);
  /// Token's n stream vectors at column c (inRange: unguarded, for callers
  /// that know them whole and aligned).
  SmallVector<Value> loadStreams(Value mem, Value token, Value c, Value ok,
                                 bool inRange = false);
  void emitPreApply();
  Value loadNormWeight(Value c, Value ok);
  void emitRowNorm();
  void emitNormRow(Value t, Value token, Value ok, Value laneColumn,
                   bool held);
  void emitExpand();
  void emitCollapse();
};

} // namespace mlir::mhc::gpu_kernels

#endif // MHC_LIB_CONVERSION_MHCTOGPU_FORWARDKERNEL_H
