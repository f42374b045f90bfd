//===- native.cpp - mhc.torch's C++ launch path and autograd steps --------===//
//
// Built against the user's PyTorch by mhc/torch/native.py (torch's
// cpp_extension, on first use), so it lives beside the Python package, not
// under lib/: a prebuilt library would have to match PyTorch's C++ ABI exactly.
//
// Two things, both the C++ twins of Python code, to cut host time per call:
//
//   * run_op: one op of a kernel set (kernels.py's _OpPlan.run): check the
//     arguments, allocate results and scratch with PyTorch's caching allocator,
//     launch each kernel through the runtime's mhcLaunchFlat on PyTorch's
//     current stream;
//   * pre_step / post_step: HyperConnection's two autograd functions
//     (modules.py's _PreStep / _PostStep, same wiring: the dx link and the
//     recomputation), as torch::autograd::Function so that neither the
//     forward nor the backward runs Python; and the chain of consecutive
//     HyperConnections (post_step computing the next sublayer's mix).
//
// The ops' buffers, shapes and dtypes come from kernels.py (set_signatures,
// once at load), the one table of them. Kernel sets are registered once
// (add_op) and named by an integer handle;
// they are never freed (the Python side keeps its kernel sets for the
// process's life too).
//
//===----------------------------------------------------------------------===//

#include <torch/extension.h>

#ifdef MHC_NATIVE_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

//===----------------------------------------------------------------------===//
// Op signatures: kernels.OP_BUFFERS with kernels.BUFFER_LAYOUT's shape and
// dtype of each buffer, handed over once by native.py (set_signatures)
//===----------------------------------------------------------------------===//

// Shapes relative to x [lead..., n, C]: the stream (X), a channel row (Y), the
// coefficients (P, CB, MIX) and the parameters (FN, SC, B).
enum class Shape { X, Y, P, CB, MIX, FN, SC, B };
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
  kNumStepOps
};
constexpr const char *kStepOpNames[kNumStepOps] = {
    "hc_pre",          "hc_post",      "hc_post_backward",
    "hc_pre_backward", "hc_pre_mixed", "hc_post_project"};

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
      {"SC", Shape::SC}, {"B", Shape::B}};
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
// zero-fill.
void addOp(
    int64_t handle, const std::string &name,
    const std::vector<
        std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                   int64_t, int64_t, int64_t, std::vector<int64_t>>> &launches,
    const std::vector<std::tuple<std::vector<int64_t>, std::string, bool>>
        &scratch,
    const std::vector<int64_t> &zeroResults) {
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
  ks.ops[size_t(opIndex(name))] = std::move(plan);
}

//===----------------------------------------------------------------------===//
// Running one op
//===----------------------------------------------------------------------===//

std::vector<int64_t> shapeOf(Shape s, c10::IntArrayRef lead,
                             const KernelSet &ks) {
  std::vector<int64_t> shape(lead.begin(), lead.end());
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
    return {ks.M, ks.n * ks.C};
  case Shape::SC:
    return {3};
  case Shape::B:
    return {ks.M};
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
  auto expected = shapeOf(b.shape, lead, ks);
  TORCH_CHECK_VALUE(t.sizes().equals(expected), "mhc::", sig.name, ": ", b.name,
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
};

bool isCoefficient(const Buffer &b) {
  return b.dtype == Dt::F &&
         (b.shape == Shape::P || b.shape == Shape::CB || b.shape == Shape::MIX);
}

// The buffers `shapes`/`dtypes` (zero-filled where `zero`), buffer i in
// allocation group[i]: a group of one is a plain at::empty, a larger one is
// one allocation with each buffer at a 256-byte aligned offset.
std::vector<Tensor> allocate(const Tensor &x,
                             const std::vector<std::vector<int64_t>> &shapes,
                             const std::vector<at::ScalarType> &dtypes,
                             const std::vector<bool> &zero,
                             const std::vector<int> &group) {
  constexpr int64_t kAlign = 256;
  const size_t count = shapes.size();
  const size_t groups =
      count ? size_t(*std::max_element(group.begin(), group.end())) + 1 : 0;
  std::vector<int64_t> offset(count), groupBytes(groups, 0), members(groups, 0);
  for (size_t i = 0; i < count; ++i) {
    int64_t bytes = int64_t(c10::elementSize(dtypes[i]));
    for (int64_t d : shapes[i])
      bytes *= d;
    size_t g = size_t(group[i]);
    offset[i] = groupBytes[g];
    groupBytes[g] += (bytes + kAlign - 1) / kAlign * kAlign;
    ++members[g];
  }
  std::vector<Tensor> blocks(groups), out(count);
  for (size_t i = 0; i < count; ++i) {
    size_t g = size_t(group[i]);
    if (members[g] == 1) {
      auto options = x.options().dtype(dtypes[i]);
      out[i] = zero[i] ? at::zeros(shapes[i], options)
                       : at::empty(shapes[i], options);
      continue;
    }
    if (!blocks[g].defined())
      blocks[g] = at::empty({groupBytes[g]}, x.options().dtype(at::kByte));
    out[i] = pieceOf(blocks[g], offset[i], shapes[i], dtypes[i]);
    if (zero[i])
      out[i].zero_();
  }
  return out;
}

// One op: checks its arguments, allocates its results (grouped as asked)
// and its scratch (in one allocation: it dies with the call), launches its
// kernels on PyTorch's current stream.
std::vector<Tensor> runOp(const KernelSet &ks, int op,
                          const std::vector<Tensor> &args,
                          Grouping grouping = Grouping::Separate) {
  const Signature &sig = signatures()[size_t(op)];
  const OpPlan *plan = ks.ops[size_t(op)].get();
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
  std::vector<std::vector<int64_t>> shapes;
  std::vector<at::ScalarType> dtypes;
  std::vector<int> group;
  for (const Buffer &b : sig.results) {
    shapes.push_back(shapeOf(b.shape, lead, ks));
    dtypes.push_back(dtypeOf(b.dtype, ks));
    bool shared = grouping == Grouping::All ||
                  (grouping == Grouping::Coefficients && isCoefficient(b));
    // the shared group's number: one past every result's own
    group.push_back(shared ? int(sig.results.size()) : int(group.size()));
  }
  std::vector<Tensor> results =
      allocate(x, shapes, dtypes, plan->zeroResults, group);
  std::vector<std::vector<int64_t>> scratchShapes;
  std::vector<at::ScalarType> scratchDtypes;
  std::vector<bool> scratchZero;
  for (const Scratch &s : plan->scratch) {
    int64_t numel = 1;
    for (int64_t d : s.dims)
      numel *= d >= 0    ? d
               : d == -1 ? T
                         : std::max((T - d - 2) / (-d - 1), int64_t(1));
    scratchShapes.push_back({numel});
    scratchDtypes.push_back(s.dtype.value_or(ks.dtype));
    scratchZero.push_back(s.zero);
  }
  std::vector<Tensor> scratch =
      allocate(x, scratchShapes, scratchDtypes, scratchZero,
               std::vector<int>(scratchShapes.size(), 0));
  std::vector<Tensor> buffers(args.begin(), args.end());
  buffers.insert(buffers.end(), results.begin(), results.end());
  buffers.insert(buffers.end(), scratch.begin(), scratch.end());

  void *stream = currentStream(x);
  std::array<void *, kMaxBuffers> ptrs;
  std::array<int64_t, kMaxBuffers> numels;
  for (const Launch &l : plan->launches) {
    for (size_t i = 0; i < l.buffers.size(); ++i) {
      const Tensor &t = buffers[size_t(l.buffers[i])];
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
  return results;
}

// runOp of one of the ops the autograd steps launch.
std::vector<Tensor> runStep(const KernelSet &ks, Op op,
                            const std::vector<Tensor> &args,
                            Grouping grouping = Grouping::Coefficients) {
  return runOp(ks, stepOps[size_t(op)], args, grouping);
}

std::vector<Tensor> runOpByName(int64_t handle, const std::string &name,
                                const std::vector<Tensor> &args) {
  return runOp(kernelSet(handle), opIndex(name), args);
}

//===----------------------------------------------------------------------===//
// Recomputed u, handed from post_step's backward to the sublayer's saved-tensor
// hook (modules.py's _URecompute). A slot lives as long as its Python owner,
// which the sublayer's saved tensors keep alive until its backward is done.
//===----------------------------------------------------------------------===//

std::mutex slotsMutex;
std::unordered_map<int64_t, Tensor> slots;
int64_t nextSlot = 1;

struct USlot {
  int64_t id;
  USlot() {
    std::lock_guard<std::mutex> lock(slotsMutex);
    id = nextSlot++;
    slots.emplace(id, Tensor());
  }
  ~USlot() {
    std::lock_guard<std::mutex> lock(slotsMutex);
    slots.erase(id);
  }
  // The recomputed u, once; None when there is none (the hook recomputes).
  std::optional<Tensor> take() {
    std::lock_guard<std::mutex> lock(slotsMutex);
    auto it = slots.find(id);
    if (it == slots.end() || !it->second.defined())
      return std::nullopt;
    Tensor u = std::move(it->second);
    it->second = Tensor();
    return u;
  }
};

void putRecomputedU(int64_t id, const Tensor &u) {
  std::lock_guard<std::mutex> lock(slotsMutex);
  auto it = slots.find(id);
  if (it != slots.end()) // gone: nobody will read it
    it->second = u;
}

//===----------------------------------------------------------------------===//
// HyperConnection's autograd steps (modules.py's _PreStep / _PostStep)
//===----------------------------------------------------------------------===//

struct PreStep : torch::autograd::Function<PreStep> {
  // mixIn: the mix the previous sublayer's post_step computed for this one
  // (hc_pre_mixed); none: this step computes it (hc_pre). together: all
  // results in one allocation (without recomputation they live until the
  // backward anyway: post_step saves post/comb, the sublayer u; with it, u
  // must be free to go).
  static variable_list forward(AutogradContext *ctx, const Tensor &x,
                               const Tensor &fn, const Tensor &scale,
                               const Tensor &base,
                               const std::optional<Tensor> &mixIn,
                               int64_t handle, bool together) {
    const KernelSet &ks = kernelSet(handle);
    auto grouping = together ? Grouping::All : Grouping::Coefficients;
    Tensor u, post, comb, mix;
    if (mixIn) {
      auto r = runStep(ks, kPreMixed, {x, *mixIn, scale, base}, grouping);
      u = r[0], post = r[1], comb = r[2], mix = *mixIn;
    } else {
      auto r = runStep(ks, kPre, {x, fn, scale, base}, grouping);
      u = r[0], post = r[1], comb = r[2], mix = r[3];
    }
    ctx->save_for_backward({x, fn, scale, base, mix});
    ctx->saved_data["ks"] = handle;
    ctx->mark_non_differentiable({mix});
    ctx->set_materialize_grads(false);
    // The link: x's shape and dtype, all strides 0, over mix's first element
    // (no allocation: nothing ever reads it); its only job is to carry
    // dx_next from post_step's backward to this step's backward.
    std::vector<int64_t> zeroStrides(size_t(x.dim()), 0);
    Tensor link = pieceOf(mix, mix.storage_offset() * int64_t(mix.itemsize()),
                          x.sizes(), x.scalar_type(), zeroStrides);
    return {u, post, comb, mix, link};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &mix = saved[4];
    const KernelSet &ks = kernelSet(ctx->saved_data["ks"].toInt());
    auto lead = x.sizes().slice(0, size_t(x.dim() - 2));
    auto orZeros = [&](const Tensor &g, Shape s, at::ScalarType dt) {
      return g.defined()
                 ? g.contiguous()
                 : at::zeros(shapeOf(s, lead, ks), x.options().dtype(dt));
    };
    Tensor du = orZeros(grads[0], Shape::Y, x.scalar_type());
    Tensor dpost = orZeros(grads[1], Shape::P, mix.scalar_type());
    Tensor dcomb = orZeros(grads[2], Shape::CB, mix.scalar_type());
    Tensor dxNext = orZeros(grads[4], Shape::X, x.scalar_type());
    // The same backward whichever kernel computed the mix: it is the
    // norm_project of x with fn either way, and hc_pre_backward differentiates
    // through it.
    auto r =
        runStep(ks, kPreBackward,
              {x, saved[1], saved[2], saved[3], mix, du, dpost, dcomb, dxNext});
    return {r[0], r[1], r[2], r[3], Tensor(), Tensor(), Tensor()};
  }
};

struct PostStep : torch::autograd::Function<PostStep> {
  // fnNext: the next sublayer's fn; given, the step also returns that
  // sublayer's mix (hc_post_project), which the next pre_step then takes.
  // recompute: 0 saves post/comb; otherwise they are recomputed in the
  // backward (with the kernel the forward's pre_step used: preMixed), and
  // uSlot (0: none) receives the recomputed u.
  static variable_list
  forward(AutogradContext *ctx, const Tensor &y, const Tensor &x,
          const Tensor &link, const Tensor &post, const Tensor &comb,
          const Tensor &mix, const Tensor &fn, const Tensor &scale,
          const Tensor &base, const std::optional<Tensor> &fnNext,
          int64_t handle, bool preMixed, bool recompute, int64_t uSlot) {
    (void)link;
    const KernelSet &ks = kernelSet(handle);
    variable_list out;
    if (fnNext) {
      // x_next and mix_next in one allocation: the next sublayer's pre_step
      // saves both.
      auto r = runStep(ks, kPostProject, {y, x, post, comb, *fnNext},
                       Grouping::All);
      ctx->mark_non_differentiable(
          {r[1]}); // the next pre_step's input, not trained
      out = {r[0], r[1]};
    } else {
      out = {runStep(ks, kPost, {y, x, post, comb})[0]};
    }
    ctx->saved_data["ks"] = handle;
    ctx->saved_data["slot"] = recompute ? uSlot : int64_t(-1);
    ctx->saved_data["mixed"] = preMixed;
    ctx->set_materialize_grads(false);
    if (!recompute)
      ctx->save_for_backward({y, x, post, comb});
    else // x, mix, fn, scale, base are pre_step's saved tensors: no extra
         // memory
      ctx->save_for_backward({y, x, mix, fn, scale, base});
    return out;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const KernelSet &ks = kernelSet(ctx->saved_data["ks"].toInt());
    int64_t slot = ctx->saved_data["slot"].toInt();
    const Tensor &y = saved[0], &x = saved[1];
    Tensor post, comb;
    if (slot < 0) {
      post = saved[2];
      comb = saved[3];
    } else {
      auto r = ctx->saved_data["mixed"].toBool()
                   ? runStep(ks, kPreMixed, {x, saved[2], saved[4], saved[5]})
                   : runStep(ks, kPre, {x, saved[3], saved[4], saved[5]});
      post = r[1];
      comb = r[2];
      if (slot > 0)
        putRecomputedU(slot, r[0]); // the sublayer's backward, next, reads it
    }
    Tensor dxNext =
        grads[0].defined() ? grads[0].contiguous() : at::zeros_like(x);
    auto r = runStep(ks, kPostBackward, {y, x, post, comb, dxNext});
    // No gradient for x here: dx_next goes through the link to pre_step,
    // which computes all of dx. None for fnNext either: the next sublayer's
    // backward computes its fn's whole gradient from the mix it was given.
    return {r[0],     Tensor(), dxNext,   r[1],     r[2],
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

variable_list preStep(const Tensor &x, const Tensor &fn, const Tensor &scale,
                      const Tensor &base, const std::optional<Tensor> &mixIn,
                      int64_t handle, bool together) {
  return PreStep::apply(x, fn, scale, base, mixIn, handle, together);
}

variable_list postStep(const Tensor &y, const Tensor &x, const Tensor &link,
                       const Tensor &post, const Tensor &comb,
                       const Tensor &mix, const Tensor &fn, const Tensor &scale,
                       const Tensor &base, const std::optional<Tensor> &fnNext,
                       int64_t handle, bool preMixed, bool recompute,
                       int64_t uSlot) {
  return PostStep::apply(y, x, link, post, comb, mix, fn, scale, base, fnNext,
                         handle, preMixed, recompute, uSlot);
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
  m.def("pre_step", &preStep);
  m.def("post_step", &postStep);
  m.def("built_with_cuda", &builtWithCuda);
  py::class_<USlot>(m, "USlot")
      .def(py::init<>())
      .def_readonly("id", &USlot::id)
      .def("take", &USlot::take);
}
