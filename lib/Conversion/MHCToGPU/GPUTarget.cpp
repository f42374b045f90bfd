//===- GPUTarget.cpp - the one check of chip, PTX features, toolkit -------===//
#include "mhc/Conversion/GPUTarget.h"
#include "mhc/Conversion/Passes.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;

namespace {
struct ChipInfo {
  StringRef name;
  unsigned minPtx; // the PTX ISA version the chip needs (x10)
};
} // namespace

// Chips of LLVM 22's NVPTX backend from sm_80 on, with the first PTX ISA
// version that supports each (PTX ISA release notes). sm_80..sm_90a default
// to +ptx80, the version MLIR's NVVM target needs for sm_90.
static const ChipInfo kChips[] = {
    {"sm_80", 80},   {"sm_86", 80},   {"sm_87", 80},   {"sm_88", 90},
    {"sm_89", 80},   {"sm_90", 80},   {"sm_90a", 80},  {"sm_100", 86},
    {"sm_100a", 86}, {"sm_100f", 88}, {"sm_101", 86},  {"sm_101a", 86},
    {"sm_101f", 88}, {"sm_103", 88},  {"sm_103a", 88}, {"sm_103f", 88},
    {"sm_110", 90},  {"sm_110a", 90}, {"sm_110f", 90}, {"sm_120", 87},
    {"sm_120a", 87}, {"sm_120f", 88}, {"sm_121", 88},  {"sm_121a", 88},
    {"sm_121f", 88},
};
// The newest PTX ISA LLVM 22 emits.
static constexpr unsigned kMaxPtx = 90;

static const ChipInfo *findChip(StringRef chip) {
  for (const ChipInfo &c : kChips)
    if (c.name == chip)
      return &c;
  return nullptr;
}

std::string mhc::defaultPTXFeatures(StringRef chip) {
  const ChipInfo *info = findChip(chip);
  return "+ptx" + std::to_string(std::max(info ? info->minPtx : 80u, 80u));
}

FailureOr<mhc::GPUTarget>
mhc::parseGPUTarget(StringRef chip, StringRef features, StringRef who,
                    function_ref<InFlightDiagnostic()> emitError) {
  const ChipInfo *info = findChip(chip);
  if (!info) {
    StringRef digits = chip;
    unsigned sm = 0;
    if (digits.consume_front("sm_") && !digits.consumeInteger(10, sm) &&
        sm < 80)
      return emitError() << who << ": chip " << chip
                         << " is not supported; the kernels need sm_80 or "
                            "newer (bf16 mma.sync)",
             failure();
    std::string known;
    llvm::raw_string_ostream os(known);
    llvm::interleave(kChips, os, [&](const ChipInfo &c) { os << c.name; },
                     ", ");
    return emitError() << who << ": bad chip '" << chip << "', expected one of "
                       << known,
           failure();
  }
  GPUTarget target{chip.str(), features.str(), 0};
  if (features.empty())
    target.features = defaultPTXFeatures(chip);
  // The PTX version is the one +ptxNN among the comma-separated features.
  SmallVector<StringRef> parts;
  StringRef(target.features).split(parts, ',', -1, /*KeepEmpty=*/false);
  for (StringRef f : parts) {
    StringRef digits = f.trim();
    unsigned version;
    if (digits.consume_front("+ptx") && !digits.getAsInteger(10, version))
      target.ptxVersion = version;
  }
  if (target.ptxVersion == 0)
    return emitError() << who << ": features '" << target.features
                       << "' name no PTX version (e.g. +ptx80)",
           failure();
  if (target.ptxVersion < info->minPtx)
    return emitError() << who << ": chip " << chip << " needs PTX ISA "
                       << info->minPtx / 10 << "." << info->minPtx % 10
                       << " or newer (features=+ptx" << info->minPtx
                       << "), got " << target.features,
           failure();
  if (target.ptxVersion > kMaxPtx)
    return emitError() << who << ": PTX ISA " << target.ptxVersion / 10 << "."
                       << target.ptxVersion % 10
                       << " is newer than LLVM 22 emits (+ptx" << kMaxPtx
                       << " at most)",
           failure();
  return target;
}

StringRef mhc::stringifyGPUBinaryFormat(GPUBinaryFormat format) {
  switch (format) {
  case GPUBinaryFormat::Mlir:
    return "mlir";
  case GPUBinaryFormat::Llvm:
    return "llvm";
  case GPUBinaryFormat::Isa:
    return "isa";
  case GPUBinaryFormat::Bin:
    return "bin";
  case GPUBinaryFormat::Fatbin:
    return "fatbin";
  }
  llvm_unreachable("unknown GPUBinaryFormat");
}

LogicalResult
mhc::checkToolkit(const GPUTarget &target, GPUBinaryFormat format,
                  StringRef toolkit,
                  StringRef who,
                  function_ref<InFlightDiagnostic()> emitError) {
  if (format == GPUBinaryFormat::Mlir)
    return success(); // nothing is serialized here
  // Without libdevice the kernels' expf/rsqrtf calls stay unresolved and
  // gpu-module-to-binary fails with exit code 0.
  std::string libdevice = (toolkit + "/nvvm/libdevice/libdevice.10.bc").str();
  if (!llvm::sys::fs::exists(libdevice))
    return emitError() << who << ": no libdevice at '" << libdevice
                       << "'; pass toolkit=<CUDA path>";
  if (format == GPUBinaryFormat::Llvm || format == GPUBinaryFormat::Isa)
    return success();
  // Ask the toolkit's ptxas to assemble an empty module for the chip: it
  // knows which chips and PTX versions it supports (e.g. CUDA 13 renamed
  // sm_101 to sm_110).
  std::string ptxas = (toolkit + "/bin/ptxas").str();
  if (!llvm::sys::fs::can_execute(ptxas))
    return emitError() << who << ": no ptxas at '" << ptxas
                       << "' (format=" << stringifyGPUBinaryFormat(format)
                       << " needs it; format=isa/llvm/mlir do not)";
  SmallString<64> ptxPath, logPath;
  int fd;
  if (llvm::sys::fs::createTemporaryFile("mhc-target", "ptx", fd, ptxPath) ||
      llvm::sys::fs::createTemporaryFile("mhc-target", "log", logPath))
    return emitError() << who << ": cannot create a temporary file";
  {
    llvm::raw_fd_ostream os(fd, /*shouldClose=*/true);
    os << ".version " << target.ptxVersion / 10 << "."
       << target.ptxVersion % 10 << "\n.target " << target.chip
       << "\n.address_size 64\n";
  }
  std::string arch = "-arch=" + target.chip;
  StringRef args[] = {ptxas, arch, ptxPath, "-o", "/dev/null"};
  std::optional<StringRef> redirects[] = {std::nullopt, logPath.str(),
                                          logPath.str()};
  int rc = llvm::sys::ExecuteAndWait(ptxas, args, std::nullopt, redirects);
  std::string log;
  if (auto buf = llvm::MemoryBuffer::getFile(logPath))
    log = (*buf)->getBuffer().trim().str();
  llvm::sys::fs::remove(ptxPath);
  llvm::sys::fs::remove(logPath);
  if (rc != 0)
    return emitError() << who << ": the CUDA toolkit at '" << toolkit
                       << "' cannot build " << target.chip << " with "
                       << target.features << " (ptxas: " << log << ")";
  return success();
}

//===----------------------------------------------------------------------===//
// --mhc-gpu-check-target
//===----------------------------------------------------------------------===//

namespace mlir::mhc {
#define GEN_PASS_DEF_MHCGPUCHECKTARGET
#include "mhc/Conversion/Passes.h.inc"
} // namespace mlir::mhc

namespace {
struct MHCGPUCheckTargetPass
    : mhc::impl::MHCGPUCheckTargetBase<MHCGPUCheckTargetPass> {
  using MHCGPUCheckTargetBase::MHCGPUCheckTargetBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto emitError = [&] { return mlir::emitError(module.getLoc()); };
    FailureOr<mhc::GPUTarget> target =
        mhc::parseGPUTarget(chip, features, "mhc-gpu-check-target", emitError);
    if (failed(target) ||
        failed(mhc::checkToolkit(*target, format, toolkit,
                                 "mhc-gpu-check-target", emitError)))
      signalPassFailure();
  }
};
} // namespace
