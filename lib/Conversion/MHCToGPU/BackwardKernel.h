//===- BackwardKernel.h - the backward (gradient) kernels --------*- C++
//-*-===//
//
// The gradient ops of one sublayer, grouped by --mhc-fuse, become three
// kernels (docs/GPU.md, "Backward kernels"):
//
//   rows    token tiles walk C once (like the forward's chunk loop):
//           dy = sum_j post[j] dout[j]; the row sums dpost, dcomb (post_res
//           grad), dpre (pre_apply grad) and sum x^2 (norm_project grad);
//           then one thread per token recomputes split_mixes + Sinkhorn from
//           the saved mix and walks them backwards: per token a record
//           [dm | comb | pre | 2 dS] for the cols kernel, and per block the
//           partial sums of dbase and dscale.
//   cols    blocks own a column range of all n streams and walk a range of
//           the tokens: dx = comb-mix of dout + pre du + 2 dS x + dm @ fn
//           (tensor cores), and dfn's partial sum dm^T @ x over the token
//           range (tensor cores), one partial per token range.
//   params  dfn, dscale, dbase = the partials summed in a fixed order (two
//           runs give bit-identical gradients: no float atomics).
//
// Where rows are short (<= 4 KB) the token pass is a kernel of its own,
// between rows and cols (schedule [rows, tokens, cols, params]):
//
//   rows    as above up to the row sums, which go to memory (T x W f32);
//   tokens  tiles of tokens, n lanes a token where n divides a warp: the
//           token pass of every token at once (short row loads cannot hide
//           each tile's walk: C = 512's fused backward 0.199 -> 0.186 ms,
//           docs/GPU.md "The token kernel").
//
// Group kinds: "backward" (the whole sublayer, no sublayer F between the
// post_res and pre_apply gradients), "post_backward" (post_res_grad's dy,
// dpost, dcomb before an opaque F's VJP: the rows kernel alone) and
// "pre_backward" (the rest after it, dpost and dcomb as inputs). A
// "backward" or "pre_backward" group may also hold the lower sublayer's
// post_res_grad of which only dy is used (the dy fold): its cols kernel then
// stores dy_lower = sum_j post_lower[j] dx[j] beside dx.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_LIB_CONVERSION_MHCTOGPU_BACKWARDKERNEL_H
#define MHC_LIB_CONVERSION_MHCTOGPU_BACKWARDKERNEL_H

#include "KernelBuilder.h"
#include "KernelGroup.h"
#include <functional>

namespace mlir::mhc::gpu_kernels {

/// The backward family (registered in KernelFamilies.cpp).
const KernelFamily &backwardKernelFamily();

/// The members of a backward group, its stream shape and the derived layout
/// of the per-token record.
struct BackwardPlan {
  SplitMixesOp sm;       // recomputes pre / post / logits from the saved mix
  SinkhornOp sk;         // recomputes comb (backward, pre_backward)
  PostResGradOp prg;     // dy, dpost, dcomb (rows) and its dx (cols)
  PreApplyGradOp pag;    // dpre (rows) and its dx (cols)
  SinkhornGradOp skg;    // per token (rows)
  SplitMixesGradOp smg;  // per token (rows) + dscale, dbase (params)
  NormProjectGradOp npg; // sum x^2 (rows), its dx and dfn (cols, params)
  SmallVector<arith::AddFOp, 2> adds; // dx = sum of the three dx
  // The dy fold: the lower sublayer's post_res_grad, whose dout is this dx
  // and of which only dy is used (cols: dy = sum_j post[j] dx[j]).
  PostResGradOp lowerPrg;
  // The sublayer's pre-norm (docs/PreNorm.md): du = rms_norm_grad of u =
  // pre_apply(x, pre), never in memory. The kernels read the norm's output
  // cotangent g and its weight instead: rows makes u again and its row sums
  // give dpre, r and k = r^3 S / C; cols forms du = r weight g - k u per
  // element; dweight = sum_t g u r is summed like dfn.
  RmsNormGradOp rng;
  PreApplyOp paU;
  std::string kind;

  int64_t n = 1, C = 0;
  Type act;
  // Values the kernels read or write (null when the group has none).
  Value x, y, dout, du, mix, scale, base, fn;
  Value dpostIn, dcombIn;   // pre_backward: from the post_backward group
  Value postIn;             // post_backward of a lone post_res_grad
  Value postLower, dyLowerOut; // the dy fold (lowerPrg)
  Value dyOut, dpostOut, dcombOut, dxOut, dfnOut, dscaleOut, dbaseOut;
  Value g, normWeight, dweightOut; // the pre-norm's (rng)
  float postMult = 2.0f, preEps = 1e-6f, sinkEps = 1e-6f, normEps = 1e-6f;
  float rmsEps = 1e-6f;
  int64_t iterations = 20;

  int64_t M() const { return numMixes(n); }
  bool hasTokenPass() const { return static_cast<bool>(smg); }
  bool preNorm() const { return static_cast<bool>(rng); }
  /// The per-token record written by rows, read by cols:
  /// [dm (M) | comb (n*n) | pre (n) | 2 dS (1) | r, k (the pre-norm's)].
  int64_t recordWidth() const { return M() + n * n + n + 1 + (rng ? 2 : 0); }
  int64_t recDm() const { return 0; }
  int64_t recComb() const { return M(); }
  int64_t recPre() const { return M() + n * n; }
  int64_t recDS() const { return M() + n * n + n; }
  int64_t recR() const { return recDS() + 1; }
  int64_t recK() const { return recDS() + 2; }
  /// Per rows block: the partial sums of da (M, for dbase) and of da * mix
  /// per group (3, for dscale).
  int64_t paramWidth() const { return M() + 3; }
  /// The row sums of rows, per token: dpost (n), dcomb (n*n), dpre (n),
  /// sum x^2 (1), in this order (those the group has).
  int64_t rowSumDpost() const { return 0; }
  int64_t rowSumDcomb() const { return n; }
  int64_t rowSumDpre() const { return n + n * n; }
  int64_t rowSumSq() const { return 2 * n + n * n; }
  /// With the pre-norm, then its r and k (dpre already through the norm).
  int64_t rowSumR() const { return rowSumSq() + 1; }
  int64_t rowSumK() const { return rowSumSq() + 2; }
  int64_t rowSums() const { return 2 * n + n * n + 1 + (rng ? 2 : 0); }
  /// With a token kernel, the row sums the rows kernel stores per token:
  /// those from `firstStoredRowSum()` on (pre_backward's dpost and dcomb
  /// come from memory, so it stores dpre and sum x^2 alone).
  int64_t firstStoredRowSum() const { return y ? 0 : rowSumDpre(); }
  int64_t storedRowSums() const { return rowSums() - firstStoredRowSum(); }
};

/// Which of the kernels a RowsKernelBuilder emits: the rows kernel with its
/// token pass (Whole), without it (Rows: the row sums go to memory), or the
/// token kernel (Tokens: the row sums come from memory).
enum class RowsPart { Whole, Rows, Tokens };

/// Rows kernel body (BackwardRows.cpp + BackwardTokenStage.cpp).
struct RowsKernelBuilder : KernelBuilder {
  RowsKernelBuilder(OpBuilder &b, Location loc, const BackwardPlan &p,
                    const Schedule &s, RowsPart part)
      : KernelBuilder(b, loc), p(p), s(s), part(part) {}
  const BackwardPlan &p;
  const Schedule &s;
  RowsPart part;
  DenseMap<Value, Value> argOf; // group value -> kernel memref argument
  Value record, paramPartial;   // scratch outputs (null when unused)
  Value rowSumsMem; // Rows / Tokens: T x storedRowSums() f32 scratch
  Value T, tid, tile0;
  Value postS, sumsS, paramS; // shared memory
  Value preRowS;              // the pre-norm: the tile's pre for the row walk
  Value lineS;                // tokenLanes: the tile's Sinkhorn matrices
  Value denominators;         // private memory of the Sinkhorn walk

  /// Whether n lanes share each token's Sinkhorn walk (a line each): n
  /// divides a warp and the tile's tokens fill whole warps of the block.
  /// (`s`: the schedule of the kernel that runs the token pass.)
  static bool tokenLanes(const BackwardPlan &p, const Schedule &s) {
    int64_t lanes = s.tileTokens * p.n;
    return p.n > 1 && 32 % p.n == 0 && lanes % 32 == 0 && lanes <= s.threads;
  }
  bool tokenLanes() const { return tokenLanes(p, s); }

  Value arg(Value v) { return v ? argOf.lookup(v) : Value(); }
  void emitBody();
  /// The tile's coefficients of split_mixes group `group` (0 pre, 1 post)
  /// into shared `dest` ([tileTokens x n]), `finish` applied to the
  /// activation, or read from `given` ([T x n]) when it is set.
  void loadCoefficients(Value dest, int64_t group, Value given,
                        function_ref<Value(Value)> finish);
  void loadPost();
  void loadPre();
  void emitRowLoop();
  /// Tokens: the tile's row sums from memory into sumsS.
  void loadRowSums();
  /// Every token of the tile through the token pass, then the block's
  /// parameter partials.
  void emitTokenPass();
  /// The token pass (BackwardTokenStage.cpp): one thread a token, or with
  /// tokenLanes lane `line` of the token's n (the warp's live lanes `mask`).
  void emitTokenBackward(Value t, Value token);
  void emitTokenBackwardLanes(Value t, Value token, Value line, Value mask);
  struct TokenMixes {
    SmallVector<Value> mix, a; // a = mix * scale + base
    Value scale[3];
  };
  TokenMixes loadMixes(Value token);
  Value dcombAt(Value t, Value token, Value e);
  /// split_mixes' and norm_project's per-token backward from dL (the
  /// logits' gradient): the record's pre, dm and 2 dS, the parameter rows.
  void emitTokenTail(Value t, Value token, const TokenMixes &mx,
                     ArrayRef<Value> dL);
  void emitParamPartials();
};

/// Cols kernel body (BackwardCols.cpp).
struct ColsKernelBuilder : KernelBuilder {
  ColsKernelBuilder(OpBuilder &b, Location loc, const BackwardPlan &p,
                    const Schedule &s)
      : KernelBuilder(b, loc), p(p), s(s) {}
  const BackwardPlan &p;
  const Schedule &s;
  DenseMap<Value, Value> argOf;
  Value record, dfnPartial;
  Value dweightPartial; // the pre-norm's: [splits x C] f32
  Value T, tid, lane, warp, col0, split;
  Value tileIndex; // the token tile being processed
  // Shared memory: the records' comb, pre and 2 dS (f32), the x, dout, du
  // rows, and the tile's dm transposed as bf16 head/remainder (split once
  // per element).
  Value recS, xS, doutS, duS, dmHiS, dmLoS;

  Value arg(Value v) { return v ? argOf.lookup(v) : Value(); }
  /// Row pitches of the shared tiles: 8 elements of padding spread the 8
  /// rows a warp reads at once over the banks.
  /// (The kernel's shared memory is laid out with them: colsShared.)
  static int64_t tilePitch(const BackwardPlan &p, const Schedule &s) {
    return p.n * s.chunkColumns + 8;
  }
  static int64_t duPitch(const Schedule &s) { return s.chunkColumns + 8; }
  /// The M mixes in steps of 16: the k16 steps of dx's products and the m16
  /// tiles of dfn's.
  static int64_t mixSteps(const BackwardPlan &p) { return (p.M() + 15) / 16; }
  /// dm^T: rows m (padded to the k16 steps of the products, zeros past M),
  /// columns the tile's tokens.
  static int64_t dmRows(const BackwardPlan &p) { return mixSteps(p) * 16; }
  static int64_t dmPitch(const Schedule &s) { return s.tileTokens + 8; }
  /// What the record holds after dm: comb, pre, 2 dS; padded to whole
  /// 16-byte vectors (comb's rows and pre are loaded as vectors); with the
  /// dy fold, then the lower sublayer's post (staged with the record, so
  /// that its loads overlap the products instead of the dx stores).
  static int64_t recPostLower(const BackwardPlan &p) {
    return (p.recordWidth() - p.M() + 3) / 4 * 4;
  }
  static int64_t recPitch(const BackwardPlan &p) {
    return (recPostLower(p) + (p.postLower ? p.n : 0) + 3) / 4 * 4;
  }
  int64_t tilePitch() const { return tilePitch(p, s); }
  int64_t duPitch() const { return duPitch(s); }
  int64_t dmPitch() const { return dmPitch(s); }
  void emitBody();
  /// One group of a tile's elements this thread moves to shared memory:
  /// `load` reads it for tile `tile` (zeros unless `live`), `loadWhole` the
  /// same for a whole tile (wholeTile: no guards), `store` puts the loaded
  /// value in place. They are emitted apart: the loads of the next tile
  /// overlap this tile's products.
  struct TileLoad {
    Value inRange; // null: every thread has this group
    std::function<Value(Value tile, Value live)> load;
    std::function<Value(Value tile)> loadWhole;
    std::function<void(Value)> store;
    Type type; // of the loaded value
  };
  SmallVector<TileLoad> tileLoads();
  /// i1: tile `tile` is live (null: known to be) and whole -- all its tokens
  /// below T, the block's columns inside C, every activation pointer
  /// aligned -- so its loads and dx stores need no per-vector guards. Null
  /// when no tile can be (the vector paths are off).
  Value wholeTile(Value tile, Value live);
  Value tileIsWhole; // the tile being processed is whole (like tileIndex)
  SmallVector<Value> issueLoads(Value tile, Value live);
  void storeLoads(ValueRange loaded);
  /// A warp's n8 tiles (k-columns) and where each starts.
  static int64_t warpTiles(const BackwardPlan &p, const Schedule &s) {
    return p.n * s.chunkColumns / (s.threads / 32) / 8;
  }
  int64_t warpTiles() const { return warpTiles(p, s); }
  bool streamsShareTiles() const { return warpTiles() % p.n == 0; }
  Value tileColumn(int64_t nt);
  /// n8 tiles of a warp that cover the same columns of the chunk (from
  /// `column`), each in its stream: (tile, stream) members.
  struct TileGroup {
    Value column;
    SmallVector<std::pair<int64_t, Value>> members;
  };
  SmallVector<TileGroup> tileGroups();
  /// fn's B fragments, [n8 tile][k16 step] = {hi0, hi1, lo0, lo1}.
  SmallVector<SmallVector<std::array<Value, 4>>> fnFragments;
  void loadFnFragments();
  SmallVector<Value> emitTile(SmallVector<Value> dfnAcc);
};

/// Params kernel body (BackwardParams.cpp). `partials`: the schedule of the
/// kernel whose blocks wrote paramPartial (rows, or tokens when the token
/// pass is a kernel of its own); `reduceS`: [threads] f32 of shared memory;
/// with the pre-norm, dweight from the cols kernel's [splits x C] partials.
void emitParamsKernel(KernelBuilder &k, const BackwardPlan &p,
                      const Schedule &partials, const Schedule &cols,
                      const Schedule &params, Value T, Value dfnPartial,
                      Value paramPartial, Value dfn, Value dscale, Value dbase,
                      Value reduceS, Value dweightPartial = {},
                      Value dweight = {});

} // namespace mlir::mhc::gpu_kernels

#endif // MHC_LIB_CONVERSION_MHCTOGPU_BACKWARDKERNEL_H
