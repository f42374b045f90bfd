//===- ForwardKernel.cpp - the forward kernel family ----------------------===//
//
// Legality of forward groups, their default schedule and its checks, the
// kernel's shared memory and the order of its stages (see ForwardKernel.h).
//
//===----------------------------------------------------------------------===//
#include "ForwardKernel.h"
#include "HostLaunch.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"

using namespace mlir;
using namespace mlir::mhc;
using namespace mlir::mhc::gpu_kernels;

static constexpr int64_t kMaxThreads = 256;
static constexpr int64_t kSharedMemoryLimit = 48 * 1024; // static smem
// The per-token Sinkhorn keeps n*n values in registers with its loops
// unrolled, so compile time grows with n^3 (n = 16: ~10 s, n = 64: ~1 min);
// the device checks cover n <= 8.
static constexpr int64_t kMaxStreams = 16;
// gridDim.x of a launch.
static constexpr int64_t kMaxBlocks = (int64_t(1) << 31) - 1;

//===----------------------------------------------------------------------===//
// Planning and legality
//===----------------------------------------------------------------------===//

/// The members by kind, the legality of the internal edges (what a kernel
/// can keep on chip), and the stream shape from the widest member.
static FailureOr<ForwardPlan> planGroup(const KernelGroup &g) {
  ForwardPlan p;
  Operation *root = g.root;
  for (Operation *op : g.members) {
    bool dup = false;
    auto set = [&](auto &slot, auto o) {
      dup |= static_cast<bool>(slot);
      slot = o;
    };
    if (auto o = dyn_cast<PostResOp>(op))
      set(p.pr, o);
    else if (auto o = dyn_cast<NormProjectOp>(op))
      set(p.np, o);
    else if (auto o = dyn_cast<SplitMixesOp>(op))
      set(p.sp, o);
    else if (auto o = dyn_cast<SinkhornOp>(op))
      set(p.sk, o);
    else if (auto o = dyn_cast<PreApplyOp>(op))
      set(p.pa, o);
    else if (auto o = dyn_cast<RmsNormOp>(op))
      set(p.rn, o);
    else if (auto o = dyn_cast<ExpandOp>(op))
      set(p.ex, o);
    else if (auto o = dyn_cast<CollapseOp>(op))
      set(p.co, o);
    if (dup)
      return root->emitOpError("holds two ops of the same kind; a kernel "
                               "takes at most one of each");
  }
  auto internal = [&](Value v) { return g.isInternal(v); };
  size_t numMembers = g.members.size();
  if (p.ex && numMembers > 1)
    return root->emitOpError("mhc.expand must be its own kernel");
  if (p.co && numMembers > 1)
    return root->emitOpError("mhc.collapse must be its own kernel");
  if (p.np && internal(p.np.getX()) &&
      !(p.pr && p.np.getX() == p.pr.getResult()))
    return root->emitOpError("unsupported group: norm_project must read "
                             "post_res's result or a kernel input");
  if (p.pr && ((internal(p.pr.getPost()) || internal(p.pr.getComb()) ||
                internal(p.pr.getX()) || internal(p.pr.getY()))))
    return root->emitOpError("unsupported group: post_res must read its "
                             "operands from memory");
  if (p.pa && (p.pr || internal(p.pa.getX()) ||
               (internal(p.pa.getPre()) && !p.preFromSplit())))
    return root->emitOpError("unsupported group: pre_apply must read x from "
                             "memory and pre from split_mixes or memory");
  // With a pre_apply in the group, the kernel's norm reads that u (made on
  // chip); alone, an input u.
  if (p.rn && ((p.pa ? p.rn.getU() != p.pa.getU() : internal(p.rn.getU())) ||
               internal(p.rn.getWeight()) || p.pr))
    return root->emitOpError("unsupported group: rms_norm must read u from "
                             "the group's pre_apply or from memory, and its "
                             "weight from memory");
  if (p.sp && internal(p.sp.getMix()) &&
      !(p.np && p.sp.getMix() == p.np.getMix()))
    return root->emitOpError("unsupported group for split_mixes");
  if (p.sk && internal(p.sk.getLogits()) &&
      !(p.sp && p.sk.getLogits() == p.sp.getLogits()))
    return root->emitOpError("unsupported group for sinkhorn");
  if (p.np && p.pr && p.np.getX() != p.pr.getResult())
    return root->emitOpError("unsupported group: norm_project and post_res "
                             "on unrelated streams");
  if ((p.sp || p.sk) && p.pr)
    return root->emitOpError("unsupported group: post_res with coefficients");

  auto streamShape = [&](Value x) {
    auto t = cast<RankedTensorType>(x.getType());
    p.n = t.getDimSize(t.getRank() - 2);
    p.C = t.getShape().back();
    p.act = t.getElementType();
  };
  if (p.pr)
    streamShape(p.pr.getX());
  else if (p.np)
    streamShape(p.np.getX());
  else if (p.pa)
    streamShape(p.pa.getX());
  else if (p.rn) { // alone: one row of C per token
    auto t = p.rn.getU().getType();
    p.C = t.getShape().back();
    p.act = t.getElementType();
  } else if (p.ex)
    streamShape(p.ex.getResult());
  else if (p.co)
    streamShape(p.co.getInput());
  else if (p.sp)
    p.n = cast<ShapedType>(p.sp.getPre().getType()).getShape().back();
  else if (p.sk)
    p.n = cast<ShapedType>(p.sk.getLogits().getType()).getShape().back();
  if (p.np && p.pa && p.np.getX().getType() != p.pa.getX().getType())
    return root->emitOpError("unsupported group: mixed stream types");
  if (p.n > kMaxStreams)
    return root->emitOpError()
           << "has " << p.n << " streams; the GPU kernels take at most "
           << kMaxStreams << " (the CPU path has no limit)";
  if (!p.act)
    p.act = Float32Type::get(root->getContext());
  return p;
}

/// Which token-dim source the host reads T from, and its trailing dims.
static std::pair<Value, unsigned> tokenSource(ForwardPlan &p) {
  if (p.pr)
    return {p.pr.getX(), 2};
  if (p.np)
    return {p.np.getX(), 2};
  if (p.pa)
    return {p.pa.getX(), 2};
  if (p.rn)
    return {p.rn.getU(), 1};
  if (p.ex)
    return {p.ex.getInput(), 1};
  if (p.co)
    return {p.co.getInput(), 2};
  if (p.sp)
    return {p.sp.getMix(), 1};
  return {p.sk.getLogits(), 2};
}

/// The token count when the leading dims are static.
static std::optional<int64_t> staticTokens(ForwardPlan &p) {
  auto [src, trailing] = tokenSource(p);
  ArrayRef<int64_t> lead =
      cast<RankedTensorType>(src.getType()).getShape().drop_back(trailing);
  if (llvm::any_of(lead, ShapedType::isDynamic))
    return std::nullopt;
  int64_t tokens = 1;
  for (int64_t d : lead)
    tokens *= d; // <= 2^48 (the dialect's limit)
  return tokens;
}

static bool hasChunkLoop(const ForwardPlan &p) { return p.pr || p.np; }

static int64_t elementBytes(const ForwardPlan &p) {
  return p.act.getIntOrFloatBitWidth() / 8;
}

//===----------------------------------------------------------------------===//
// Schedule
//===----------------------------------------------------------------------===//

/// Token counts up to which a function marked mhc.max_tokens gets 16 tokens
/// per block: the grid is ceil(T / tile_tokens) blocks, so at small T
/// larger tiles leave most SMs idle. Measured at n = 4, C = 4096 (H200,
/// bench/results/fwd-tiles-h200.json): 1.3-3.3x faster at T <= 4096, up to
/// 28% slower at T = 16384.
constexpr int64_t kFewTokens = 4096;

/// The default schedule (docs/GPU.md, "Schedule").
static Schedule defaultSchedule(const ForwardPlan &p,
                                const ScheduleOptions &options) {
  Schedule s;
  s.vectorWidth = 16 / elementBytes(p);
  bool streaming = p.pr || p.np || p.pa || p.rn || p.ex || p.co;
  bool fewTokens = options.maxTokens > 0 && options.maxTokens <= kFewTokens;
  // Projection kernels: 4 warps over a small token tile, so that several
  // blocks share an SM and overlap each other's load and mma phases; fn is
  // then re-read from L2 once per tile. 4 blocks per SM (<= 128 registers a
  // thread): the chunk's loads and tensor-core phase alternate inside a
  // block; 3 blocks per SM leave the memory idle too often (measured: 0.71
  // vs 0.41 ms, bench/results/post-proto-h200.md).
  if (p.np) {
    s.threads = 128;
    s.tileTokens = options.tileTokens  ? options.tileTokens
                   : fewTokens || p.NT() > 4 ? 16
                                            : 32;
    s.blocksPerSM = 4;
  } else {
    s.threads = kMaxThreads;
    s.tileTokens = !streaming ? kMaxThreads : fewTokens ? 16 : 64;
  }
  // Chunk: ~256 contiguous bytes of every row (shorter runs cost DRAM
  // efficiency), a power of two and a multiple of 16 columns (a k16 step
  // stays in one stream), with n*CC <= 512 so that the bf16 projection tile
  // fits in shared memory (256 when it is split into hi + lo tiles for
  // f16/f32 activations).
  if (hasChunkLoop(p)) {
    int64_t kmax = p.np && !p.act.isBF16() ? 256 : 512;
    s.chunkColumns = 256 / elementBytes(p);
    while (s.chunkColumns > 16 && p.n * s.chunkColumns > kmax)
      s.chunkColumns /= 2;
  }
  return s;
}

/// Whether a group gets the fn prepare kernel: once per call it reads fn
/// (4 M n C bytes) and writes as many, plus a launch, and it saves every
/// tile of tokens two 8-byte loads and two splits per fn fragment. Measured
/// at n = 4, C = 4096 (H200, bench/results/session19-h200.log): hc_pre and
/// hc_post_project 9-18% faster at T = 5000 to 16384 and 13-22% faster at
/// T = 1 to 4096 (16-token tiles: more of them; and a lone block reads fn
/// far slower than the prepare kernel's 1536 blocks do).
static bool wantsPreparedFn(const ForwardPlan &p,
                            const ScheduleOptions &options) {
  return p.np && options.prepareFn;
}

/// The fn prepare kernel's schedule: one thread per lane and fragment.
static Schedule prepareSchedule() {
  Schedule s;
  s.threads = 256;
  s.vectorWidth = 1;
  return s;
}

// File-local: the other of Forward/BackwardKernel.cpp has a SharedBuffer too.
namespace {
/// Shared memory of the kernel, in the order of its workgroup attributions.
struct SharedBuffer {
  Value ForwardKernelBuilder::*slot;
  int64_t elements;
  Type type;
};
} // namespace

static SmallVector<SharedBuffer> sharedLayout(const ForwardPlan &p,
                                              MLIRContext *ctx) {
  Type f32 = Float32Type::get(ctx), bf16 = BFloat16Type::get(ctx);
  int64_t TT = p.s.tileTokens;
  SmallVector<SharedBuffer> layout;
  if (p.np) {
    layout.push_back({&ForwardKernelBuilder::aTile, TT * p.ldA(), bf16});
    if (!p.act.isBF16()) // f16/f32: bf16 head + bf16 remainder tiles
      layout.push_back({&ForwardKernelBuilder::aTileLo, TT * p.ldA(), bf16});
    layout.push_back({&ForwardKernelBuilder::red, TT * p.M(), f32});
    layout.push_back({&ForwardKernelBuilder::ssTok, TT, f32});
  }
  if (p.pr) {
    layout.push_back({&ForwardKernelBuilder::postS, TT * p.n, f32});
    layout.push_back({&ForwardKernelBuilder::combS, TT * p.n * p.n, f32});
  }
  if (p.pa)
    layout.push_back({&ForwardKernelBuilder::preS, TT * p.n, f32});
  return layout;
}

static bool isPowerOf2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

/// A diagnostic naming the field when `s` cannot work for the group.
static LogicalResult verifySchedule(const ForwardPlan &p, Operation *root) {
  const Schedule &s = p.s;
  auto bad = [&](StringRef field) {
    return root->emitOpError() << "schedule: " << field << " ";
  };
  if (s.threads < 32 || s.threads > 1024 || s.threads % 32 != 0)
    return bad("threads") << "must be a multiple of 32 in [32, 1024], got "
                          << s.threads;
  if (s.tileTokens < 1)
    return bad("tile_tokens") << "must be >= 1, got " << s.tileTokens;
  if ((p.sp || p.sk) && s.tileTokens > s.threads)
    return bad("tile_tokens")
           << "must be <= threads (" << s.threads
           << "): the coefficients take one thread per token, got "
           << s.tileTokens;
  int64_t vec = 16 / elementBytes(p);
  if (s.vectorWidth != vec)
    return bad("vector_width")
           << "must be " << vec << " (16-byte accesses of " << p.act
           << "), got " << s.vectorWidth;
  if (s.blocksPerSM < 0 || s.blocksPerSM * s.threads > 2048)
    return bad("blocks_per_sm")
           << "must be >= 0 with blocks_per_sm * threads <= 2048, got "
           << s.blocksPerSM;
  if (s.tokenSplits != 0)
    return bad("token_splits")
           << "must be 0: this kernel tiles the tokens, got " << s.tokenSplits;
  if (hasChunkLoop(p)) {
    int64_t cc = s.chunkColumns;
    if (cc < 16 || cc % 16 != 0 || cc % vec != 0 || !isPowerOf2(cc / vec) ||
        cc / vec > 32)
      return bad("chunk_columns")
             << "must be a multiple of 16 whose vectors (" << vec
             << " columns each) are a power of two <= 32 per row, got "
             << cc;
  } else if (s.chunkColumns != 0) {
    return bad("chunk_columns")
           << "must be 0: this kernel has no chunk loop, got "
           << s.chunkColumns;
  }
  if (p.np) {
    if (s.tileTokens % 16 != 0)
      return bad("tile_tokens")
             << "must be a multiple of 16 (tensor-core row tiles) in a "
                "norm_project kernel, got "
             << s.tileTokens;
    if (s.threads % (s.chunkColumns / vec) != 0)
      return bad("threads") << "must be a multiple of the vectors per row ("
                            << s.chunkColumns / vec << "), got "
                            << s.threads;
  }
  // A static token count must fit in one launch's grid.
  ForwardPlan plan = p; // op accessors are not const
  if (std::optional<int64_t> tokens = staticTokens(plan)) {
    int64_t blocks = (*tokens + s.tileTokens - 1) / s.tileTokens;
    if (blocks > kMaxBlocks)
      return bad("tile_tokens")
             << "gives " << blocks << " blocks for " << *tokens
             << " tokens; a launch takes at most 2^31 - 1";
  }
  if (p.prepare) {
    const Schedule &f = *p.prepare;
    auto badPrepare = [&](StringRef field) {
      return root->emitOpError()
             << "schedule: the fn prepare kernel's " << field << " ";
    };
    if (!p.np)
      return root->emitOpError()
             << "schedule: expects one #mhc.schedule (one kernel): only a "
                "group with a norm_project has an fn prepare kernel";
    if (f.threads < 32 || f.threads > 1024 || f.threads % 32 != 0)
      return badPrepare("threads")
             << "must be a multiple of 32 in [32, 1024], got " << f.threads;
    if (f.tileTokens != 0 || f.chunkColumns != 0 || f.vectorWidth != 1 ||
        f.blocksPerSM != 0 || f.tokenSplits != 0)
      return badPrepare("fields")
             << "other than threads must be tile_tokens = 0, chunk_columns "
                "= 0, vector_width = 1, blocks_per_sm = 0 (it does not tile "
                "the tokens)";
  }
  int64_t bytes = 0;
  for (const SharedBuffer &buf : sharedLayout(p, root->getContext()))
    bytes += buf.elements * buf.type.getIntOrFloatBitWidth() / 8;
  if (bytes > kSharedMemoryLimit)
    return bad("tile_tokens")
           << "needs " << bytes << " bytes of shared memory per block (limit "
           << kSharedMemoryLimit << "); use fewer tile_tokens or "
           << "chunk_columns";
  return success();
}

//===----------------------------------------------------------------------===//
// The kernel
//===----------------------------------------------------------------------===//

/// Copies per-token coefficients [tile x width] of `src` into shared `dst`.
void ForwardKernelBuilder::loadCoeffTile(Value src, Value dst,
                                         int64_t width) {
  emitFor(tid, ci(p.s.tileTokens * width), ci(p.s.threads), {},
          [&](Value i, ValueRange) {
            Value token = add(tile0, div(i, width));
            Value v = f32OrZero(ult(token, T), [&]() {
              return ld(src, add(mul(tile0, ci(width)), i));
            });
            st(v, dst, i);
            return SmallVector<Value>{};
          });
}

static Type elemType(Value v) {
  return cast<ShapedType>(v.getType()).getElementType();
}

static gpu::GPUFuncOp buildKernel(OpBuilder &mb, Location loc,
                                  ForwardPlan &p, const KernelGroup &g,
                                  StringRef name) {
  MLIRContext *ctx = mb.getContext();
  SmallVector<Type> argTypes{mb.getIndexType()};
  for (Value v : llvm::concat<const Value>(g.inputs, g.outputs))
    argTypes.push_back(MemRefType::get({ShapedType::kDynamic}, elemType(v)));
  if (p.prepare) // the prepared fn, last
    argTypes.push_back(MemRefType::get({ShapedType::kDynamic}, mb.getI32Type()));
  auto wg = gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup);
  SmallVector<SharedBuffer> layout = sharedLayout(p, ctx);
  SmallVector<Type> wgTypes;
  for (const SharedBuffer &buf : layout)
    wgTypes.push_back(MemRefType::get({buf.elements}, buf.type,
                                      MemRefLayoutAttrInterface(), wg));
  auto kernel = gpu::GPUFuncOp::create(
      mb, loc, name, FunctionType::get(ctx, argTypes, {}), wgTypes);
  kernel->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), mb.getUnitAttr());
  kernel.setKnownBlockSizeAttr(
      mb.getDenseI32ArrayAttr({static_cast<int32_t>(p.s.threads), 1, 1}));
  if (p.s.blocksPerSM)
    kernel->setAttr(NVVM::NVVMDialect::getMinctasmAttrName(),
                    mb.getI32IntegerAttr(p.s.blocksPerSM));
  // 16-byte vector accesses to shared memory need 16-byte aligned buffers.
  for (unsigned i = 0; i < wgTypes.size(); ++i)
    kernel.setWorkgroupAttributionAttr(i, "llvm.align",
                                       mb.getI64IntegerAttr(16));

  OpBuilder b = OpBuilder::atBlockBegin(&kernel.getBody().front());
  ForwardKernelBuilder k(b, loc, p, g);
  k.acts = {p.act, p.s.vectorWidth, p.C};
  k.T = kernel.getArgument(0);
  unsigned ai = 1;
  for (Value v : llvm::concat<const Value>(g.inputs, g.outputs))
    k.argOf[v] = kernel.getArgument(ai++);
  if (p.prepare)
    k.fnPrepared = kernel.getArgument(ai++);
  for (auto [buf, value] :
       llvm::zip(layout, kernel.getWorkgroupAttributions()))
    k.*buf.slot = value;

  k.tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  k.lane = k.rem(k.tid, 32);
  k.warp = k.div(k.tid, 32);
  k.tile0 = k.mul(gpu::BlockIdOp::create(b, loc, gpu::Dimension::x),
                  k.ci(p.s.tileTokens));
  // Vector paths need C % vec == 0 and every activation pointer 16-aligned.
  if (p.C > 0 && p.C % p.s.vectorWidth == 0) {
    Value ok = arith::ConstantOp::create(b, loc, b.getBoolAttr(true));
    for (Value v : llvm::concat<const Value>(g.inputs, g.outputs)) {
      if (elemType(v) != p.act ||
          cast<ShapedType>(v.getType()).getShape().back() != p.C)
        continue;
      Value ptr =
          memref::ExtractAlignedPointerAsIndexOp::create(b, loc, k.argOf[v]);
      ok = k.band(ok, k.eq(k.rem(ptr, 16), k.ci(0)));
    }
    k.aligned = ok;
  }
  // fn pairs are read with 8-byte loads when fn's base pointer allows it (a
  // view of a larger buffer may start anywhere on 4 bytes).
  if (p.np && !p.prepare) {
    Value ptr = memref::ExtractAlignedPointerAsIndexOp::create(
        b, loc, k.argOf[p.np.getFn()]);
    k.fnAligned = k.eq(k.rem(ptr, 8), k.ci(0));
  }

  // The stages, in order. Stage 0: per-token coefficients into shared
  // memory, clear the sums of squares.
  if (p.pr) {
    k.loadCoeffTile(k.arg(p.pr.getPost()), k.postS, p.n);
    k.loadCoeffTile(k.arg(p.pr.getComb()), k.combS, p.n * p.n);
  }
  if (p.pa && !p.preFromSplit())
    k.loadCoeffTile(k.arg(p.pa.getPre()), k.preS, p.n);
  if (p.np)
    k.emitIf(k.ult(k.tid, p.s.tileTokens),
             [&]() { k.st(k.cf(0.0), k.ssTok, k.tid); });
  if (p.pr || p.np || p.pa)
    k.barrier();

  if (hasChunkLoop(p))
    k.emitChunkLoop(); // StreamStage.cpp (+ ProjectionStage.cpp)
  if (p.sp || p.sk)
    k.emitPerToken(); // CoefficientStage.cpp
  if (p.pa && p.sp)
    k.barrier();
  if (p.rn && k.outputArg(p.rn.getResult()))
    k.emitRowNorm(); // MixStage.cpp (with pre_apply's u, when in the group)
  else if (p.pa)
    k.emitPreApply(); // MixStage.cpp (a norm nobody reads computes nothing)
  if (p.ex)
    k.emitExpand();
  if (p.co)
    k.emitCollapse();
  gpu::ReturnOp::create(b, loc);
  return kernel;
}

/// The fn prepare kernel (T, fn, prepared fn): see emitPrepareFn.
static gpu::GPUFuncOp buildPrepareKernel(OpBuilder &mb, Location loc,
                                         ForwardPlan &p, const KernelGroup &g,
                                         StringRef name) {
  MLIRContext *ctx = mb.getContext();
  auto flat = [&](Type t) {
    return MemRefType::get({ShapedType::kDynamic}, t);
  };
  SmallVector<Type> argTypes{mb.getIndexType(), flat(mb.getF32Type()),
                             flat(mb.getI32Type())};
  auto kernel = gpu::GPUFuncOp::create(mb, loc, name,
                                       FunctionType::get(ctx, argTypes, {}));
  kernel->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), mb.getUnitAttr());
  int64_t threads = p.prepare->threads;
  kernel.setKnownBlockSizeAttr(
      mb.getDenseI32ArrayAttr({static_cast<int32_t>(threads), 1, 1}));
  OpBuilder b = OpBuilder::atBlockBegin(&kernel.getBody().front());
  ForwardKernelBuilder k(b, loc, p, g);
  k.T = kernel.getArgument(0);
  k.argOf[p.np.getFn()] = kernel.getArgument(1);
  k.fnPrepared = kernel.getArgument(2);
  k.tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);
  k.emitPrepareFn(threads);
  gpu::ReturnOp::create(b, loc);
  return kernel;
}

//===----------------------------------------------------------------------===//
// The family
//===----------------------------------------------------------------------===//

namespace {
class ForwardKernelFamily : public KernelFamily {
public:
  bool accepts(const KernelGroup &group) const override {
    return llvm::all_of(group.members, [](Operation *op) {
      return isa<PostResOp, NormProjectOp, SplitMixesOp, SinkhornOp,
                 PreApplyOp, RmsNormOp, ExpandOp, CollapseOp>(op);
    });
  }

  FailureOr<GroupSchedule>
  chooseSchedule(const KernelGroup &group,
                 const ScheduleOptions &options) const override {
    FailureOr<ForwardPlan> p = planGroup(group);
    if (failed(p))
      return failure();
    p->s = defaultSchedule(*p, options);
    if (wantsPreparedFn(*p, options))
      p->prepare = prepareSchedule();
    if (failed(verifySchedule(*p, group.root)))
      return failure();
    if (p->prepare)
      return GroupSchedule{*p->prepare, p->s};
    return GroupSchedule{p->s};
  }

  LogicalResult lower(KernelGroup &group, ArrayRef<Schedule> schedule,
                      gpu::GPUModuleOp kernels,
                      StringRef kernelName) const override {
    FailureOr<ForwardPlan> planned = planGroup(group);
    if (failed(planned))
      return failure();
    // [the group's kernel] or [the fn prepare kernel, the group's kernel].
    if (schedule.size() != 1 && schedule.size() != 2)
      return group.root->emitOpError()
             << "schedule: expects one #mhc.schedule (one kernel), or two "
                "(fn prepare kernel, kernel), got "
             << schedule.size();
    ForwardPlan &p = *planned;
    p.s = schedule.back();
    if (schedule.size() == 2)
      p.prepare = schedule.front();
    if (failed(verifySchedule(p, group.root)))
      return failure();
    Location loc = group.root->getLoc();
    OpBuilder mb = OpBuilder::atBlockEnd(kernels.getBody());
    gpu::GPUFuncOp prepareKernel;
    if (p.prepare)
      prepareKernel = buildPrepareKernel(mb, loc, p, group,
                                         (kernelName + "_prepare_fn").str());
    gpu::GPUFuncOp kernel = buildKernel(mb, loc, p, group, kernelName);

    HostLaunch host(group.root);
    auto [src, trailing] = tokenSource(p);
    host.countTokens(src, trailing);
    SmallVector<Value> args{host.tokens()};
    for (Value v : group.inputs)
      args.push_back(host.inputBuffer(v));
    for (Value v : group.outputs) {
      Value buffer = host.outputBuffer(v);
      if (!buffer)
        return failure();
      args.push_back(buffer);
    }
    if (p.prepare) {
      OpBuilder hb(group.root);
      Value fn = args[1 + llvm::find(group.inputs, p.np.getFn()) -
                      group.inputs.begin()];
      int64_t words = p.preparedFnWords(), threads = p.prepare->threads;
      Value prepared = host.scratchBuffer(
          hb.getI32Type(), arith::ConstantIndexOp::create(hb, loc, words));
      Value grid = arith::ConstantIndexOp::create(
          hb, loc, std::max<int64_t>(1, (words / 4 + threads - 1) / threads));
      host.launch(prepareKernel, grid, threads, {host.tokens(), fn, prepared});
      args.push_back(prepared);
    }
    host.launch(kernel, host.tileGrid(p.s.tileTokens), p.s.threads, args);
    host.finish(group.replaced);
    return success();
  }
};
} // namespace

const KernelFamily &gpu_kernels::forwardKernelFamily() {
  static const ForwardKernelFamily family;
  return family;
}
