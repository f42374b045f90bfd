//===- BackwardKernel.cpp - the backward kernel family --------------------===//
//
// Legality of the backward groups, their default schedules and checks, the
// kernels' shared memory and arguments, and the host side (see
// BackwardKernel.h; the kernel bodies are in BackwardRows.cpp,
// BackwardTokenStage.cpp, BackwardCols.cpp and BackwardParams.cpp).
//
//===----------------------------------------------------------------------===//
#include "BackwardKernel.h"
#include "HostLaunch.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

static constexpr int64_t kSharedMemoryLimit = 48 * 1024; // static smem
/// Blocks of the cols kernel resident at once over the whole GPU (sm_90:
/// 132 SMs, one block each): the token splits fill one wave of them, so that
/// no second, partial wave idles most of the GPU.
static constexpr int64_t kColsBlocksTarget = 132;
/// fn's B fragments and dfn's accumulators a cols thread keeps in registers
/// (words): with more, its ~200 registers spill.
static constexpr int64_t kColsFragmentWords = 64;
/// Each split writes a partial dfn [M x nC] that the params kernel sums.
static constexpr int64_t kMaxTokenSplits = 32;
/// Rows of at most this many bytes (C x the activation's size) get a token
/// kernel: their row loads are too short to hide each tile's token pass
/// (docs/GPU.md, "The token kernel").
static constexpr int64_t kTokenKernelMaxRowBytes = 4096;

//===----------------------------------------------------------------------===//
// Planning and legality
//===----------------------------------------------------------------------===//

static FailureOr<BackwardPlan> planGroup(const KernelGroup &g) {
  BackwardPlan p;
  p.kind = g.kind();
  Operation *root = g.root;
  SmallVector<PostResGradOp, 2> prgs;
  for (Operation *op : g.members) {
    if (auto o = dyn_cast<SplitMixesOp>(op))
      p.sm = o;
    else if (auto o = dyn_cast<SinkhornOp>(op))
      p.sk = o;
    else if (auto o = dyn_cast<PostResGradOp>(op))
      prgs.push_back(o);
    else if (auto o = dyn_cast<PreApplyGradOp>(op))
      p.pag = o;
    else if (auto o = dyn_cast<PreApplyOp>(op))
      p.paU = o;
    else if (auto o = dyn_cast<RmsNormGradOp>(op))
      p.rng = o;
    else if (auto o = dyn_cast<SinkhornGradOp>(op))
      p.skg = o;
    else if (auto o = dyn_cast<SplitMixesGradOp>(op))
      p.smg = o;
    else if (auto o = dyn_cast<NormProjectGradOp>(op))
      p.npg = o;
    else if (auto o = dyn_cast<arith::AddFOp>(op))
      p.adds.push_back(o);
  }
  bool whole = p.kind == "backward", postSide = p.kind == "post_backward",
       preSide = p.kind == "pre_backward";
  // The dy fold's post_res_grad reads the group's dx (an add of the group).
  for (PostResGradOp prg : prgs) {
    auto add = prg.getDout().getDefiningOp<arith::AddFOp>();
    if (add && llvm::is_contained(p.adds, add) && !postSide)
      p.lowerPrg = prg;
    else
      p.prg = prg;
  }
  size_t members = (postSide ? 3u : 9u) + (p.lowerPrg ? 1u : 0u) +
                   (p.rng ? 2u : 0u);
  bool loneGrad = postSide && g.members.size() == 1;
  bool complete = p.prg && (loneGrad || (p.sm && p.sk)) &&
                  (postSide ? !(p.pag || p.skg || p.smg || p.npg)
                            : p.pag && p.skg && p.smg && p.npg &&
                                  p.adds.size() == 2);
  if (!(whole || postSide || preSide) || !complete || prgs.size() > 2 ||
      (!loneGrad && g.members.size() != members))
    return root->emitOpError()
           << "is not a backward group --mhc-fuse forms (\"backward\", "
              "\"post_backward\" or \"pre_backward\" of one sublayer's "
              "gradient ops)";

  auto xType = cast<RankedTensorType>(p.prg.getX().getType());
  p.n = xType.getDimSize(xType.getRank() - 2);
  p.C = xType.getShape().back();
  p.act = xType.getElementType();
  p.x = p.prg.getX();
  if (loneGrad) {
    p.postIn = p.prg.getPost();
  } else {
    p.mix = p.sm.getMix();
    p.scale = p.sm.getScale();
    p.base = p.sm.getBase();
    p.postMult = p.sm.getPostMult().convertToFloat();
    p.preEps = p.sm.getPreEps().convertToFloat();
    p.sinkEps = p.sk.getEps().convertToFloat();
    p.iterations = p.sk.getIterations();
  }
  p.dout = p.prg.getDout();
  if (!preSide) // the rows kernel reads dout and y for dy, dpost, dcomb
    p.y = p.prg.getY();
  auto isOutput = [&](Value v) { return llvm::is_contained(g.outputs, v); };
  if (postSide) {
    p.dyOut = p.prg.getDy();
    p.dpostOut = isOutput(p.prg.getDpost()) ? p.prg.getDpost() : Value();
    p.dcombOut = isOutput(p.prg.getDcomb()) ? p.prg.getDcomb() : Value();
  } else {
    p.du = p.pag.getDu();
    if (p.rng || p.paU) {
      // du through the pre-norm, u made again: rms_norm_grad(pre_apply(x,
      // pre), weight, g) as --mhc-fuse groups it (docs/PreNorm.md).
      if (!p.rng || !p.paU || p.rng.getDu() != p.du ||
          p.rng.getU() != p.paU.getU() || p.paU.getX() != p.x ||
          p.paU.getPre() != p.sm.getPre())
        return root->emitOpError()
               << "unsupported backward group: the pre-norm's gradient must "
                  "be rms_norm_grad of the group's pre_apply(x, pre), giving "
                  "pre_apply_grad's du";
      if (p.rng.getWeight().getType().getElementType() != p.act)
        return p.rng->emitOpError()
               << "has no GPU kernel yet for a weight of another type than "
                  "the activations' (the CPU path, --mhc-cpu-pipeline, "
                  "computes it)";
      p.du = Value();
      p.g = p.rng.getDout();
      p.normWeight = p.rng.getWeight();
      p.dweightOut = p.rng.getDweight();
      p.rmsEps = p.rng.getEps().convertToFloat();
    }
    p.fn = p.npg.getFn();
    p.normEps = p.npg.getEps().convertToFloat();
    if (whole)
      p.dyOut = isOutput(p.prg.getDy()) ? p.prg.getDy() : Value();
    else {
      p.dpostIn = p.smg.getDpost();
      p.dcombIn = p.skg.getDcomb();
    }
    if (p.adds.front().getResult() != p.adds.back().getLhs() &&
        p.adds.front().getResult() != p.adds.back().getRhs())
      std::swap(p.adds.front(), p.adds.back());
    p.dxOut = p.adds.back().getResult();
    if (p.lowerPrg) {
      if (p.lowerPrg.getDout() != p.dxOut)
        return root->emitOpError() << "the dy fold's post_res_grad must read "
                                      "the group's dx as its dout";
      p.postLower = p.lowerPrg.getPost();
      p.dyLowerOut = p.lowerPrg.getDy();
    }
    p.dfnOut = p.npg.getDfn();
    p.dscaleOut = p.smg.getDscale();
    p.dbaseOut = p.smg.getDbase();
  }
  // What the kernels write is what may leave the group.
  for (Value v : g.outputs)
    if (!llvm::is_contained({p.dyOut, p.dpostOut, p.dcombOut, p.dxOut,
                             p.dfnOut, p.dscaleOut, p.dbaseOut, p.dyLowerOut,
                             p.dweightOut},
                            v))
      return root->emitOpError()
             << "unsupported backward group: an intermediate value is used "
                "outside it (result #"
             << cast<OpResult>(v).getResultNumber() << " of '"
             << v.getDefiningOp()->getName() << "')";
  return p;
}

static int64_t elementBytes(Type t) { return t.getIntOrFloatBitWidth() / 8; }

//===----------------------------------------------------------------------===//
// Schedules: [rows, cols, params], [rows, tokens, cols, params] at small
// widths, or [rows] for post_backward
//===----------------------------------------------------------------------===//

// File-local: the other of Forward/BackwardKernel.cpp has a SharedBuffer too.
namespace {
/// One shared-memory buffer of a kernel: its element count and type. The
/// schedule checks count their bytes; the kernels declare them as workgroup
/// memrefs (sharedTypes), in this order.
struct SharedBuffer {
  int64_t elements;
  Type elem;
};
} // namespace

/// The shared memory of the rows kernel (RowsPart Whole or Rows) or of the
/// token kernel (Tokens), per token of a tile: post (rows), pre (rows, with
/// the pre-norm), the row sums
/// (but where they go to memory), and for the token pass the parameter
/// partials and, with tokenLanes, the Sinkhorn matrices. In this order
/// (emitRowsKernel takes the workgroup attributions in it).
static SmallVector<SharedBuffer> rowsShared(const BackwardPlan &p,
                                            const Schedule &s, RowsPart part) {
  Type f32 = Float32Type::get(p.act.getContext());
  int64_t TT = s.tileTokens;
  bool tokenPass = p.hasTokenPass() && part != RowsPart::Rows;
  SmallVector<SharedBuffer> shared;
  if (part != RowsPart::Tokens)
    shared.push_back({TT * p.n, f32});
  if (part != RowsPart::Tokens && p.preNorm())
    shared.push_back({TT * p.n, f32}); // pre, for u in the row walk
  if (part != RowsPart::Rows)
    shared.push_back({TT * p.rowSums(), f32});
  if (tokenPass)
    shared.push_back({TT * p.paramWidth(), f32});
  if (tokenPass && RowsKernelBuilder::tokenLanes(p, s))
    shared.push_back({TT * 2 * p.n * p.n, f32}); // Y and g of each token
  return shared;
}

/// The cols kernel's shared memory, in ColsKernelBuilder's order and at its
/// padded pitches: per token of a tile the record's comb/pre/dS, the x, dout
/// and du rows, and dm^T (head, remainder).
static SmallVector<SharedBuffer> colsShared(const BackwardPlan &p,
                                            const Schedule &s) {
  MLIRContext *ctx = p.act.getContext();
  Type f32 = Float32Type::get(ctx), bf16 = BFloat16Type::get(ctx);
  using K = ColsKernelBuilder;
  int64_t TT = s.tileTokens, tile = K::tilePitch(p, s);
  int64_t dm = K::dmRows(p) * K::dmPitch(s);
  return {{TT * K::recPitch(p), f32},  {TT * tile, p.act}, {TT * tile, p.act},
          {TT * K::duPitch(s), p.act}, {dm, bf16},         {dm, bf16}};
}

static int64_t sharedBytes(ArrayRef<SharedBuffer> shared) {
  int64_t bytes = 0;
  for (const SharedBuffer &buffer : shared)
    bytes += buffer.elements * elementBytes(buffer.elem);
  return bytes;
}

static int64_t colsSharedBytes(const BackwardPlan &p, const Schedule &s) {
  return sharedBytes(colsShared(p, s));
}

static int64_t rowsSharedBytes(const BackwardPlan &p, const Schedule &s,
                               RowsPart part) {
  return sharedBytes(rowsShared(p, s, part));
}

/// The cols kernel's tile: the widest column chunk CC (<= 64: 128-byte row
/// runs) with a warp count that splits its n * CC k-columns into n8 tiles,
/// whose registers and shared memory fit, and at it the longer token tile
/// that fits. Registers: a thread keeps fn's B fragments and dfn's
/// accumulators, 4 words each per n8 tile and k16 step of the M mixes (n = 4:
/// 64 words). 32 tokens pay a tile's fixed costs (four barriers, every
/// warp's ldmatrix of dm, the record reads) over twice the tokens of 16
/// (n = 4, C = 4096: 0.632 -> 0.565 ms, cols-tile32-v13-h200.json in
/// bench/results) but hold twice the tile in registers; with f16/f32
/// activations, whose x is split into head and remainder, only where the
/// fragments take <= 32 words (ptxas: n = 4 f16 spills at 32 tokens, n = 3
/// f16 and n = 2 f32 do not). Nothing fits: the last candidate, which the
/// verifier rejects.
static void chooseColsTile(const BackwardPlan &p, Schedule &cols) {
  int64_t vec = cols.vectorWidth, kSteps = ColsKernelBuilder::mixSteps(p);
  for (int64_t cc = 64; cc >= vec; cc /= 2) {
    cols.chunkColumns = cc;
    cols.tileTokens = 16;
    cols.threads = 0;
    for (int64_t warps = 8; warps >= 1 && !cols.threads; warps /= 2)
      if ((p.n * cc) % (8 * warps) == 0)
        cols.threads = 32 * warps;
    if (!cols.threads)
      continue;
    int64_t fragmentWords =
        ColsKernelBuilder::warpTiles(p, cols) * kSteps * 2 * 4;
    if (fragmentWords > kColsFragmentWords)
      continue;
    bool roomFor32 = fragmentWords <= (p.act.isBF16() ? kColsFragmentWords
                                                      : kColsFragmentWords / 2);
    for (int64_t tt : {32, 16}) {
      cols.tileTokens = tt;
      if ((tt == 16 || roomFor32) &&
          colsSharedBytes(p, cols) <= kSharedMemoryLimit)
        return;
    }
  }
}

static GroupSchedule defaultSchedule(const BackwardPlan &p) {
  int64_t vec = 16 / elementBytes(p.act);
  Schedule rows;
  rows.vectorWidth = vec;
  rows.chunkColumns = 256 / elementBytes(p.act); // ~256-byte row runs
  rows.tileTokens = 16;
  rows.threads = rows.tileTokens * rows.chunkColumns / vec;
  // <= 128 registers: two blocks of 256 threads per SM keep ~80 KB of
  // loads in flight (n <= 4; more streams need more accumulators). The
  // pre_backward rows kernel has n + 1 accumulators, not n^2 + 2n + 1:
  // four blocks per SM (<= 64 registers) hide each block's serial token
  // pass better (0.241 -> 0.221 ms at C = 4096, sweep-rows-v10-h200.json).
  // With the pre-norm the row pass has 2n + 4 more accumulators: two
  // blocks (<= 128 registers).
  rows.blocksPerSM = p.n > 4                                     ? 0
                     : p.kind == "pre_backward" && !p.preNorm() ? 4
                                                                : 2;
  if (p.kind == "post_backward")
    return {rows};

  // The token kernel (narrow rows): n lanes a token in blocks of 256
  // threads where n divides a warp, else a thread a token in blocks of 128;
  // fewer tokens a block where the shared memory needs it (large n).
  std::optional<Schedule> tokens;
  if (p.C * elementBytes(p.act) <= kTokenKernelMaxRowBytes) {
    bool lanes = 32 % p.n == 0;
    tokens = Schedule();
    tokens->vectorWidth = 1;
    tokens->tileTokens = lanes ? 256 / p.n : 128;
    auto threadsFor = [&](int64_t tt) {
      return std::max<int64_t>(32, (tt * (lanes ? p.n : 1) + 31) / 32 * 32);
    };
    tokens->threads = threadsFor(tokens->tileTokens);
    while (tokens->tileTokens > 1 &&
           rowsSharedBytes(p, *tokens, RowsPart::Tokens) > kSharedMemoryLimit) {
      tokens->tileTokens /= 2;
      tokens->threads = threadsFor(tokens->tileTokens);
    }
  }

  Schedule cols;
  cols.vectorWidth = vec;
  chooseColsTile(p, cols);
  // One block per SM with all the registers it wants (~200): its next
  // tile's loads wait in registers while it computes this one (the software
  // pipeline of BackwardCols.cpp). Two blocks of <= 128 registers spill it
  // (bench/results/cols-kernel-h200.md).
  cols.blocksPerSM = 1;
  int64_t chunks = (p.C + cols.chunkColumns - 1) / cols.chunkColumns;
  cols.tokenSplits =
      std::clamp<int64_t>(kColsBlocksTarget / chunks, 1, kMaxTokenSplits);

  Schedule params;
  params.threads = 256;
  params.tileTokens = 1;
  params.vectorWidth = 1;
  if (tokens)
    return {rows, *tokens, cols, params};
  return {rows, cols, params};
}

static bool isPowerOf2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

/// Whether the group's schedule gives the token pass a kernel of its own:
/// [rows, tokens, cols, params] instead of [rows, cols, params].
static bool hasTokenKernel(const BackwardPlan &p, ArrayRef<Schedule> schedule) {
  return p.hasTokenPass() && schedule.size() == 4;
}

static LogicalResult verifySchedule(const BackwardPlan &p,
                                    ArrayRef<Schedule> schedule,
                                    Operation *root) {
  if (p.kind == "post_backward" ? schedule.size() != 1
                                : schedule.size() != 3 && schedule.size() != 4)
    return root->emitOpError()
           << "schedule: expects "
           << (p.kind == "post_backward"
                   ? "1 schedule ([rows])"
                   : "3 or 4 schedules ([rows, cols, params] or [rows, "
                     "tokens, cols, params])")
           << ", got " << schedule.size();
  bool tokenKernel = hasTokenKernel(p, schedule);
  RowsPart rowsPart = tokenKernel ? RowsPart::Rows : RowsPart::Whole;
  int64_t vec = 16 / elementBytes(p.act);
  auto bad = [&](StringRef kernel, StringRef field) {
    return root->emitOpError() << "schedule of the " << kernel
                               << " kernel: " << field << " ";
  };
  // The kernel's static shared memory must fit the limit.
  auto checkShared = [&](StringRef kernel, int64_t bytes) -> LogicalResult {
    if (bytes <= kSharedMemoryLimit)
      return success();
    return bad(kernel, "tile_tokens")
           << "needs " << bytes << " bytes of shared memory (limit "
           << kSharedMemoryLimit << ")";
  };
  // .minnctapersm: that many blocks must fit an SM's 2048 threads.
  auto checkBlocksPerSM = [&](StringRef kernel,
                              const Schedule &s) -> LogicalResult {
    if (s.blocksPerSM >= 0 && s.blocksPerSM * s.threads <= 2048)
      return success();
    return bad(kernel, "blocks_per_sm")
           << "must be >= 0 with blocks_per_sm * threads <= 2048, got "
           << s.blocksPerSM;
  };
  const Schedule &rows = schedule[0];
  if (rows.vectorWidth != vec)
    return bad("rows", "vector_width") << "must be " << vec << ", got "
                                       << rows.vectorWidth;
  int64_t nvc = rows.chunkColumns / vec;
  if (rows.chunkColumns % vec != 0 || !isPowerOf2(nvc) || nvc > 32)
    return bad("rows", "chunk_columns")
           << "must be a multiple of " << vec
           << " whose vectors per row are a power of two <= 32, got "
           << rows.chunkColumns;
  if (rows.tileTokens < 1 || rows.threads != rows.tileTokens * nvc ||
      rows.threads % 32 != 0 || rows.threads > 1024)
    return bad("rows", "threads")
           << "must be tile_tokens * chunk_columns / vector_width (a row's "
              "lanes walk it), a multiple of 32 <= 1024, got "
           << rows.threads;
  if (failed(checkBlocksPerSM("rows", rows)))
    return failure();
  if (failed(checkShared("rows", rowsSharedBytes(p, rows, rowsPart))))
    return failure();
  if (schedule.size() == 1)
    return success();

  if (tokenKernel) {
    const Schedule &tokens = schedule[1];
    if (tokens.vectorWidth != 1 || tokens.chunkColumns != 0 ||
        tokens.tokenSplits != 0)
      return bad("tokens", "vector_width")
             << "must be 1, with chunk_columns and token_splits 0 (the "
                "kernel reads no rows), got vector_width = "
             << tokens.vectorWidth
             << ", chunk_columns = " << tokens.chunkColumns
             << ", token_splits = " << tokens.tokenSplits;
    if (tokens.tileTokens < 1)
      return bad("tokens", "tile_tokens")
             << "must be >= 1, got " << tokens.tileTokens;
    if (tokens.threads < tokens.tileTokens || tokens.threads % 32 != 0 ||
        tokens.threads > 1024)
      return bad("tokens", "threads")
             << "must be a multiple of 32 <= 1024 and >= tile_tokens (a "
                "thread a token at least), got "
             << tokens.threads;
    if (failed(checkBlocksPerSM("tokens", tokens)))
      return failure();
    if (failed(checkShared("tokens",
                           rowsSharedBytes(p, tokens, RowsPart::Tokens))))
      return failure();
  }

  const Schedule &cols = schedule[tokenKernel ? 2 : 1];
  int64_t KB = p.n * cols.chunkColumns;
  if (cols.vectorWidth != vec)
    return bad("cols", "vector_width") << "must be " << vec << ", got "
                                       << cols.vectorWidth;
  if (cols.tileTokens < 16 || cols.tileTokens % 16 != 0)
    return bad("cols", "tile_tokens")
           << "must be a multiple of 16 (tensor-core tiles), got "
           << cols.tileTokens;
  if (cols.chunkColumns < vec || cols.chunkColumns % vec != 0)
    return bad("cols", "chunk_columns")
           << "must be a multiple of " << vec << ", got "
           << cols.chunkColumns;
  if (cols.threads < 32 || cols.threads % 32 != 0 ||
      KB % (8 * (cols.threads / 32)) != 0)
    return bad("cols", "threads")
           << "must be 32 * warps with n * chunk_columns (" << KB
           << ") a multiple of 8 * warps, got " << cols.threads;
  if (cols.tokenSplits < 1)
    return bad("cols", "token_splits")
           << "must be >= 1, got " << cols.tokenSplits;
  if (failed(checkBlocksPerSM("cols", cols)))
    return failure();
  if (colsSharedBytes(p, cols) > kSharedMemoryLimit)
    return bad("cols", "chunk_columns")
           << "needs " << colsSharedBytes(p, cols)
           << " bytes of shared memory (limit " << kSharedMemoryLimit
           << "); use fewer chunk_columns or tile_tokens";
  const Schedule &params = schedule.back();
  if (!isPowerOf2(params.threads) || params.threads < 32 ||
      params.threads > 1024)
    return bad("params", "threads")
           << "must be a power of two in [32, 1024], got " << params.threads;
  return success();
}

//===----------------------------------------------------------------------===//
// Kernels
//===----------------------------------------------------------------------===//

namespace {
/// A kernel's arguments: index T, then one memref<?xT> per buffer.
struct KernelArgs {
  SmallVector<Value> values; // group values or scratch stand-ins
  SmallVector<Type> types;
  void add(Value v, Type elem) {
    values.push_back(v);
    types.push_back(MemRefType::get({ShapedType::kDynamic}, elem));
  }
  void addValue(Value v) {
    if (v)
      add(v, cast<ShapedType>(v.getType()).getElementType());
  }
};
} // namespace

static gpu::GPUFuncOp createKernel(OpBuilder &mb, Location loc, StringRef name,
                                   ArrayRef<Type> args, ArrayRef<Type> shared,
                                   ArrayRef<Type> priv,
                                   const Schedule &schedule) {
  MLIRContext *ctx = mb.getContext();
  SmallVector<Type> argTypes{mb.getIndexType()};
  llvm::append_range(argTypes, args);
  auto kernel = gpu::GPUFuncOp::create(
      mb, loc, name, FunctionType::get(ctx, argTypes, {}), shared, priv);
  kernel->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), mb.getUnitAttr());
  kernel.setKnownBlockSizeAttr(mb.getDenseI32ArrayAttr(
      {static_cast<int32_t>(schedule.threads), 1, 1}));
  if (schedule.blocksPerSM)
    kernel->setAttr(NVVM::NVVMDialect::getMinctasmAttrName(),
                    mb.getI32IntegerAttr(schedule.blocksPerSM));
  for (unsigned i = 0; i < shared.size(); ++i)
    kernel.setWorkgroupAttributionAttr(i, "llvm.align",
                                       mb.getI64IntegerAttr(16));
  return kernel;
}

static MemRefType sharedOf(MLIRContext *ctx, int64_t elements, Type elem) {
  return MemRefType::get(
      {elements}, elem, MemRefLayoutAttrInterface(),
      gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup));
}

static SmallVector<Type> sharedTypes(MLIRContext *ctx,
                                     ArrayRef<SharedBuffer> shared) {
  return llvm::map_to_vector(shared, [&](const SharedBuffer &buffer) -> Type {
    return sharedOf(ctx, buffer.elements, buffer.elem);
  });
}

/// Points a kernel body's builder at `kernel`'s arguments: the token count
/// first, then `a`'s values in order.
template <typename Builder>
static void bindArguments(Builder &k, gpu::GPUFuncOp kernel,
                          const KernelArgs &a) {
  k.T = kernel.getArgument(0);
  for (auto [i, v] : llvm::enumerate(a.values))
    k.argOf[v] = kernel.getArgument(i + 1);
}

/// i1: every activation pointer among `values` is 16-byte aligned.
static Value allAligned(KernelBuilder &k, const BackwardPlan &p,
                        const DenseMap<Value, Value> &argOf,
                        ArrayRef<Value> values) {
  if (p.C <= 0 || p.C % k.acts.vec != 0)
    return Value();
  Value ok = arith::ConstantOp::create(k.b, k.loc, k.b.getBoolAttr(true));
  for (Value v : values) {
    if (!v || cast<ShapedType>(v.getType()).getElementType() != p.act)
      continue;
    Value ptr = memref::ExtractAlignedPointerAsIndexOp::create(
        k.b, k.loc, argOf.lookup(v));
    ok = k.band(ok, k.eq(k.rem(ptr, 16), k.ci(0)));
  }
  return ok;
}

namespace {
class BackwardKernelFamily : public KernelFamily {
public:
  bool accepts(const KernelGroup &group) const override {
    auto fused = dyn_cast<FusedOp>(group.root);
    return fused && llvm::is_contained({StringRef("backward"),
                                        StringRef("post_backward"),
                                        StringRef("pre_backward")},
                                       fused.getKind());
  }

  FailureOr<GroupSchedule>
  chooseSchedule(const KernelGroup &group,
                 const ScheduleOptions &) const override {
    FailureOr<BackwardPlan> p = planGroup(group);
    if (failed(p))
      return failure();
    GroupSchedule s = defaultSchedule(*p);
    if (failed(verifySchedule(*p, s, group.root)))
      return failure();
    return s;
  }

  LogicalResult lower(KernelGroup &group, ArrayRef<Schedule> schedule,
                      gpu::GPUModuleOp kernels,
                      StringRef kernelName) const override {
    FailureOr<BackwardPlan> planned = planGroup(group);
    if (failed(planned) ||
        failed(verifySchedule(*planned, schedule, group.root)))
      return failure();
    const BackwardPlan &p = *planned;
    Location loc = group.root->getLoc();
    MLIRContext *ctx = loc.getContext();
    Type f32 = Float32Type::get(ctx);
    int64_t n = p.n, M = p.M(), nC = n * p.C;
    const Schedule &rows = schedule[0];
    // Whether the group has cols and params kernels (all but post_backward)
    // and a token kernel between rows and cols.
    bool colsKernels = schedule.size() >= 3;
    bool tokenKernel = hasTokenKernel(p, schedule);
    const Schedule *tokens = tokenKernel ? &schedule[1] : nullptr;

    // --- host side: buffers ---------------------------------------------
    HostLaunch host(group.root);
    host.countTokens(p.x, 2);
    // Inputs get a buffer when a kernel reads them (some operands, e.g. the
    // y of a post_res_grad kept only for its dx, are read by none).
    DenseMap<Value, Value> buffer; // group value -> flat memref
    for (Value v : group.outputs) {
      Value out = host.outputBuffer(v);
      if (!out)
        return failure();
      buffer[v] = out;
    }
    // Scratch: stand-in values name them in the kernels' argument lists.
    Value record, paramPartial, dfnPartial, rowSums, dweightPartial;
    OpBuilder hb(group.root);
    auto index = [&](int64_t v) {
      return arith::ConstantIndexOp::create(hb, loc, v);
    };
    auto perToken = [&](int64_t width) {
      return host.scratchBuffer(
          f32, arith::MulIOp::create(hb, loc, host.tokens(), index(width)));
    };
    Value rowsGrid = host.tileGrid(rows.tileTokens);
    // The blocks that write the parameter partials: the token pass's.
    Value passGrid = tokens ? host.tileGrid(tokens->tileTokens) : rowsGrid;
    if (colsKernels) {
      record = perToken(p.recordWidth());
      paramPartial = host.scratchBuffer(
          f32, arith::MulIOp::create(hb, loc, passGrid, index(p.paramWidth())));
      dfnPartial = host.scratchBuffer(
          f32, index(schedule[tokenKernel ? 2 : 1].tokenSplits * M * nC));
      if (p.preNorm())
        dweightPartial = host.scratchBuffer(
            f32, index(schedule[tokenKernel ? 2 : 1].tokenSplits * p.C));
    }
    if (tokenKernel)
      rowSums = perToken(p.storedRowSums());
    auto hostArgs = [&](const KernelArgs &a) {
      SmallVector<Value> out{host.tokens()};
      for (Value v : a.values) {
        if (!buffer.count(v))
          buffer[v] = isa<TensorType>(v.getType()) ? host.inputBuffer(v) : v;
        out.push_back(buffer[v]);
      }
      return out;
    };
    OpBuilder mb = OpBuilder::atBlockEnd(kernels.getBody());

    // --- rows, and the token kernel -----------------------------------------
    Value rowsDout = p.y ? p.dout : Value(); // for post_res_grad's sums
    auto emitRowsKernel = [&](RowsPart part, const Schedule &sched,
                              StringRef suffix, const KernelArgs &a,
                              Value grid) {
      bool tokenPass = p.hasTokenPass() && part != RowsPart::Rows;
      SmallVector<Type> priv;
      if (tokenPass) {
        // The divisors of the thread's lines: n a step, or one (tokenLanes).
        int64_t lines = RowsKernelBuilder::tokenLanes(p, sched) ? 1 : n;
        priv.push_back(MemRefType::get(
            {(2 * p.iterations - 1) * lines}, f32, MemRefLayoutAttrInterface(),
            gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Private)));
      }
      auto kernel = createKernel(mb, loc, (kernelName + suffix).str(), a.types,
                                 sharedTypes(ctx, rowsShared(p, sched, part)),
                                 priv, sched);
      OpBuilder b = OpBuilder::atBlockBegin(&kernel.getBody().front());
      RowsKernelBuilder k(b, loc, p, sched, part);
      k.acts = {p.act, sched.vectorWidth, p.C};
      bindArguments(k, kernel, a);
      k.record = k.argOf.lookup(record);
      k.paramPartial = k.argOf.lookup(paramPartial);
      k.rowSumsMem = k.argOf.lookup(rowSums);
      // The workgroup attributions in rowsShared's order.
      auto wg = kernel.getWorkgroupAttributions();
      unsigned next = 0;
      if (part != RowsPart::Tokens)
        k.postS = wg[next++];
      if (part != RowsPart::Tokens && p.preNorm())
        k.preRowS = wg[next++];
      if (part != RowsPart::Rows)
        k.sumsS = wg[next++];
      if (tokenPass) {
        k.paramS = wg[next++];
        if (k.tokenLanes())
          k.lineS = wg[next++];
        k.denominators = kernel.getPrivateAttributions()[0];
      }
      k.tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
      k.tile0 = k.mul(gpu::BlockIdOp::create(b, loc, gpu::Dimension::x),
                      k.ci(sched.tileTokens));
      if (part != RowsPart::Tokens)
        k.aligned = allAligned(k, p, k.argOf,
                               {p.x, rowsDout, p.y, p.du, p.g, p.normWeight,
                                p.dyOut});
      k.emitBody();
      gpu::ReturnOp::create(b, loc);
      host.launch(kernel, grid, sched.threads, hostArgs(a));
    };
    {
      KernelArgs a;
      for (Value v :
           {p.x, rowsDout, p.y, p.du, p.g, p.normWeight, p.mix, p.scale,
            p.base, p.postIn, p.dpostIn, p.dcombIn, p.dyOut, p.dpostOut,
            p.dcombOut})
        a.addValue(v);
      if (tokenKernel) {
        a.add(rowSums, f32);
      } else if (colsKernels) {
        a.add(record, f32);
        a.add(paramPartial, f32);
      }
      emitRowsKernel(tokenKernel ? RowsPart::Rows : RowsPart::Whole, rows,
                     "_rows", a, rowsGrid);
    }
    if (tokenKernel) {
      KernelArgs a;
      for (Value v : {p.x, p.mix, p.scale, p.base, p.dpostIn, p.dcombIn})
        a.addValue(v);
      a.add(rowSums, f32);
      a.add(record, f32);
      a.add(paramPartial, f32);
      emitRowsKernel(RowsPart::Tokens, *tokens, "_tokens", a, passGrid);
    }
    if (colsKernels) {
      // --- cols -----------------------------------------------------------
      const Schedule &cols = schedule[tokenKernel ? 2 : 1];
      KernelArgs a;
      for (Value v : {p.x, p.dout, p.du, p.g, p.normWeight, p.fn})
        a.addValue(v);
      a.add(record, f32);
      a.addValue(p.dxOut);
      a.add(dfnPartial, f32);
      a.addValue(p.postLower);
      a.addValue(p.dyLowerOut);
      if (dweightPartial)
        a.add(dweightPartial, f32);
      int64_t CC = cols.chunkColumns;
      auto kernel = createKernel(mb, loc, (kernelName + "_cols").str(),
                                 a.types, sharedTypes(ctx, colsShared(p, cols)),
                                 {}, cols);
      OpBuilder b = OpBuilder::atBlockBegin(&kernel.getBody().front());
      ColsKernelBuilder k(b, loc, p, cols);
      k.acts = {p.act, cols.vectorWidth, p.C};
      bindArguments(k, kernel, a);
      k.record = k.argOf.lookup(record);
      k.dfnPartial = k.argOf.lookup(dfnPartial);
      if (dweightPartial)
        k.dweightPartial = k.argOf.lookup(dweightPartial);
      auto wg = kernel.getWorkgroupAttributions();
      k.recS = wg[0];
      k.xS = wg[1];
      k.doutS = wg[2];
      k.duS = wg[3];
      k.dmHiS = wg[4];
      k.dmLoS = wg[5];
      k.tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
      k.lane = k.rem(k.tid, 32);
      k.warp = k.div(k.tid, 32);
      k.col0 = k.mul(gpu::BlockIdOp::create(b, loc, gpu::Dimension::x),
                     k.ci(CC));
      k.split = gpu::BlockIdOp::create(b, loc, gpu::Dimension::y);
      k.aligned = allAligned(k, p, k.argOf,
                             {p.x, p.dout, p.du, p.g, p.dxOut, p.dyLowerOut});
      k.emitBody();
      gpu::ReturnOp::create(b, loc);
      Value chunks =
          arith::ConstantIndexOp::create(hb, loc, (p.C + CC - 1) / CC);
      host.launch(kernel, chunks, cols.threads, hostArgs(a),
                  cols.tokenSplits);

      // --- params ---------------------------------------------------------
      const Schedule &params = schedule.back();
      KernelArgs pa;
      pa.add(paramPartial, f32);
      pa.add(dfnPartial, f32);
      for (Value v : {p.dfnOut, p.dscaleOut, p.dbaseOut})
        pa.addValue(v);
      if (dweightPartial) {
        pa.add(dweightPartial, f32);
        pa.addValue(p.dweightOut);
      }
      auto pk = createKernel(mb, loc, (kernelName + "_params").str(),
                             pa.types, {sharedOf(ctx, params.threads, f32)},
                             {}, params);
      OpBuilder pb = OpBuilder::atBlockBegin(&pk.getBody().front());
      KernelBuilder kp(pb, loc);
      auto argAt = [&](unsigned i) { return pk.getArgument(i + 1); };
      emitParamsKernel(kp, p, tokens ? *tokens : rows, cols, params,
                       pk.getArgument(0), argAt(1), argAt(0), argAt(2),
                       argAt(3), argAt(4), pk.getWorkgroupAttributions()[0],
                       dweightPartial ? argAt(5) : Value(),
                       dweightPartial ? argAt(6) : Value());
      gpu::ReturnOp::create(pb, loc);
      int64_t dfnBlocks = (M * nC + params.threads - 1) / params.threads;
      int64_t dweightBlocks =
          p.preNorm() ? (p.C + params.threads - 1) / params.threads : 0;
      Value grid = arith::ConstantIndexOp::create(
          hb, loc, dfnBlocks + dweightBlocks + p.paramWidth());
      host.launch(pk, grid, params.threads, hostArgs(pa));
    }
    host.finish(group.replaced);
    return success();
  }
};
} // namespace

const KernelFamily &gpu_kernels::backwardKernelFamily() {
  static const BackwardKernelFamily family;
  return family;
}
