//===- native.cpp - mhc.torch's C++ launch path and autograd steps --------===//
//
// Built against the user's PyTorch by mhc/torch/native.py (torch's
// cpp_extension, on first use), so it lives beside the Python package, not
// under lib/: a prebuilt library would have to match PyTorch's C++ ABI exactly.
//
// Three things, all the C++ twins of Python code, to cut host time per call:
//
//   * run_op: one op of a kernel set (kernels.py's _OpPlan.run): check the
//     arguments, allocate results and scratch with PyTorch's caching allocator,
//     launch each kernel through the runtime's mhcLaunchFlat on PyTorch's
//     current stream;
//   * pre_step / post_step: HyperConnection's two autograd functions
//     (modules.py's _PreStep / _PostStep, same wiring: the dx link and the
//     recomputation), as autograd nodes written in C++ so that neither the
//     forward nor the backward runs Python;
//   * forward / forward_with: HyperConnection.forward itself -- the steps,
//     the sublayer call between them (with the recomputation's saved-tensor
//     hooks) and the chain of consecutive HyperConnections (post_step
//     computing the next sublayer's mix).
//
// The ops' buffers, shapes and dtypes come from kernels.py (set_signatures,
// once at load), the one table of them. Kernel sets are registered once
// (add_op) and named by an integer handle;
// they are never freed (the Python side keeps its kernel sets for the
// process's life too).
//
//===----------------------------------------------------------------------===//

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#ifdef MHC_NATIVE_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using at::Tensor;
using torch::autograd::variable_list;

//===----------------------------------------------------------------------===//
// Op signatures: kernels.OP_BUFFERS with kernels.BUFFER_LAYOUT's shape and
// dtype of each buffer, handed over once by native.py (set_signatures)
//===----------------------------------------------------------------------===//

// Shapes relative to x [lead..., n, C]: the stream (X), a channel row (Y), the
// coefficients (P, CB, MIX) and the parameters (FN, SC, B; W: the pre-norm's
// weight [C] of the *_norm ops).
enum class Shape { X, Y, P, CB, MIX, FN, SC, B, W };
// A: the activations' dtype (x's); F: f32 coefficients and parameters.
enum class Dt { A, F };

struct Buffer {
  std::string name;
  Shape shape;
  Dt dtype;
};

struct Signature {
  std::string name;
  int xIndex; // which argument is x (its shape defines the others)
  std::vector<Buffer> args, results;
};

std::vector<Signature> &signatures() {
  static std::vector<Signature> table;
  return table;
}

// The ops the autograd steps below launch, by name (their index in the
// table once it is set).
enum Op {
  kPre,
  kPost,
  kPostBackward,
  kPreBackward,
  kPreMixed,
  kPostProject,
  kPreBackwardLower, // the dy fold's three (below)
  kJointBackward,
  kJointBackwardLower,
  // The same with the sublayer's pre-norm fused in (docs/PreNorm.md): in sets
  // whose key has a norm_eps, for a HyperConnection(norm=nn.RMSNorm(C)).
  kPreNorm,
  kPreMixedNorm,
  kPreBackwardNorm,
  kPreBackwardLowerNorm,
  kJointBackwardNorm,
  kJointBackwardLowerNorm,
  kNumStepOps
};
constexpr const char *kStepOpNames[kNumStepOps] = {
    "hc_pre",
    "hc_post",
    "hc_post_backward",
    "hc_pre_backward",
    "hc_pre_mixed",
    "hc_post_project",
    "hc_pre_backward_lower",
    "hc_joint_backward",
    "hc_joint_backward_lower",
    "hc_pre_norm",
    "hc_pre_mixed_norm",
    "hc_pre_backward_norm",
    "hc_pre_backward_lower_norm",
    "hc_joint_backward_norm",
    "hc_joint_backward_lower_norm"};

// op's twin with the pre-norm fused in where `norm`. The forwards take the
// norm's weight after base, the backwards after mix, with the cotangent g of o
// in du's place, and return dweight after dbase (kernels.OP_BUFFERS).
Op normed(Op op, bool norm) {
  if (!norm)
    return op;
  switch (op) {
  case kPre:
    return kPreNorm;
  case kPreMixed:
    return kPreMixedNorm;
  case kPreBackward:
    return kPreBackwardNorm;
  case kPreBackwardLower:
    return kPreBackwardLowerNorm;
  case kJointBackward:
    return kJointBackwardNorm;
  case kJointBackwardLower:
    return kJointBackwardLowerNorm;
  default:
    return op; // hc_post and its kin take no norm
  }
}

int opIndex(const std::string &name) {
  const auto &table = signatures();
  for (size_t i = 0; i < table.size(); ++i)
    if (name == table[i].name)
      return int(i);
  TORCH_CHECK_VALUE(false, "mhc native: unknown op ", name);
}

std::array<int, kNumStepOps> stepOps; // Op -> index in signatures()

// ops: (name, args, results), each buffer (name, shape code, dtype code) as
// kernels.BUFFER_LAYOUT spells them. Once per process (native.load): the
// table is kernels.py's constants.
using BufferLayout = std::tuple<std::string, std::string, std::string>;
using OpLayout = std::tuple<std::string, std::vector<BufferLayout>,
                            std::vector<BufferLayout>>;

void setSignatures(const std::vector<OpLayout> &ops) {
  static const std::unordered_map<std::string, Shape> shapes = {
      {"X", Shape::X},   {"Y", Shape::Y},     {"P", Shape::P},
      {"CB", Shape::CB}, {"MIX", Shape::MIX}, {"FN", Shape::FN},
      {"SC", Shape::SC}, {"B", Shape::B},     {"W", Shape::W}};
  auto buffers = [&](const std::string &op,
                     const std::vector<BufferLayout> &list) {
    std::vector<Buffer> out;
    for (const BufferLayout &layout : list) {
      const std::string &name = std::get<0>(layout);
      const std::string &shape = std::get<1>(layout);
      const std::string &dtype = std::get<2>(layout);
      auto it = shapes.find(shape);
      TORCH_CHECK_VALUE(it != shapes.end() && (dtype == "A" || dtype == "F"),
                        "mhc native: ", op, ": buffer ", name, " has layout (",
                        shape, ", ", dtype, ")");
      out.push_back({name, it->second, dtype == "A" ? Dt::A : Dt::F});
    }
    return out;
  };
  std::vector<Signature> table;
  for (const OpLayout &op : ops) {
    const std::string &name = std::get<0>(op);
    Signature sig{name, -1, buffers(name, std::get<1>(op)),
                  buffers(name, std::get<2>(op))};
    for (size_t i = 0; i < sig.args.size(); ++i)
      if (sig.args[i].name == "x")
        sig.xIndex = int(i);
    TORCH_CHECK_VALUE(sig.xIndex >= 0, "mhc native: ", name,
                      " has no argument x");
    table.push_back(std::move(sig));
  }
  signatures() = std::move(table);
  for (int op = 0; op < kNumStepOps; ++op)
    stepOps[size_t(op)] = opIndex(kStepOpNames[op]);
}

//===----------------------------------------------------------------------===//
// Kernel sets
//===----------------------------------------------------------------------===//

// The runtime's entry points (libmhc_runtime.so or the mock), by address.
using LaunchFlatFn = int (*)(void *, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int32_t, void *, int64_t,
                             int32_t, void *const *, const int64_t *);
using ErrorMessageFn = const char *(*)();
using ClearErrorFn = void (*)();

constexpr int kMaxBuffers = 64; // kernels.MAX_BUFFERS

struct Launch {
  void *function;
  int64_t tokensPerBlock; // 0: fixed grid x
  int64_t gridX, gridY, gridZ, blockX, blockY, blockZ;
  int32_t smem;
  std::vector<int> buffers; // indices into args ++ results ++ scratch
};

// Scratch dimensions as encoded by native.py: >= 0 a literal, -1 the token
// count T, -1-K (K >= 1) max(ceil(T / K), 1).
struct Scratch {
  std::vector<int64_t> dims;
  std::optional<at::ScalarType> dtype; // none: x's dtype
  bool zero;
};

struct OpPlan {
  std::vector<Launch> launches;
  std::vector<Scratch> scratch;
  std::vector<bool> zeroResults;
  // The manifest's few_tokens variant: runs instead for T <= fewTokensMaxT.
  std::unique_ptr<OpPlan> fewTokens;
  int64_t fewTokensMaxT = -1;
};

struct KernelSet {
  int64_t n, C, M;
  at::ScalarType dtype;
  LaunchFlatFn launchFlat;
  ErrorMessageFn errorMessage;
  ClearErrorFn clearError;
  std::vector<std::unique_ptr<OpPlan>> ops; // by index in signatures()
};

std::mutex setsMutex;
std::deque<KernelSet> sets; // a deque: references stay valid as it grows

KernelSet &kernelSet(int64_t handle) {
  std::lock_guard<std::mutex> lock(setsMutex);
  TORCH_CHECK(handle >= 0 && size_t(handle) < sets.size(),
              "mhc native: no kernel set ", handle);
  return sets[size_t(handle)];
}

// kernels.DTYPE_NAMES.
at::ScalarType scalarType(const std::string &name) {
  static const std::unordered_map<std::string, at::ScalarType> names = {
      {"bf16", at::kBFloat16}, {"f16", at::kHalf}, {"f32", at::kFloat},
      {"f64", at::kDouble},    {"i32", at::kInt},  {"i64", at::kLong}};
  auto it = names.find(name);
  TORCH_CHECK_VALUE(it != names.end(), "mhc native: unknown dtype ", name);
  return it->second;
}

int64_t newKernelSet(int64_t n, int64_t C, const std::string &dtype,
                     int64_t launchFlat, int64_t errorMessage,
                     int64_t clearError) {
  TORCH_CHECK_VALUE(n >= 1 && C >= 1 && launchFlat && errorMessage &&
                        clearError,
                    "mhc native: bad kernel set (n ", n, ", C ", C, ")");
  std::lock_guard<std::mutex> lock(setsMutex);
  sets.emplace_back();
  KernelSet &ks = sets.back();
  ks.n = n;
  ks.C = C;
  ks.M = n * n + 2 * n;
  ks.dtype = scalarType(dtype);
  ks.launchFlat = reinterpret_cast<LaunchFlatFn>(launchFlat);
  ks.errorMessage = reinterpret_cast<ErrorMessageFn>(errorMessage);
  ks.clearError = reinterpret_cast<ClearErrorFn>(clearError);
  ks.ops.resize(signatures().size());
  return int64_t(sets.size() - 1);
}

// launches: (function address, tokens per block or 0, grid x, grid y, grid z,
// block x, block y, block z, smem, buffer indices); scratch: (dims, dtype,
// zero; dtype a DTYPE_NAMES name or "x"); zero_results: the results to
// zero-fill; maxT >= 0: this is the op's few_tokens variant, for T <= maxT
// (added after the op itself).
void addOp(
    int64_t handle, const std::string &name,
    const std::vector<
        std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                   int64_t, int64_t, int64_t, std::vector<int64_t>>> &launches,
    const std::vector<std::tuple<std::vector<int64_t>, std::string, bool>>
        &scratch,
    const std::vector<int64_t> &zeroResults, int64_t maxT) {
  KernelSet &ks = kernelSet(handle);
  const Signature &sig = signatures()[size_t(opIndex(name))];
  const int64_t known =
      int64_t(sig.args.size() + sig.results.size() + scratch.size());
  auto plan = std::make_unique<OpPlan>();
  for (const auto &l : launches) {
    Launch launch{reinterpret_cast<void *>(std::get<0>(l)),
                  std::get<1>(l),
                  std::get<2>(l),
                  std::get<3>(l),
                  std::get<4>(l),
                  std::get<5>(l),
                  std::get<6>(l),
                  std::get<7>(l),
                  int32_t(std::get<8>(l)),
                  {}};
    const auto &buffers = std::get<9>(l);
    TORCH_CHECK_VALUE(launch.function && buffers.size() <= kMaxBuffers,
                      "mhc native: bad launch in ", name);
    for (int64_t b : buffers) {
      TORCH_CHECK_VALUE(b >= 0 && b < known, "mhc native: ", name,
                        " launch names buffer ", b, " of ", known);
      launch.buffers.push_back(int(b));
    }
    plan->launches.push_back(std::move(launch));
  }
  for (const auto &s : scratch) {
    const std::string &dtype = std::get<1>(s);
    plan->scratch.push_back(
        {std::get<0>(s),
         dtype == "x" ? std::nullopt : std::optional(scalarType(dtype)),
         std::get<2>(s)});
  }
  plan->zeroResults.assign(sig.results.size(), false);
  for (int64_t r : zeroResults) {
    TORCH_CHECK_VALUE(r >= 0 && size_t(r) < sig.results.size(),
                      "mhc native: ", name, " zeroes result ", r);
    plan->zeroResults[size_t(r)] = true;
  }
  std::unique_ptr<OpPlan> &slot = ks.ops[size_t(opIndex(name))];
  if (maxT < 0) {
    slot = std::move(plan);
    return;
  }
  TORCH_CHECK_VALUE(slot, "mhc native: the few_tokens variant of ", name,
                    " comes before the op");
  slot->fewTokens = std::move(plan);
  slot->fewTokensMaxT = maxT;
}

//===----------------------------------------------------------------------===//
// Running one op
//===----------------------------------------------------------------------===//

// Shapes and buffer lists in small inline vectors: an op call would otherwise
// make ~25 heap allocations for them (~1 us of host time).
using Dims = c10::SmallVector<int64_t, 6>;

Dims shapeOf(Shape s, c10::IntArrayRef lead, const KernelSet &ks) {
  Dims shape(lead.begin(), lead.end());
  switch (s) {
  case Shape::X:
    shape.insert(shape.end(), {ks.n, ks.C});
    return shape;
  case Shape::Y:
    shape.push_back(ks.C);
    return shape;
  case Shape::P:
    shape.push_back(ks.n);
    return shape;
  case Shape::CB:
    shape.insert(shape.end(), {ks.n, ks.n});
    return shape;
  case Shape::MIX:
    shape.push_back(ks.M);
    return shape;
  case Shape::FN:
    return Dims{ks.M, ks.n * ks.C};
  case Shape::SC:
    return Dims{3};
  case Shape::B:
    return Dims{ks.M};
  case Shape::W:
    return Dims{ks.C};
  }
  return shape;
}

at::ScalarType dtypeOf(Dt dt, const KernelSet &ks) {
  return dt == Dt::A ? ks.dtype : at::kFloat;
}

void checkArgument(const Signature &sig, const Buffer &b, const Tensor &t,
                   const Tensor &x, c10::IntArrayRef lead,
                   const KernelSet &ks) {
  TORCH_CHECK_VALUE(t.defined(), "mhc::", sig.name, ": ", b.name,
                    " is missing");
  Dims expected = shapeOf(b.shape, lead, ks);
  TORCH_CHECK_VALUE(t.sizes().equals(c10::IntArrayRef(expected)), "mhc::", sig.name, ": ", b.name,
                    " has shape ", t.sizes(), ", expected ",
                    c10::IntArrayRef(expected));
  auto dtype = dtypeOf(b.dtype, ks);
  TORCH_CHECK_VALUE(t.scalar_type() == dtype, "mhc::", sig.name, ": ", b.name,
                    " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK_VALUE(t.device() == x.device(), "mhc::", sig.name, ": ", b.name,
                    " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), "mhc::", sig.name, ": ", b.name,
                    " is not contiguous (strides ", t.strides(),
                    "); call .contiguous() first");
}

void *currentStream(const Tensor &x) {
#ifdef MHC_NATIVE_CUDA
  if (x.is_cuda())
    return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
#endif
  (void)x;
  return nullptr; // CPU tensors: only the mock runtime takes them (tests)
}

// A tensor over `block`'s storage, made directly rather than through the
// dispatcher (a view op or an allocation costs ~1-2 us of host time each):
// `shape` contiguous from `byteOffset`, or with `strides` where given.
Tensor pieceOf(const Tensor &block, int64_t byteOffset, c10::IntArrayRef shape,
               at::ScalarType dtype, c10::IntArrayRef strides = {}) {
  auto meta = caffe2::TypeMeta::fromScalarType(dtype);
  Tensor t = at::detail::make_tensor<c10::TensorImpl>(
      c10::Storage(block.storage()), block.key_set(), meta);
  c10::TensorImpl *impl = t.unsafeGetTensorImpl();
  impl->set_storage_offset(byteOffset / int64_t(meta.itemsize()));
  if (strides.empty())
    impl->set_sizes_contiguous(shape);
  else
    impl->set_sizes_and_strides(shape, strides);
  return t;
}

// How an op call's results are allocated from PyTorch's caching allocator
// (each allocation costs ~2 us of host time, more than the launch). Buffers
// allocated together live as long as the longest-lived of them, so only
// buffers that die together anyway are grouped.
enum class Grouping {
  Separate,     // one allocation per result (the custom ops: results a user holds)
  Coefficients, // the per-token f32 coefficients in one, each activation or
                // parameter gradient alone (the autograd steps)
  All,          // everything in one (steps whose results all live until the
                // backward)
  AllButMix,    // everything in one but mix, which goes alone (pre_step under
                // recomputation: mix is saved for the backward; u, post and
                // comb are not)
};

bool isCoefficient(const Buffer &b) {
  return b.dtype == Dt::F &&
         (b.shape == Shape::P || b.shape == Shape::CB || b.shape == Shape::MIX);
}

// A buffer to allocate: buffers of one group share an allocation.
struct Allocation {
  Dims shape;
  at::ScalarType dtype;
  bool zero; // zero-filled
  int group;
};
using Allocations = c10::SmallVector<Allocation, 8>;

// The buffers: a group of one is a plain at::empty, a larger one is one
// allocation with each buffer at a 256-byte aligned offset.
c10::SmallVector<Tensor, 8> allocate(const Tensor &x,
                                     const Allocations &buffers) {
  constexpr int64_t kAlign = 256;
  const size_t count = buffers.size();
  int groups = 0;
  for (const Allocation &a : buffers)
    groups = std::max(groups, a.group + 1);
  c10::SmallVector<int64_t, 8> offset(count), groupBytes, members;
  groupBytes.resize(size_t(groups), 0);
  members.resize(size_t(groups), 0);
  for (size_t i = 0; i < count; ++i) {
    int64_t bytes = int64_t(c10::elementSize(buffers[i].dtype));
    for (int64_t d : buffers[i].shape)
      bytes *= d;
    size_t g = size_t(buffers[i].group);
    offset[i] = groupBytes[g];
    groupBytes[g] += (bytes + kAlign - 1) / kAlign * kAlign;
    ++members[g];
  }
  c10::SmallVector<Tensor, 8> blocks, out(count);
  blocks.resize(size_t(groups));
  for (size_t i = 0; i < count; ++i) {
    const Allocation &a = buffers[i];
    size_t g = size_t(a.group);
    if (members[g] == 1) {
      auto options = x.options().dtype(a.dtype);
      out[i] = a.zero ? at::zeros(a.shape, options) : at::empty(a.shape, options);
      continue;
    }
    if (!blocks[g].defined())
      blocks[g] = at::empty({groupBytes[g]}, x.options().dtype(at::kByte));
    out[i] = pieceOf(blocks[g], offset[i], a.shape, a.dtype);
    if (a.zero)
      out[i].zero_();
  }
  return out;
}

// One op: checks its arguments, allocates its results (grouped as asked)
// and its scratch (in one allocation: it dies with the call), launches its
// kernels on PyTorch's current stream.
std::vector<Tensor> runOp(const KernelSet &ks, int op,
                          c10::ArrayRef<Tensor> args,
                          Grouping grouping = Grouping::Separate) {
  const Signature &sig = signatures()[size_t(op)];
  const OpPlan *plan = ks.ops[size_t(op)].get(); // or its few_tokens variant, below
  TORCH_CHECK(plan, "mhc::", sig.name,
              ": the kernel set has no kernels for this op");
  TORCH_CHECK_VALUE(args.size() == sig.args.size(), "mhc::", sig.name,
                    ": expected ", sig.args.size(), " arguments, got ",
                    args.size());
  const Tensor &x = args[size_t(sig.xIndex)];
  TORCH_CHECK_VALUE(x.defined() && x.dim() >= 2 && x.size(-2) == ks.n &&
                        x.size(-1) == ks.C,
                    "mhc::", sig.name, ": x must be [..., ", ks.n, ", ", ks.C,
                    "]", x.defined() ? ", got " : "",
                    x.defined() ? c10::str(x.sizes()) : std::string());
  c10::IntArrayRef lead = x.sizes().slice(0, size_t(x.dim() - 2));
  for (size_t i = 0; i < args.size(); ++i)
    checkArgument(sig, sig.args[i], args[i], x, lead, ks);

  const int64_t T = x.numel() / (ks.n * ks.C);
  if (T <= plan->fewTokensMaxT)
    plan = plan->fewTokens.get();
  Allocations resultBuffers;
  for (size_t i = 0; i < sig.results.size(); ++i) {
    const Buffer &b = sig.results[i];
    bool shared = grouping == Grouping::All ||
                  (grouping == Grouping::Coefficients && isCoefficient(b)) ||
                  (grouping == Grouping::AllButMix && b.shape != Shape::MIX);
    // the shared group's number: one past every result's own
    resultBuffers.push_back({shapeOf(b.shape, lead, ks), dtypeOf(b.dtype, ks),
                             bool(plan->zeroResults[i]),
                             shared ? int(sig.results.size()) : int(i)});
  }
  c10::SmallVector<Tensor, 8> results = allocate(x, resultBuffers);
  Allocations scratchBuffers; // one group: they die with the call
  for (const Scratch &s : plan->scratch) {
    int64_t numel = 1;
    for (int64_t d : s.dims)
      numel *= d >= 0    ? d
               : d == -1 ? T
                         : std::max((T - d - 2) / (-d - 1), int64_t(1));
    scratchBuffers.push_back(
        {Dims{numel}, s.dtype.value_or(ks.dtype), s.zero, 0});
  }
  c10::SmallVector<Tensor, 8> scratch = allocate(x, scratchBuffers);
  c10::SmallVector<const Tensor *, 24> buffers; // args ++ results ++ scratch
  for (const Tensor &t : args)
    buffers.push_back(&t);
  for (const Tensor &t : results)
    buffers.push_back(&t);
  for (const Tensor &t : scratch)
    buffers.push_back(&t);

  void *stream = currentStream(x);
  std::array<void *, kMaxBuffers> ptrs;
  std::array<int64_t, kMaxBuffers> numels;
  for (const Launch &l : plan->launches) {
    for (size_t i = 0; i < l.buffers.size(); ++i) {
      const Tensor &t = *buffers[size_t(l.buffers[i])];
      ptrs[i] = t.data_ptr();
      numels[i] = t.numel();
    }
    // T = 0 still launches one block (the kernels mask their tokens).
    int64_t gridX =
        l.tokensPerBlock
            ? std::max((T + l.tokensPerBlock - 1) / l.tokensPerBlock,
                       int64_t(1))
            : l.gridX;
    int rc =
        ks.launchFlat(l.function, gridX, l.gridY, l.gridZ, l.blockX, l.blockY,
                      l.blockZ, l.smem, stream, T, int32_t(l.buffers.size()),
                      ptrs.data(), numels.data());
    if (rc) {
      std::string message = ks.errorMessage();
      ks.clearError(); // the next call may succeed (e.g. after freeing memory)
      TORCH_CHECK(false, "mhc::", sig.name,
                  ": kernel launch failed: ", message);
    }
  }
  return std::vector<Tensor>(results.begin(), results.end());
}

// runOp of one of the ops the autograd steps launch.
std::vector<Tensor> runStep(const KernelSet &ks, Op op,
                            c10::ArrayRef<Tensor> args,
                            Grouping grouping = Grouping::Coefficients) {
  return runOp(ks, stepOps[size_t(op)], args, grouping);
}

bool hasStep(const KernelSet &ks, Op op) {
  return ks.ops[size_t(stepOps[size_t(op)])] != nullptr;
}

// u (o with the fused norm's weight), post, comb again from the mix the
// forward saved (recomputation): the same values as the forward's, since
// hc_pre is hc_pre_mixed after its norm_project, without that projection's
// pass over x. Kernel sets built before the chain ops have only hc_pre.
std::vector<Tensor> recomputePre(const KernelSet &ks, const Tensor &x,
                                 const Tensor &mix, const Tensor &fn,
                                 const Tensor &scale, const Tensor &base,
                                 const Tensor &weight, Grouping grouping) {
  const bool norm = weight.defined();
  const bool mixed = hasStep(ks, normed(kPreMixed, norm));
  std::vector<Tensor> args = {x, mixed ? mix : fn, scale, base};
  if (norm)
    args.push_back(weight);
  return runStep(ks, normed(mixed ? kPreMixed : kPre, norm), args, grouping);
}

std::vector<Tensor> runOpByName(int64_t handle, const std::string &name,
                                const std::vector<Tensor> &args) {
  return runOp(kernelSet(handle), opIndex(name), args);
}

//===----------------------------------------------------------------------===//
// Recomputed u, handed from post_step's backward to the sublayer's saved-tensor
// hook (URecompute below). The hook owns the slot, which the sublayer's saved
// tensors keep alive until its backward is done; post_step's backward holds
// it weakly: a slot whose owner is gone receives nothing.
//===----------------------------------------------------------------------===//

class USlot {
public:
  void put(const Tensor &u) {
    std::lock_guard<std::mutex> lock(mutex);
    value = u;
  }
  // The recomputed u, once; None when there is none (the hook recomputes).
  std::optional<Tensor> take() {
    std::lock_guard<std::mutex> lock(mutex);
    if (!value.defined())
      return std::nullopt;
    return std::exchange(value, Tensor());
  }

private:
  std::mutex mutex;
  Tensor value;
};

//===----------------------------------------------------------------------===//
// HyperConnection's autograd steps (modules.py's _PreStep / _PostStep), as
// autograd nodes written by hand. torch::autograd::Function would do more per
// call than these two steps need -- record every input's metadata, check
// every output against the inputs, keep saved data in a string-keyed map;
// with run_op's allocations that was ~25% of a chained sublayer's host time
// (docs/Torch.md, "Host time, ninth session").
// A node here holds exactly its saved tensors (as SavedVariables: the version
// check and the user's saved-tensor hooks apply as they do to any node).
//===----------------------------------------------------------------------===//

using torch::autograd::Node;
using torch::autograd::SavedVariable;

// Node's owning pointer: std::shared_ptr in older PyTorch releases,
// c10::intrusive_ptr in newer ones (2.15 here; the H200 runs 2.11).
using NodePtr = decltype(torch::autograd::Edge::function);

template <class StepNode> NodePtr newNode() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<Node>>)
    // deleteNode (found by argument-dependent lookup: only where it exists)
    // frees long chains of nodes without deep recursion.
    return NodePtr(new StepNode(), [](auto *node) { deleteNode(node); });
  else
    return c10::make_intrusive<StepNode>();
}

// Makes `node` the grad_fn of `t` (its next input slot).
void attach(Tensor &t, const NodePtr &node) {
  uint32_t slot = node->add_input_metadata(t);
  torch::autograd::impl::set_gradient_edge(t, {node, slot});
}

// The kernels have no autograd of their own: a backward asked to record a
// graph (create_graph=True, the engine's grad mode on) would return
// gradients that a second backward cannot see through.
void refuseDoubleBackward() {
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "HyperConnection (cuda backend): double backward "
              "(create_graph=True) is not supported; mhc's backward kernels "
              "have no gradient of their own");
}

// Whether a step records a node: as for any operation, grad mode is on and
// an input it differentiates requires grad. Forward-mode AD has no rule here.
bool recordsNode(std::initializer_list<const Tensor *> inputs) {
  bool any = false;
  for (const Tensor *t : inputs) {
    TORCH_CHECK(!torch::autograd::isFwGradDefined(*t),
                "HyperConnection: forward-mode AD (dual tensors) is not "
                "supported by the cuda backend");
    any = any || t->requires_grad();
  }
  return any && at::GradMode::is_enabled();
}

// The gradient given for an output, or zeros when none came (the output was
// unused).
Tensor gradOrZeros(const Tensor &g, Shape s, c10::IntArrayRef lead,
                   const KernelSet &ks, const Tensor &like,
                   at::ScalarType dtype) {
  return g.defined() ? g.contiguous()
                     : at::zeros(shapeOf(s, lead, ks), like.options().dtype(dtype));
}

//===----------------------------------------------------------------------===//
// The dy fold in eager mode (docs/Torch.md, "The dy fold"). When sublayer
// A's x_next is sublayer B's x and nothing else reads it, the dx that B's
// pre_step backward makes is all of A's dx_next, so B's kernel also stores
// A's dy = sum_j post_A[j] dx[j] (hc_pre_backward_lower, or
// hc_joint_backward_lower where B's own dy came from above). A's post_step
// backward then launches nothing: it gives that dy to A's sublayer and leaves
// dpost/dcomb to A's pre_step backward, which runs the sublayer's whole
// backward in one rows pass (hc_joint_backward[_lower]) instead of
// hc_post_backward's and hc_pre_backward's two. The results are the same
// bits either way: the fold's kernels sum in the same order as the ones they
// replace (checked on the H200 for the compiled fold; for this one
// bench/check_torch_backend.py's eager_fold, passed on an H100,
// bench/results/session24-h100.log). MHC_EAGER_FOLD_DY=0 turns it off.
//
// "Nothing else reads it" is checked when A's post_step backward runs: the
// gradient it receives must be the very tensor B's backward made, unchanged.
// Another use of x_next adds its gradient into a new tensor (A's node keeps
// a reference to B's, so the engine cannot add in place) and a tensor hook
// replaces or modifies it; then A's post_step runs hc_post_backward as usual
// and B's dy for it goes unused. B finds A through its x's gradient edge: A's
// post_step node, output 0 (x_next itself, not a view of it).
//===----------------------------------------------------------------------===//

std::atomic<bool> eagerFoldOn{false}; // native.py sets it (MHC_EAGER_FOLD_DY)
std::atomic<int64_t> foldedSteps{0}; // post_step backwards that took their dy from above

struct PostStepBackward;

// pre_step's backward: next edges x, fn, scale, base (and the norm's weight
// where it is fused); inputs the gradients of u (o), post, comb and the link.
struct PreStepBackward : Node {
  SavedVariable x, fn, scale, base, mix, weight;
  int64_t handle = 0;
  bool norm = false; // the pre-norm fused: weight saved, the *_norm kernels
  // The dy fold: this sublayer's y, set by its post_step backward when that
  // left dpost/dcomb to this step (hc_joint_backward); taken by apply.
  Tensor jointY;

  std::string name() const override { return "mhc::PreStepBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable *v : {&x, &fn, &scale, &base, &mix, &weight})
      v->reset_data();
    jointY = Tensor();
  }

  void join(const Tensor &y) {
    std::lock_guard<std::mutex> lock(mutex_);
    jointY = y;
  }

  variable_list apply(variable_list &&grads) override;

private:
  PostStepBackward *foldableLower(const KernelSet &ks);
};

// post_step's backward: next edges y, the link, post, comb; input the
// gradient of x_next.
struct PostStepBackward : Node {
  // Without recomputation post and comb; with it mix, fn, scale, base and
  // the fused norm's weight (pre_step's saved tensors: no extra memory) to
  // recompute them and the sublayer's input.
  SavedVariable y, x, post, comb, mix, fn, scale, base, weight;
  int64_t handle = 0;
  bool recompute = false;
  bool norm = false; // the pre-norm fused (as this sublayer's pre_step)
  std::weak_ptr<USlot> uSlot; // recomputing: where the sublayer's hook reads u
  // The dy fold: what the backward of the sublayer above left here (its dx,
  // as made, and this sublayer's dy), and post/comb recomputed early for it.
  Tensor dxFromAbove, dyFromAbove, readyPost, readyComb;
  uint32_t dxFromAboveVersion = 0;
  // The saved tensors as unpacked in this backward: each is unpacked once per
  // backward (torch.utils.checkpoint's hooks refuse a second unpack).
  Tensor unpackedX, unpackedMix, unpackedFn, unpackedScale, unpackedBase,
      unpackedWeight;

  std::string name() const override { return "mhc::PostStepBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable *v :
         {&y, &x, &post, &comb, &mix, &fn, &scale, &base, &weight})
      v->reset_data();
    dxFromAbove = dyFromAbove = Tensor();
    endBackward();
  }

  // This sublayer's pre_step node (the link's), when there is one.
  PreStepBackward *preNode() const {
    return dynamic_cast<PreStepBackward *>(next_edge(1).function.get());
  }

  // Whether the sublayer above may fold this one's dy: this one's pre_step
  // backward exists and can run the joint backward.
  bool canJoin() const {
    const KernelSet &ks = kernelSet(handle);
    return hasStep(ks, normed(kJointBackward, norm)) &&
           hasStep(ks, normed(kJointBackwardLower, norm)) &&
           preNode() != nullptr;
  }

  // For the sublayer above: this one's post, recomputed now if need be; none
  // (no fold) when recomputing cannot happen yet: it reads this sublayer's
  // scale and base (fn too without hc_pre_mixed), whose memory a sharding
  // wrapper (FSDP, ZeRO-3) may free after the forward and gather again only
  // when this sublayer's own backward comes (the fused norm's weight too).
  Tensor postForFold() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (recompute && !readyPost.defined()) {
      bool needFn = !hasStep(kernelSet(handle), normed(kPreMixed, norm));
      for (const Tensor *p : {&once(scale, unpackedScale),
                              &once(base, unpackedBase)})
        if (!inMemory(*p))
          return Tensor();
      if (needFn && !inMemory(once(fn, unpackedFn)))
        return Tensor();
      if (norm && !inMemory(once(weight, unpackedWeight)))
        return Tensor();
    }
    return coefficients().first;
  }

  // From the sublayer above: its dx (this one's dx_next, if nothing else
  // adds to it) and this one's dy computed from it.
  void handOff(const Tensor &dx, const Tensor &dy) {
    std::lock_guard<std::mutex> lock(mutex_);
    dxFromAbove = dx;
    dxFromAboveVersion = dx._version();
    dyFromAbove = dy;
  }

  variable_list apply(variable_list &&grads) override {
    refuseDoubleBackward();
    std::lock_guard<std::mutex> lock(mutex_);
    const KernelSet &ks = kernelSet(handle);
    Tensor given = std::exchange(dxFromAbove, Tensor());
    Tensor dy = std::exchange(dyFromAbove, Tensor());
    if (dy.defined() && grads[0].defined() &&
        grads[0].unsafeGetTensorImpl() == given.unsafeGetTensorImpl() &&
        grads[0]._version() == dxFromAboveVersion) {
      // Folded: dy came from above; dpost/dcomb come from the pre step's
      // joint backward, which takes y from here.
      preNode()->join(y.unpack());
      endBackward();
      foldedSteps.fetch_add(1, std::memory_order_relaxed);
      return {dy, grads[0].contiguous(), Tensor(), Tensor()};
    }
    Tensor xv = once(x, unpackedX);
    Tensor dxNext =
        grads[0].defined() ? grads[0].contiguous() : at::zeros_like(xv);
    auto [postv, combv] = coefficients();
    endBackward();
    auto r = runStep(ks, kPostBackward, {y.unpack(), xv, postv, combv, dxNext});
    // No gradient for x here: dx_next goes through the link to pre_step,
    // which computes all of dx. None for fnNext either: the next sublayer's
    // backward computes its fn's whole gradient from the mix it was given.
    return {r[0], dxNext, r[1], r[2]};
  }

private:
  // mutex_ held by the callers of these.
  static const Tensor &once(SavedVariable &saved, Tensor &unpacked) {
    if (!unpacked.defined())
      unpacked = saved.unpack();
    return unpacked;
  }

  // Drops what this backward unpacked or recomputed (the next one, through a
  // retained graph, starts afresh).
  void endBackward() {
    for (Tensor *t :
         {&readyPost, &readyComb, &unpackedX, &unpackedMix, &unpackedFn,
          &unpackedScale, &unpackedBase, &unpackedWeight})
      *t = Tensor();
  }

  // Whether a tensor's elements are in memory (not a sharded parameter's
  // freed storage or emptied data).
  static bool inMemory(const Tensor &t) {
    return t.numel() > 0 && t.has_storage() &&
           t.storage().nbytes() >=
               size_t(t.storage_offset() + t.numel()) * t.itemsize();
  }

  // post and comb: saved, or recomputed from the saved mix once per backward
  // (and then u handed to the sublayer's saved-tensor hook).
  std::pair<Tensor, Tensor> coefficients() {
    if (!recompute) {
      if (!readyPost.defined()) {
        readyPost = post.unpack();
        readyComb = comb.unpack();
      }
      return {readyPost, readyComb};
    }
    if (!readyPost.defined()) {
      const KernelSet &ks = kernelSet(handle);
      // fn only where hc_pre_mixed is missing (recomputePre then runs hc_pre).
      Tensor fnv = hasStep(ks, normed(kPreMixed, norm)) ? Tensor()
                                                        : once(fn, unpackedFn);
      Tensor weightv = norm ? once(weight, unpackedWeight) : Tensor();
      auto r =
          recomputePre(ks, once(x, unpackedX), once(mix, unpackedMix), fnv,
                       once(scale, unpackedScale), once(base, unpackedBase),
                       weightv, Grouping::AllButMix);
      readyPost = r[1];
      readyComb = r[2];
      if (std::shared_ptr<USlot> slot = uSlot.lock())
        slot->put(r[0]); // the sublayer's backward reads it
    }
    return {readyPost, readyComb};
  }
};

// The post_step node of the sublayer below when this step can compute its
// dy (the dy fold): x is that node's output itself, both kernel sets have the
// fold's ops, and both sublayers ran on one stream (autograd runs each node's
// backward on its forward's stream and synchronises only what it hands over:
// the dy made here goes out through that node).
PostStepBackward *PreStepBackward::foldableLower(const KernelSet &ks) {
  if (!eagerFoldOn.load(std::memory_order_relaxed) ||
      !hasStep(ks, normed(kPreBackwardLower, norm)) ||
      !hasStep(ks, normed(kJointBackwardLower, norm)))
    return nullptr;
  const torch::autograd::Edge &edge = next_edge(0);
  auto *lower = dynamic_cast<PostStepBackward *>(edge.function.get());
  return lower && edge.input_nr == 0 && lower->canJoin() &&
                 lower->input_metadata(0).stream() ==
                     input_metadata(0).stream()
             ? lower
             : nullptr;
}

variable_list PreStepBackward::apply(variable_list &&grads) {
  refuseDoubleBackward();
  std::lock_guard<std::mutex> lock(mutex_);
  const KernelSet &ks = kernelSet(handle);
  Tensor xv = x.unpack(), mixv = mix.unpack();
  Tensor fnv = fn.unpack(), scalev = scale.unpack(), basev = base.unpack();
  auto lead = xv.sizes().slice(0, size_t(xv.dim() - 2));
  Tensor du = gradOrZeros(grads[0], Shape::Y, lead, ks, xv, xv.scalar_type());
  Tensor dxNext =
      gradOrZeros(grads[3], Shape::X, lead, ks, xv, xv.scalar_type());
  Tensor y = std::exchange(jointY, Tensor());
  PostStepBackward *lower = foldableLower(ks);
  Tensor postLower = lower ? lower->postForFold() : Tensor();
  if (!postLower.defined())
    lower = nullptr;
  // The kernel's arguments: the saved tensors (y after x for the joint
  // backward), the norm's weight after mix, the cotangents, post_lower.
  Op op;
  std::vector<Tensor> args;
  if (y.defined()) {
    // The post step launched nothing: no dpost/dcomb came (post and comb
    // feed only it), this kernel computes them.
    TORCH_INTERNAL_ASSERT(!grads[1].defined() && !grads[2].defined());
    op = lower ? kJointBackwardLower : kJointBackward;
    args = {xv, y, fnv, scalev, basev, mixv};
  } else {
    // The same backward whichever kernel computed the mix: it is the
    // norm_project of x with fn either way, and hc_pre_backward
    // differentiates through it.
    op = lower ? kPreBackwardLower : kPreBackward;
    args = {xv, fnv, scalev, basev, mixv};
  }
  if (norm)
    args.push_back(weight.unpack());
  args.push_back(du);
  if (!y.defined()) {
    args.push_back(
        gradOrZeros(grads[1], Shape::P, lead, ks, xv, mixv.scalar_type()));
    args.push_back(
        gradOrZeros(grads[2], Shape::CB, lead, ks, xv, mixv.scalar_type()));
  }
  args.push_back(dxNext);
  if (lower)
    args.push_back(postLower);
  // dx, dfn, dscale, dbase, then dweight (norm) and dy_lower (lower).
  std::vector<Tensor> r = runStep(ks, normed(op, norm), args);
  if (lower)
    lower->handOff(r[0], r.back());
  r.resize(norm ? 5 : 4);
  return r;
}

// mixIn: the mix the previous sublayer's post_step computed for this one
// (hc_pre_mixed); none: this step computes it (hc_pre). together: all
// results in one allocation (without recomputation they live until the
// backward anyway: post_step saves post/comb, the sublayer u); otherwise all
// but mix, which this step saves (with recomputation u, post and comb die
// after the forward: one allocation when the mix came chained). weight: the
// sublayer's pre-norm fused in (its weight, in x's dtype; undefined: none),
// which makes u the normed row o = rms_norm(u, weight).
// Returns u, post, comb, mix (not differentiable) and the link.
variable_list preStep(const Tensor &x, const Tensor &fn, const Tensor &scale,
                      const Tensor &base, const std::optional<Tensor> &mixIn,
                      int64_t handle, bool together, const Tensor &weight) {
  const KernelSet &ks = kernelSet(handle);
  const bool norm = weight.defined();
  const bool record =
      norm ? recordsNode({&x, &fn, &scale, &base, &weight})
           : recordsNode({&x, &fn, &scale, &base}); // before launching
  auto grouping = together ? Grouping::All : Grouping::AllButMix;
  std::vector<Tensor> args = {x, mixIn ? *mixIn : fn, scale, base};
  if (norm)
    args.push_back(weight);
  auto r = runStep(ks, normed(mixIn ? kPreMixed : kPre, norm), args, grouping);
  Tensor u = r[0], post = r[1], comb = r[2], mix = mixIn ? *mixIn : r[3];
  // The link: x's shape and dtype, all strides 0, over mix's first element
  // (no allocation: nothing ever reads it); its only job is to carry
  // dx_next from post_step's backward to this step's backward.
  Dims zeroStrides(size_t(x.dim()), 0);
  Tensor link = pieceOf(mix, mix.storage_offset() * int64_t(mix.itemsize()),
                        x.sizes(), x.scalar_type(), zeroStrides);
  if (record) {
    NodePtr node = newNode<PreStepBackward>();
    auto *step = static_cast<PreStepBackward *>(node.get());
    node->set_next_edges(
        norm ? torch::autograd::collect_next_edges(x, fn, scale, base, weight)
             : torch::autograd::collect_next_edges(x, fn, scale, base));
    step->x = SavedVariable(x, false);
    step->fn = SavedVariable(fn, false);
    step->scale = SavedVariable(scale, false);
    step->base = SavedVariable(base, false);
    step->mix = SavedVariable(mix, false);
    if (norm)
      step->weight = SavedVariable(weight, false);
    step->norm = norm;
    step->handle = handle;
    for (Tensor *out : {&u, &post, &comb, &link})
      attach(*out, node);
  }
  return {u, post, comb, mix, link};
}

// fnNext: the next sublayer's fn; given, the step also returns that
// sublayer's mix (hc_post_project, not differentiable), which the next
// pre_step then takes. recompute: false saves post/comb; otherwise they are
// recomputed in the backward from the saved mix (recomputePre), and uSlot
// (null: none) receives the recomputed u (o, with the fused norm's weight,
// pre_step's).
variable_list postStep(const Tensor &y, const Tensor &x, const Tensor &link,
                       const Tensor &post, const Tensor &comb,
                       const Tensor &mix, const Tensor &fn, const Tensor &scale,
                       const Tensor &base, const std::optional<Tensor> &fnNext,
                       int64_t handle, bool recompute,
                       const std::shared_ptr<USlot> &uSlot,
                       const Tensor &weight) {
  const KernelSet &ks = kernelSet(handle);
  const bool record = recordsNode({&y, &link, &post, &comb}); // before launching
  variable_list out;
  if (fnNext) // x_next and mix_next in one allocation: the next pre_step saves both
    out = runStep(ks, kPostProject, {y, x, post, comb, *fnNext}, Grouping::All);
  else
    out = {runStep(ks, kPost, {y, x, post, comb})[0]};
  if (record) {
    NodePtr node = newNode<PostStepBackward>();
    auto *step = static_cast<PostStepBackward *>(node.get());
    node->set_next_edges(
        torch::autograd::collect_next_edges(y, link, post, comb));
    step->y = SavedVariable(y, false);
    step->x = SavedVariable(x, false);
    if (!recompute) {
      step->post = SavedVariable(post, false);
      step->comb = SavedVariable(comb, false);
    } else {
      step->mix = SavedVariable(mix, false);
      step->fn = SavedVariable(fn, false);
      step->scale = SavedVariable(scale, false);
      step->base = SavedVariable(base, false);
      if (weight.defined())
        step->weight = SavedVariable(weight, false);
    }
    step->norm = weight.defined();
    step->handle = handle;
    step->recompute = recompute;
    step->uSlot = uSlot;
    attach(out[0], node);
  }
  return out;
}

//===----------------------------------------------------------------------===//
// HyperConnection.forward on the C++ path (modules.py's fast path and
// _forward_native): the two steps, the sublayer call between them with its
// saved u recomputed, and the chain of consecutive HyperConnections, without
// running Python of ours (the host time per sublayer; docs/Torch.md).
//
// The chain: when the output of one HyperConnection is the next one's input,
// the first one's post kernel also computes the next one's mix
// (hc_post_project: post_res fused with the next norm_project) and the next
// one's pre kernel starts from it (hc_pre_mixed). x_next carries a Python
// attribute _mhc_chain = (producer, consumer, mix, consumer's fn version,
// x_next's version), producer and consumer weak references to the modules
// (consumer None: no successor known). The consumer uses the mix only if it
// is the intended one and neither its fn nor x_next changed since, and
// otherwise computes its own. A consumer that finds a producer's tag
// registers itself as that producer's successor (the module's _mhc_next), so
// the chain is learnt on the first call and used from the second.
//===----------------------------------------------------------------------===//

// Interned attribute names (made once with the GIL held; never freed: the
// interpreter may be gone when static destructors run).
struct Names {
  PyObject *mode, *backend, *n, *C, *attrs, *recompute, *recordCoefficients,
      *next, *parameters, *modules, *sublayer, *fn, *scale, *base, *chainTag,
      *lastRes, *checkOutput, *norm, *weight, *eps, *normalizedShape;
  PyObject *rmsNormType; // torch.nn.RMSNorm
};

const Names &names() {
  static const Names table = [] {
    auto s = [](const char *name) { return PyUnicode_InternFromString(name); };
    return Names{s("mode"),
                 s("backend"),
                 s("n"),
                 s("C"),
                 s("attrs"),
                 s("recompute"),
                 s("record_coefficients"),
                 s("_mhc_next"),
                 s("_parameters"),
                 s("_modules"),
                 s("sublayer"),
                 s("fn"),
                 s("scale"),
                 s("base"),
                 s("_mhc_chain"),
                 s("last_res"),
                 s("_check_output"),
                 s("norm"),
                 s("weight"),
                 s("eps"),
                 s("normalized_shape"),
                 py::object(py::module_::import("torch.nn").attr("RMSNorm"))
                     .release()
                     .ptr()};
  }();
  return table;
}

// obj.name where name is in obj's instance dict (a HyperConnection's plain
// attributes and its _parameters/_modules): a borrowed reference or nullptr.
PyObject *instanceAttr(PyObject *obj, PyObject *name) {
  PyObject *dict = PyObject_GenericGetDict(obj, nullptr);
  if (!dict) {
    PyErr_Clear();
    return nullptr;
  }
  PyObject *value = PyDict_GetItem(dict, name); // borrowed; never raises
  Py_DECREF(dict); // obj keeps its dict alive
  return value;
}

bool truthy(PyObject *value) {
  if (!value)
    return false;
  int truth = PyObject_IsTrue(value);
  if (truth < 0) // e.g. a tensor of several elements, as Python's `if` would
    throw py::error_already_set();
  return truth == 1;
}

PyObject *dictItem(PyObject *dict, PyObject *name) {
  return dict && PyDict_Check(dict) ? PyDict_GetItem(dict, name) : nullptr;
}

bool isString(PyObject *value, const char *text) {
  return value && PyUnicode_Check(value) &&
         PyUnicode_CompareWithASCIIString(value, text) == 0;
}

// A plain tensor (torch.Tensor or nn.Parameter, not a subclass such as an
// FSDP2 DTensor shard) or nullptr.
const Tensor *plainTensor(PyObject *obj) {
  return obj && THPVariable_CheckExact(obj) ? &THPVariable_Unpack(obj)
                                            : nullptr;
}

py::object wrap(const Tensor &t) {
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(t));
}

// The attribute or nullptr when absent (no exception made for a miss).
py::object optionalAttr(PyObject *obj, PyObject *name) {
  PyObject *value = nullptr;
#if PY_VERSION_HEX >= 0x030D0000
  int found = PyObject_GetOptionalAttr(obj, name, &value);
#else
  int found = _PyObject_LookupAttr(obj, name, &value);
#endif
  if (found < 0)
    throw py::error_already_set();
  return py::reinterpret_steal<py::object>(value);
}

// A weak reference to a module: CPython hands out one plain reference per
// object, so two calls give the same one (identity compares them).
py::object weakRef(py::handle obj) {
  PyObject *ref = PyWeakref_NewRef(obj.ptr(), nullptr);
  if (!ref)
    throw py::error_already_set();
  return py::reinterpret_steal<py::object>(ref);
}

PyObject *referent(PyObject *ref) { // borrowed; nullptr when dead or not a ref
  if (!ref || !PyWeakref_Check(ref))
    return nullptr;
  PyObject *obj = PyWeakref_GetObject(ref);
  return obj == Py_None ? nullptr : obj;
}

// The mix x's producer computed for this module, when this module is its
// intended consumer and neither fn nor x changed since; learns the chain.
std::optional<Tensor> chainedMix(py::handle module, py::handle me,
                                 py::handle xObj, const Tensor &x,
                                 const Tensor &fn) {
  const Names &k = names();
  py::object tag = optionalAttr(xObj.ptr(), k.chainTag);
  if (!tag || !PyTuple_Check(tag.ptr()) || PyTuple_GET_SIZE(tag.ptr()) != 5)
    return std::nullopt;
  PyObject *producer = referent(PyTuple_GET_ITEM(tag.ptr(), 0));
  if (producer && instanceAttr(producer, k.next) != me.ptr() &&
      PyObject_SetAttr(producer, k.next, me.ptr()) < 0)
    throw py::error_already_set(); // learnt: next time it computes our mix
  const Tensor *mine =
      plainTensor(dictItem(instanceAttr(module.ptr(), k.parameters), k.fn));
  const Tensor *mix = plainTensor(PyTuple_GET_ITEM(tag.ptr(), 2));
  PyObject *fnVersion = PyTuple_GET_ITEM(tag.ptr(), 3);
  PyObject *xVersion = PyTuple_GET_ITEM(tag.ptr(), 4);
  if (PyTuple_GET_ITEM(tag.ptr(), 1) != me.ptr() || !mix || !mine ||
      mine->unsafeGetTensorImpl() != fn.unsafeGetTensorImpl() ||
      !PyLong_Check(fnVersion) || !PyLong_Check(xVersion) ||
      PyLong_AsLongLong(fnVersion) != int64_t(fn._version()) ||
      PyLong_AsLongLong(xVersion) != int64_t(x._version()))
    return std::nullopt;
  return *mix;
}

// The next HyperConnection and its fn, when its mix can be computed here.
std::pair<PyObject *, const Tensor *> successorOf(py::handle module,
                                                  const Tensor &x) {
  const Names &k = names();
  PyObject *self = module.ptr();
  PyObject *next = referent(instanceAttr(self, k.next));
  if (!next || !isString(instanceAttr(next, k.mode), "mhc") ||
      isString(instanceAttr(next, k.backend), "reference"))
    return {nullptr, nullptr};
  for (PyObject *name : {k.n, k.C, k.attrs}) {
    PyObject *mine = instanceAttr(self, name), *theirs = instanceAttr(next, name);
    int same = mine && theirs ? PyObject_RichCompareBool(mine, theirs, Py_EQ) : 0;
    if (same < 0)
      throw py::error_already_set();
    if (!same)
      return {nullptr, nullptr};
  }
  // A plain tensor: e.g. not an FSDP2 DTensor shard of a block not yet
  // gathered.
  const Tensor *fn =
      plainTensor(dictItem(instanceAttr(next, k.parameters), k.fn));
  if (!fn || fn->scalar_type() != at::kFloat ||
      fn->get_device() != x.get_device())
    return {nullptr, nullptr};
  return {next, fn};
}

// Under recomputation, saved_tensors_hooks around the sublayer: its saved
// copy of u becomes a marker (SavedU), rebuilt in the backward from the u
// that post_step's backward recomputed (handed over through `slot`), or by
// one more hc_pre where that one is gone. Other tensors go to the hooks
// installed before (`outer`: (pack, unpack) or None), or are kept as they are.
// The C++ twin of modules.py's _URecompute (the Python steps' version).
struct URecompute {
  URecompute(const Tensor &u, Tensor x, Tensor fn, Tensor scale, Tensor base,
             Tensor mix, Tensor weight, int64_t handle, py::object outer)
      : uData(u.storage().data()), uDtype(u.scalar_type()), x(std::move(x)),
        fn(std::move(fn)), scale(std::move(scale)), base(std::move(base)),
        mix(std::move(mix)), weight(std::move(weight)), handle(handle),
        outer(std::move(outer)) {}

  std::shared_ptr<USlot> slot = std::make_shared<USlot>();
  const void *uData;
  at::ScalarType uDtype;
  Tensor x, fn, scale, base, mix, weight; // weight: the fused norm's, or none
  int64_t handle;
  py::object outer;

  Tensor takeU() {
    if (std::optional<Tensor> u = slot->take())
      return *u;
    const KernelSet &ks = kernelSet(handle);
    return recomputePre(ks, x, mix, fn, scale, base, weight,
                        Grouping::Coefficients)[0];
  }
};

// The hooks are plain CPython functions (METH_O) whose self is a capsule
// holding the URecompute, and the marker a capsule too: pybind11 objects,
// bound methods and argument casting would cost ~1 us per forward and per
// saved tensor on the H200's host.
constexpr const char *kHooksName = "mhc.URecompute";
constexpr const char *kSavedUName = "mhc.SavedU";

struct SavedU {
  std::shared_ptr<URecompute> owner;
  std::vector<int64_t> sizes, strides;
  int64_t offset;
};

template <class T> py::object capsule(T *value, const char *name) {
  PyObject *c = PyCapsule_New(value, name, [](PyObject *self) {
    delete static_cast<T *>(PyCapsule_GetPointer(self, PyCapsule_GetName(self)));
  });
  if (!c) {
    delete value;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(c);
}

template <class T> T &fromCapsule(PyObject *c, const char *name) {
  return *static_cast<T *>(PyCapsule_GetPointer(c, name));
}

py::object packSaved(const std::shared_ptr<URecompute> &self, py::handle t) {
  if (const Tensor *tensor = plainTensor(t.ptr())) {
    if (tensor->has_storage() && tensor->scalar_type() == self->uDtype &&
        !tensor->is_meta() && tensor->storage().data() == self->uData)
      return capsule(new SavedU{self, tensor->sizes().vec(),
                                tensor->strides().vec(),
                                tensor->storage_offset()},
                     kSavedUName);
  }
  if (!self->outer.is_none())
    return py::make_tuple(self->outer[py::int_(0)](t)); // theirs, marked
  return py::reinterpret_borrow<py::object>(t);
}

py::object unpackSaved(const std::shared_ptr<URecompute> &self,
                       py::handle packed) {
  if (PyCapsule_IsValid(packed.ptr(), kSavedUName)) {
    const SavedU &saved = fromCapsule<SavedU>(packed.ptr(), kSavedUName);
    return wrap(saved.owner->takeU().as_strided(saved.sizes, saved.strides,
                                                saved.offset));
  }
  if (PyTuple_Check(packed.ptr()))
    return self->outer[py::int_(1)](packed[py::int_(0)]);
  return py::reinterpret_borrow<py::object>(packed);
}

PyObject *packHook(PyObject *hooks, PyObject *tensor) {
  HANDLE_TH_ERRORS
  auto &self = fromCapsule<std::shared_ptr<URecompute>>(hooks, kHooksName);
  return packSaved(self, tensor).release().ptr();
  END_HANDLE_TH_ERRORS
}

PyObject *unpackHook(PyObject *hooks, PyObject *packed) {
  HANDLE_TH_ERRORS
  auto &self = fromCapsule<std::shared_ptr<URecompute>>(hooks, kHooksName);
  return unpackSaved(self, packed).release().ptr();
  END_HANDLE_TH_ERRORS
}

PyMethodDef packDef{"pack", packHook, METH_O, nullptr};
PyMethodDef unpackDef{"unpack", unpackHook, METH_O, nullptr};

// torch.autograd.graph's saved-tensor hook stack (torch._C._autograd's
// functions, looked up once: they are called on every recomputing forward).
struct HookStack {
  py::handle top, push, pop;
};

const HookStack &hookStack() {
  static const HookStack stack = [] {
    py::module_ autograd = py::module_::import("torch._C._autograd");
    auto get = [&](const char *name) {
      return py::object(autograd.attr(name)).release();
    };
    return HookStack{get("_top_saved_tensors_default_hooks"),
                     get("_push_saved_tensors_default_hooks"),
                     get("_pop_saved_tensors_default_hooks")};
  }();
  return stack;
}

// Pushes `hooks`' pack/unpack as the saved-tensor default hooks for its
// lifetime (as torch.autograd.graph.saved_tensors_hooks does).
class SavedTensorHooksScope {
public:
  explicit SavedTensorHooksScope(std::shared_ptr<URecompute> hooks) {
    py::object self = capsule(
        new std::shared_ptr<URecompute>(std::move(hooks)), kHooksName);
    auto function = [&](PyMethodDef *def) {
      PyObject *f = PyCFunction_New(def, self.ptr());
      if (!f)
        throw py::error_already_set();
      return py::reinterpret_steal<py::object>(f);
    };
    hookStack().push(function(&packDef), function(&unpackDef));
  }
  ~SavedTensorHooksScope() {
    try {
      hookStack().pop();
    } catch (py::error_already_set &e) {
      e.discard_as_unraisable(__func__);
    }
  }
};

// y = sublayer(u, *args, **kwargs), checked (modules.py's _check_output) and
// stored like the stream.
Tensor callSublayer(py::handle module, const Tensor &u, const Tensor &x,
                    py::handle xObj, const std::shared_ptr<URecompute> &hooks,
                    py::tuple args, py::dict kwargs) {
  const Names &k = names();
  PyObject *found = dictItem(instanceAttr(module.ptr(), k.modules), k.sublayer);
  py::object sublayer = found ? py::reinterpret_borrow<py::object>(found)
                              : module.attr(py::handle(k.sublayer));
  py::tuple callArgs(args.size() + 1);
  callArgs[0] = wrap(u);
  for (size_t i = 0; i < args.size(); ++i)
    callArgs[i + 1] = args[i];
  auto call = [&] {
    PyObject *result = PyObject_Call(sublayer.ptr(), callArgs.ptr(), kwargs.ptr());
    if (!result) // taken before the hooks are popped (that runs Python)
      throw py::error_already_set();
    return py::reinterpret_steal<py::object>(result);
  };
  py::object y;
  if (hooks) {
    SavedTensorHooksScope scope(hooks);
    y = call();
  } else {
    y = call();
  }
  if (!THPVariable_Check(y.ptr()) ||
      !THPVariable_Unpack(y.ptr()).sizes().equals(u.sizes())) {
    module.attr(py::handle(k.checkOutput))(y, xObj); // raises the user's error
    TORCH_CHECK_VALUE(false, "HyperConnection: the sublayer's output has the "
                             "wrong shape");
  }
  Tensor out = THPVariable_Unpack(y.ptr());
  if (out.scalar_type() != x.scalar_type())
    out = out.to(x.scalar_type());
  return out.contiguous();
}

// One HyperConnection forward on the C++ path with kernel set `handle`;
// normWeight: the fused pre-norm's weight (undefined: none; the kernel set is
// then that norm eps's).
py::object connectionForward(py::handle module, int64_t handle, py::handle xObj,
                             const Tensor &x, const Tensor &fn,
                             const Tensor &scale, const Tensor &base,
                             const Tensor &normWeight, py::tuple args,
                             py::dict kwargs) {
  const Names &k = names();
  const KernelSet &ks = kernelSet(handle);
  PyObject *self = module.ptr();
  const bool recompute = truthy(instanceAttr(self, k.recompute));
  const bool norm = normWeight.defined();
  // The kernels take the weight in x's dtype (a differentiable cast, as
  // modules.py's).
  const Tensor weight = !norm || normWeight.scalar_type() == x.scalar_type()
                            ? normWeight
                            : normWeight.to(x.scalar_type());
  // Inference tensors have no version counter: no chaining there.
  const bool chain = hasStep(ks, normed(kPreMixed, norm)) &&
                     hasStep(ks, kPostProject) &&
                     !c10::InferenceMode::is_enabled() && !x.is_inference();
  py::object me;
  std::optional<Tensor> mixIn;
  if (chain) {
    me = weakRef(module);
    mixIn = chainedMix(module, me, xObj, x, fn);
  }
  variable_list pre = preStep(x, fn, scale, base, mixIn, handle,
                              /*together=*/!recompute, weight);
  const Tensor &u = pre[0], &post = pre[1], &comb = pre[2], &mix = pre[3],
               &link = pre[4];
  // record_coefficients keeps a copy: comb may share an allocation with u.
  if (truthy(instanceAttr(self, k.recordCoefficients)))
    module.attr(py::handle(k.lastRes)) = wrap(comb.detach().clone());
  std::shared_ptr<URecompute> hooks;
  if (recompute && at::GradMode::is_enabled()) {
    py::object outer = hookStack().top(false);
    hooks = std::make_shared<URecompute>(u, x, fn, scale, base, mix, weight,
                                         handle, std::move(outer));
  }
  Tensor y = callSublayer(module, u, x, xObj, hooks, args, kwargs);
  auto [successor, fnNext] =
      chain ? successorOf(module, x)
            : std::pair<PyObject *, const Tensor *>{nullptr, nullptr};
  std::optional<Tensor> nextFn;
  if (fnNext)
    nextFn = *fnNext;
  variable_list out =
      postStep(y, x, link, post, comb, mix, fn, scale, base, nextFn, handle,
               recompute, hooks ? hooks->slot : nullptr, weight);
  py::object xNext = wrap(out[0]);
  if (chain) {
    py::object tag;
    if (successor)
      tag = py::make_tuple(me, weakRef(successor), wrap(out[1]),
                           int64_t(fnNext->_version()),
                           int64_t(out[0]._version()));
    else
      tag = py::make_tuple(me, py::none(), py::none(), py::none(), py::none());
    if (PyObject_SetAttr(xNext.ptr(), k.chainTag, tag.ptr()) < 0)
      throw py::error_already_set();
  }
  return xNext;
}

// modules.py's _forward_native: the general path, having picked the kernel
// set and checked x and the parameters.
py::object forwardWith(py::handle module, int64_t handle, py::handle xObj,
                       const Tensor &fn, const Tensor &scale,
                       const Tensor &base, const std::optional<Tensor> &weight,
                       py::tuple args, py::dict kwargs) {
  TORCH_CHECK_VALUE(THPVariable_Check(xObj.ptr()),
                    "HyperConnection: x must be a tensor");
  return connectionForward(module, handle, xObj, THPVariable_Unpack(xObj.ptr()),
                           fn, scale, base, weight.value_or(Tensor()), args,
                           kwargs);
}

// The (n, C, Sinkhorn attributes, x's dtype, device, fused norm's eps)
// HyperConnection's general path has run on the C++ path, with their kernel
// set: what forward() takes without Python. Touched only with the GIL held.
struct FastPathKey {
  int64_t n, C, iterations;
  double eps, preEps, postMult;
  at::ScalarType dtype;
  int64_t device;
  double normEps; // 0: no fused norm (a norm's eps is > 0)

  bool operator==(const FastPathKey &o) const {
    return n == o.n && C == o.C && iterations == o.iterations && eps == o.eps &&
           preEps == o.preEps && postMult == o.postMult && dtype == o.dtype &&
           device == o.device && normEps == o.normEps;
  }
};
std::vector<std::pair<FastPathKey, int64_t>> fastPath; // key -> kernel set

// The kernel set handle of `key`'s entry, or nullptr.
int64_t *fastPathHandle(const FastPathKey &key) {
  for (auto &[k, handle] : fastPath)
    if (k == key)
      return &handle;
  return nullptr;
}

void enableFastPath(int64_t n, int64_t C, int64_t iterations, double eps,
                    double preEps, double postMult, const std::string &dtype,
                    int64_t device, int64_t handle, double normEps) {
  kernelSet(handle); // checks the handle
  FastPathKey key{n,      C,        iterations,        eps,
                  preEps, postMult, scalarType(dtype), device,
                  normEps};
  if (int64_t *known = fastPathHandle(key))
    *known = handle;
  else
    fastPath.emplace_back(key, handle);
}

void clearFastPath() { fastPath.clear(); }

// nn.RMSNorm's eps for x's dtype where eps is None (torch.finfo(dtype).eps).
double dtypeEpsilon(at::ScalarType t) {
  switch (t) {
  case at::kBFloat16:
    return double(std::numeric_limits<c10::BFloat16>::epsilon());
  case at::kHalf:
    return double(std::numeric_limits<c10::Half>::epsilon());
  case at::kFloat:
    return double(std::numeric_limits<float>::epsilon());
  default:
    return double(std::numeric_limits<double>::epsilon());
  }
}

// The module's pre-norm as the fast path runs it: {nullptr, 0} for none;
// for one mhc's kernels compute (modules.py's _fused_norm_module: exactly an
// nn.RMSNorm over (C,) with a plain-tensor weight) its weight and eps for x's
// dtype; {nullptr, -1} for any other (the general path runs it).
std::pair<const Tensor *, double> fusedNormOf(PyObject *self, int64_t C,
                                              at::ScalarType dtype) {
  const Names &k = names();
  PyObject *norm = dictItem(instanceAttr(self, k.modules), k.norm);
  if (!norm) // not a submodule: the plain attribute, None
    norm = instanceAttr(self, k.norm);
  if (!norm || norm == Py_None)
    return {nullptr, 0.0};
  const std::pair<const Tensor *, double> other{nullptr, -1.0};
  if (Py_TYPE(norm) != reinterpret_cast<PyTypeObject *>(k.rmsNormType))
    return other;
  const Tensor *weight =
      plainTensor(dictItem(instanceAttr(norm, k.parameters), k.weight));
  PyObject *shape = instanceAttr(norm, k.normalizedShape);
  PyObject *eps = instanceAttr(norm, k.eps);
  if (!weight || !shape || !PyTuple_Check(shape) ||
      PyTuple_GET_SIZE(shape) != 1 ||
      !PyLong_Check(PyTuple_GET_ITEM(shape, 0)) ||
      PyLong_AsLongLong(PyTuple_GET_ITEM(shape, 0)) != C || !eps)
    return other;
  if (eps == Py_None)
    return {weight, dtypeEpsilon(dtype)};
  const double value = PyFloat_AsDouble(eps);
  if (PyErr_Occurred()) {
    PyErr_Clear();
    return other;
  }
  return {weight, value};
}

// HyperConnection.forward's fast path: the step on the C++ path when this
// module's (n, C, attributes, fused norm's eps) with x's dtype and device have
// an entry and x and the parameters are as the kernels want them (x a
// contiguous [..., n, C] plain tensor, f32 plain-tensor parameters); None
// otherwise (the general path then checks x and picks the backend).
py::object fastForward(py::handle module, py::handle xObj, py::tuple args,
                       py::dict kwargs) {
  const Names &k = names();
  PyObject *self = module.ptr();
  const Tensor *x = plainTensor(xObj.ptr());
  PyObject *n = instanceAttr(self, k.n), *C = instanceAttr(self, k.C);
  PyObject *attrs = instanceAttr(self, k.attrs);
  if (fastPath.empty() || !x || !isString(instanceAttr(self, k.mode), "mhc") ||
      isString(instanceAttr(self, k.backend), "reference") || !n ||
      !PyLong_Check(n) || !C || !PyLong_Check(C) || !attrs ||
      !PyTuple_Check(attrs) || PyTuple_GET_SIZE(attrs) != 4 ||
      x->dim() < 2 || !x->is_contiguous())
    return py::none();
  const int64_t nv = PyLong_AsLongLong(n), Cv = PyLong_AsLongLong(C);
  if (x->size(-1) != Cv || x->size(-2) != nv)
    return py::none();
  PyObject *iterations = PyTuple_GET_ITEM(attrs, 0);
  if (!PyLong_Check(iterations))
    return py::none();
  const int64_t it = PyLong_AsLongLong(iterations);
  const double eps = PyFloat_AsDouble(PyTuple_GET_ITEM(attrs, 1));
  const double preEps = PyFloat_AsDouble(PyTuple_GET_ITEM(attrs, 2));
  const double postMult = PyFloat_AsDouble(PyTuple_GET_ITEM(attrs, 3));
  if (PyErr_Occurred()) {
    PyErr_Clear();
    return py::none();
  }
  auto [weight, normEps] = fusedNormOf(self, Cv, x->scalar_type());
  if (normEps < 0)
    return py::none();
  const int64_t *handle =
      fastPathHandle({nv, Cv, it, eps, preEps, postMult, x->scalar_type(),
                      x->get_device(), normEps});
  PyObject *params = instanceAttr(self, k.parameters);
  const Tensor *fn = plainTensor(dictItem(params, k.fn));
  const Tensor *scale = plainTensor(dictItem(params, k.scale));
  const Tensor *base = plainTensor(dictItem(params, k.base));
  if (!handle || !fn || !scale || !base || fn->scalar_type() != at::kFloat ||
      scale->scalar_type() != at::kFloat || base->scalar_type() != at::kFloat)
    return py::none();
  // Owned references: the sublayer (Python) runs before the parameters' last
  // use and could replace them in the module.
  const Tensor fnRef = *fn, scaleRef = *scale, baseRef = *base;
  const Tensor weightRef = weight ? *weight : Tensor();
  return connectionForward(module, *handle, xObj, *x, fnRef, scaleRef, baseRef,
                           weightRef, args, kwargs);
}

//===----------------------------------------------------------------------===//
// The torch.ops.mhc ops' dispatcher kernels (install_ops)
//
// The ops are defined in Python (mhc/torch/ops.py, torch.library.custom_op),
// whose implementation costs tens of us of host time per call: the custom-op
// wrapper's Python kernels (autograd, backend), the Python checks and the
// launch glue. Under torch.compile every op of a graph is called that way
// (eager HyperConnection skips the dispatcher). install_ops registers two
// kernels per op for one device's dispatch key and its autograd key:
//
//   * the backend kernel: runOp (its checks, PyTorch's allocator, the current
//     stream) on the kernel set that `resolve` (Python, once per op, shape,
//     dtype, device and attributes) names; the op's Python implementation
//     where resolve says -1 (the set has no kernels for the op: the
//     reference or composed fall-backs of ops.py) or where the call is
//     unusual (x not a [..., n, C] tensor of a kernel dtype, attributes out
//     of range: the Python checks then say what is wrong);
//   * the autograd kernel: straight to the backend, below autograd, when no
//     gradient is recorded (a compiled graph's calls, no_grad); else the
//     custom op's own Python autograd kernel (its registered formula).
//
// The Python kernels are taken from the dispatcher before the C++ ones hide
// them (c10::SafeKernelFunction, PyTorch 2.9 and later). uninstall_ops
// removes the C++ kernels; set_dispatch_enabled(false) makes them call the
// Python ones (native.python_path()).
//===----------------------------------------------------------------------===//

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#define MHC_DISPATCH_KERNELS 1
#endif

// What picks an op call's kernel set (kernels.for_call's key).
struct CallKey {
  int op;
  int64_t n, C, device;
  at::ScalarType dtype;
  int attributes; // 0, 4 (iterations, eps, pre_eps, post_mult), 5 (+ norm_eps)
  int64_t iterations;
  double eps, preEps, postMult, normEps;

  bool operator==(const CallKey &o) const {
    return op == o.op && n == o.n && C == o.C && device == o.device &&
           dtype == o.dtype && attributes == o.attributes &&
           iterations == o.iterations && eps == o.eps && preEps == o.preEps &&
           postMult == o.postMult && normEps == o.normEps;
  }
};

// One install_ops: its key's two libraries of kernels and its resolve
// function (owned). Freed only by uninstall_ops, never at exit (the
// dispatcher and the interpreter may be gone by then).
struct Installed {
  c10::DispatchKey key;
  torch::Library *backend, *autograd;
  PyObject *resolve;
};

struct Dispatch {
  std::mutex mutex; // guards bindings (calls may come from any thread)
  std::vector<std::pair<CallKey, int64_t>> bindings; // -> handle, -1: Python
  std::atomic<bool> enabled{true};
  std::vector<Installed> installed; // touched with the GIL held
};

Dispatch &dispatch() {
  static Dispatch *state = new Dispatch;
  return *state;
}

void forgetBindings() {
  std::lock_guard<std::mutex> lock(dispatch().mutex);
  dispatch().bindings.clear();
}

#ifdef MHC_DISPATCH_KERNELS

bool isKernelDtype(at::ScalarType t) {
  return t == at::kBFloat16 || t == at::kHalf || t == at::kFloat;
}

// The kernel set handle for this call, or -1: run the Python implementation.
int64_t boundSet(int op, int attributes, PyObject *resolve,
                 c10::ArrayRef<c10::IValue> args) {
  const Signature &sig = signatures()[size_t(op)];
  const c10::IValue &xValue = args[size_t(sig.xIndex)];
  if (!dispatch().enabled || !xValue.isTensor())
    return -1;
  const Tensor &x = xValue.toTensor();
  if (!x.defined() || x.dim() < 2 || !isKernelDtype(x.scalar_type()))
    return -1;
  CallKey key{op, x.size(-2), x.size(-1), x.get_device(), x.scalar_type(),
              attributes, 0, 0, 0, 0, 0};
  if (attributes) {
    // (iterations, eps, pre_eps, post_mult[, norm_eps]): the last arguments.
    const size_t a = args.size() - size_t(attributes);
    if (!args[a].isInt() || !args[a + 1].isDouble() ||
        !args[a + 2].isDouble() || !args[a + 3].isDouble())
      return -1;
    key.iterations = args[a].toInt();
    key.eps = args[a + 1].toDouble();
    key.preEps = args[a + 2].toDouble();
    key.postMult = args[a + 3].toDouble();
    if (!(key.iterations >= 1 && key.eps >= 0 && key.preEps >= 0 &&
          key.postMult > 0))
      return -1;
    if (attributes == 5) {
      if (!args[a + 4].isDouble())
        return -1;
      key.normEps = args[a + 4].toDouble();
      if (!(key.normEps > 0 && std::isfinite(key.normEps)))
        return -1;
    }
  }
  {
    std::lock_guard<std::mutex> lock(dispatch().mutex);
    for (const auto &[k, handle] : dispatch().bindings)
      if (k == key)
        return handle;
  }
  // The first call of this op and shape: ask Python (which may load or
  // compile the kernel set) and remember.
  py::gil_scoped_acquire gil;
  py::object given = py::none();
  if (attributes == 4)
    given = py::make_tuple(key.iterations, key.eps, key.preEps, key.postMult);
  else if (attributes == 5)
    given = py::make_tuple(key.iterations, key.eps, key.preEps, key.postMult,
                           key.normEps);
  py::object answer =
      py::reinterpret_borrow<py::object>(resolve)(sig.name, x, given);
  const int64_t handle = answer.cast<int64_t>();
  if (handle >= 0)
    kernelSet(handle); // checks the handle
  std::lock_guard<std::mutex> lock(dispatch().mutex);
  dispatch().bindings.emplace_back(key, handle);
  return handle;
}

class BackendKernel final : public c10::OperatorKernel {
public:
  BackendKernel(int op, int attributes, PyObject *resolve,
                c10::SafeKernelFunction python)
      : op_(op), attributes_(attributes), resolve_(resolve),
        python_(std::move(python)) {}

  void operator()(const c10::OperatorHandle &handle, c10::DispatchKeySet keys,
                  torch::jit::Stack *stack) {
    const size_t count = handle.schema().arguments().size();
    c10::ArrayRef<c10::IValue> args = torch::jit::last(*stack, count);
    const int64_t set = boundSet(op_, attributes_, resolve_, args);
    if (set < 0) {
      python_.callBoxed(handle, keys, stack);
      return;
    }
    const size_t numTensors = signatures()[size_t(op_)].args.size();
    c10::SmallVector<Tensor, 16> tensors;
    for (size_t i = 0; i < numTensors; ++i)
      tensors.push_back(args[i].toTensor());
    std::vector<Tensor> results = runOp(kernelSet(set), op_, tensors);
    torch::jit::drop(*stack, count);
    for (Tensor &r : results)
      torch::jit::push(*stack, std::move(r));
  }

private:
  int op_;
  int attributes_;
  PyObject *resolve_; // the install's, alive as long as this kernel
  c10::SafeKernelFunction python_;
};

class AutogradKernel final : public c10::OperatorKernel {
public:
  explicit AutogradKernel(c10::SafeKernelFunction python)
      : python_(std::move(python)) {}

  void operator()(const c10::OperatorHandle &handle, c10::DispatchKeySet keys,
                  torch::jit::Stack *stack) {
    if (dispatch().enabled && !recordsGradient(handle, *stack)) {
      at::AutoDispatchBelowAutograd below;
      handle.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
      return;
    }
    python_.callBoxed(handle, keys, stack);
  }

private:
  static bool recordsGradient(const c10::OperatorHandle &handle,
                              const torch::jit::Stack &stack) {
    if (!at::GradMode::is_enabled())
      return false;
    for (const c10::IValue &v :
         torch::jit::last(stack, handle.schema().arguments().size()))
      if (v.isTensor() && v.toTensor().requires_grad())
        return true;
    return false;
  }

  c10::SafeKernelFunction python_;
};

#endif // MHC_DISPATCH_KERNELS

// Removes the C++ kernels of `keyName` (the Python ones are back).
void uninstallOps(const std::string &keyName) {
  const c10::DispatchKey backend = c10::parseDispatchKey(keyName);
  auto &installed = dispatch().installed;
  for (auto it = installed.begin(); it != installed.end(); ++it)
    if (it->key == backend) {
      delete it->backend; // deregisters the kernels before resolve goes
      delete it->autograd;
      Py_DECREF(it->resolve);
      installed.erase(it);
      break;
    }
  forgetBindings();
}

// Registers the C++ kernels of the mhc ops (kStepOpNames: the ops of
// ops.py, which must be defined) for dispatch key `keyName` ("CUDA"; the
// tests use "CPU") and its autograd key, replacing an earlier install for
// that key. `resolve(op, x, attributes or None)` names an op call's kernel
// set handle (-1: the Python implementation). False where this PyTorch is
// too old (the Python kernels then stay).
bool installOps(const std::string &keyName, py::object resolve) {
#ifndef MHC_DISPATCH_KERNELS
  (void)keyName;
  (void)resolve;
  return false;
#else
  TORCH_CHECK(!signatures().empty(), "mhc native: set_signatures first");
  uninstallOps(keyName);
  const c10::DispatchKey backend = c10::parseDispatchKey(keyName);
  const c10::DispatchKey autograd =
      c10::getAutogradKeyFromBackend(c10::toBackendComponent(backend));
  auto backendLibrary = std::make_unique<torch::Library>(
      torch::Library::IMPL, "mhc", backend, __FILE__, __LINE__);
  auto autogradLibrary = std::make_unique<torch::Library>(
      torch::Library::IMPL, "mhc", autograd, __FILE__, __LINE__);
  PyObject *function = resolve.ptr();
  for (const char *name : kStepOpNames) {
    auto handle = c10::Dispatcher::singleton().findOp(
        {std::string("mhc::") + name, ""});
    TORCH_CHECK(handle, "mhc native: torch.ops.mhc.", name,
                " is not defined (import mhc.torch.ops first)");
    const int op = opIndex(name);
    // The arguments after the tensors: none, the Sinkhorn attributes, or
    // those and norm_eps.
    const int attributes = int(handle->schema().arguments().size() -
                               signatures()[size_t(op)].args.size());
    TORCH_CHECK(attributes == 0 || attributes == 4 || attributes == 5,
                "mhc native: torch.ops.mhc.", name, " has ", attributes,
                " arguments after its tensors");
    backendLibrary->impl(
        name, torch::CppFunction::makeFromBoxedFunctor(
                  std::make_unique<BackendKernel>(
                      op, attributes, function,
                      handle->getComputedKernelForDispatchKey(backend))));
    autogradLibrary->impl(
        name, torch::CppFunction::makeFromBoxedFunctor(
                  std::make_unique<AutogradKernel>(
                      handle->getComputedKernelForDispatchKey(autograd))));
  }
  dispatch().installed.push_back({backend, backendLibrary.release(),
                                  autogradLibrary.release(),
                                  resolve.release().ptr()});
  return true;
#endif
}

bool builtWithCuda() {
#ifdef MHC_NATIVE_CUDA
  return true;
#else
  return false;
#endif
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mhc.torch's C++ launch path and HyperConnection autograd steps "
            "(mhc/torch/native.py)";
  m.def("set_signatures", &setSignatures);
  m.def("new_kernel_set", &newKernelSet);
  m.def("add_op", &addOp);
  m.def("run_op", &runOpByName);
  // weight: the fused pre-norm's (None: none).
  m.def(
      "pre_step",
      [](const Tensor &x, const Tensor &fn, const Tensor &scale,
         const Tensor &base, const std::optional<Tensor> &mix, int64_t handle,
         bool together, const std::optional<Tensor> &weight) {
        return preStep(x, fn, scale, base, mix, handle, together,
                       weight.value_or(Tensor()));
      },
      py::arg("x"), py::arg("fn"), py::arg("scale"), py::arg("base"),
      py::arg("mix"), py::arg("handle"), py::arg("together"),
      py::arg("weight") = py::none());
  m.def(
      "post_step",
      [](const Tensor &y, const Tensor &x, const Tensor &link,
         const Tensor &post, const Tensor &comb, const Tensor &mix,
         const Tensor &fn, const Tensor &scale, const Tensor &base,
         const std::optional<Tensor> &fnNext, int64_t handle, bool recompute,
         const std::shared_ptr<USlot> &uSlot,
         const std::optional<Tensor> &weight) {
        return postStep(y, x, link, post, comb, mix, fn, scale, base, fnNext,
                        handle, recompute, uSlot, weight.value_or(Tensor()));
      },
      py::arg("y"), py::arg("x"), py::arg("link"), py::arg("post"),
      py::arg("comb"), py::arg("mix"), py::arg("fn"), py::arg("scale"),
      py::arg("base"), py::arg("fn_next"), py::arg("handle"),
      py::arg("recompute"), py::arg("u_slot"), py::arg("weight") = py::none());
  m.def("built_with_cuda", &builtWithCuda);
  m.def("install_ops", &installOps);
  m.def("uninstall_ops", &uninstallOps);
  m.def("forget_bindings", &forgetBindings);
  m.def("set_dispatch_enabled", [](bool on) { dispatch().enabled = on; });
  m.def("forward", &fastForward);
  m.def("forward_with", &forwardWith);
  m.def("enable_fast_path", &enableFastPath, py::arg("n"), py::arg("C"),
        py::arg("iterations"), py::arg("eps"), py::arg("pre_eps"),
        py::arg("post_mult"), py::arg("dtype"), py::arg("device"),
        py::arg("handle"), py::arg("norm_eps") = 0.0);
  m.def("clear_fast_path", &clearFastPath);
  m.def("set_fold_dy", [](bool on) { eagerFoldOn = on; });
  m.def("fold_dy", [] { return eagerFoldOn.load(); });
  m.def("folded_steps", [] { return foldedSteps.load(); });
  py::class_<USlot, std::shared_ptr<USlot>>(m, "USlot")
      .def(py::init<>())
      .def("take", &USlot::take);
}
