//===- KernelGroup.h - kernel groups, schedules and kernel families -*- C++ -*-//
//
// The lowering's planning vocabulary:
//
//  * KernelGroup: the mhc ops one `mhc.fused` (or a lone mhc op) holds and
//    the values that cross its boundary (kernel inputs and outputs);
//  * Schedule: the plain form of #mhc.schedule (tile, chunk, threads, ...);
//  * KernelFamily: one way of turning groups into kernels (legality, default
//    schedule, schedule checks, kernel + host code). Every family is listed
//    once in kernelFamilies() (KernelFamilies.cpp): adding a kernel kind is a
//    new file with a KernelFamily and one line there.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_LIB_CONVERSION_MHCTOGPU_KERNELGROUP_H
#define MHC_LIB_CONVERSION_MHCTOGPU_KERNELGROUP_H

#include "mhc/Dialect/MHC/IR/MHCAttrs.h"
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"

namespace mlir::mhc::gpu_kernels {

/// The mhc ops of one kernel group and the values crossing its boundary.
struct KernelGroup {
  Operation *root = nullptr;       // the mhc.fused, or a lone mhc op
  SmallVector<Operation *> members; // in program order
  SmallVector<Value> inputs;        // external operands, first-use order
  SmallVector<Value> outputs;       // member results written to memory
  SmallVector<Value> replaced;      // root results, parallel to outputs

  /// Collects the members and the boundary values of `root`.
  static KernelGroup collect(Operation *root);

  /// The member of kind OpT (null if none; the first if several).
  template <typename OpT> OpT find() const {
    for (Operation *op : members)
      if (auto o = dyn_cast<OpT>(op))
        return o;
    return nullptr;
  }
  /// True if `v` is computed inside the group.
  bool isInternal(Value v) const;
  /// Kernel name prefix: the fused group's kind or the lone op's name.
  std::string kind() const;
};

/// The plain form of #mhc.schedule (see its description in MHCAttrs.td).
struct Schedule {
  int64_t tileTokens = 0;
  int64_t chunkColumns = 0;
  int64_t threads = 0;
  int64_t vectorWidth = 1;
  int64_t blocksPerSM = 0;
  int64_t tokenSplits = 0;

  static Schedule fromAttr(ScheduleAttr attr);
  ScheduleAttr toAttr(MLIRContext *ctx) const;
};

/// One schedule per kernel of a group, in launch order.
using GroupSchedule = SmallVector<Schedule, 1>;

/// The `mhc.schedule` of a root (null when it has none).
std::optional<GroupSchedule> readSchedule(Operation *root);
/// Attaches `schedule` to `root` (a single #mhc.schedule for one kernel).
void writeSchedule(Operation *root, ArrayRef<Schedule> schedule);

/// What the schedule choice may be told by the user.
struct ScheduleOptions {
  int64_t tileTokens = 0; // 0: the family's default
  int64_t maxTokens = 0;  // the function's mhc.max_tokens hint; 0: none
  bool prepareFn = true;  // projection groups may get an fn-prepare kernel
};

/// The options for `root`: `tileTokens` as given, `maxTokens` from the
/// mhc.max_tokens of the function around it.
ScheduleOptions scheduleOptionsFor(Operation *root, int64_t tileTokens = 0,
                                   bool prepareFn = true);

class KernelFamily {
public:
  virtual ~KernelFamily() = default;
  /// Whether this family lowers a group made of these members.
  virtual bool accepts(const KernelGroup &group) const = 0;
  /// The default schedule (one per kernel), or a diagnostic at the group
  /// (e.g. an option that cannot work for it).
  virtual FailureOr<GroupSchedule>
  chooseSchedule(const KernelGroup &group,
                 const ScheduleOptions &options) const = 0;
  /// Builds the group's kernels into `kernels` (named `kernelName`, with a
  /// suffix per kernel when there are several) and replaces the group by
  /// their launches; diagnoses unsupported groups and impossible schedules
  /// (naming the schedule field).
  virtual LogicalResult lower(KernelGroup &group,
                              ArrayRef<Schedule> schedule,
                              gpu::GPUModuleOp kernels,
                              StringRef kernelName) const = 0;
};

/// Every kernel family, in the order they are tried.
ArrayRef<const KernelFamily *> kernelFamilies();

/// The family that lowers `group`, or null after a diagnostic at its root.
const KernelFamily *findKernelFamily(const KernelGroup &group);

/// The kernel roots of `module` in program order: every mhc.fused and every
/// mhc op outside one.
SmallVector<Operation *> collectKernelRoots(Operation *module);

/// Fails (an error at the first such root) when a root sits in a module
/// nested inside `module`: the kernels `pass` adds to `module` would not be
/// in that module's symbol table (found by fuzzing: invalid IR).
LogicalResult checkRootsNotNested(ModuleOp module, ArrayRef<Operation *> roots,
                                  StringRef pass);

} // namespace mlir::mhc::gpu_kernels

#endif // MHC_LIB_CONVERSION_MHCTOGPU_KERNELGROUP_H
