//===- mhc-fuzz.cpp - libFuzzer target for mhc's parser, verifiers, passes ===//
//
// Each input is an MLIR module, optionally preceded by one line naming the
// pass pipeline to run on it:
//
//     // pipeline: mhc-fuse,convert-mhc-to-gpu{chip=sm_80}
//     func.func @f(...) { ... }
//
// Without that line the first byte of the input picks one of kPipelines. The
// target parses the module, verifies it, prints it and parses it back, then
// runs the pipeline, and stops the fuzzer (abort) where mhc breaks a promise
// of docs/Guarantees.md:
//   * a crash, hang, leak or sanitizer report (libFuzzer + ASan/UBSan);
//   * a pass that succeeds but leaves IR that does not verify;
//   * a parse or pipeline that fails without an error, or with an error that
//     has no source location;
//   * a module that verifies but does not parse back from its printed form.
// Only mhc's passes and pipelines (plus canonicalize and cse) are
// registered, so mutated pipeline text can only select those. GPU pipelines
// must ask for format=mlir, llvm or isa: the others run ptxas, an external
// program. Most GPU inputs ask for format=mlir, which stops before LLVM's
// serialization (libdevice, optimization, NVPTX): that takes over half of a
// format=isa run and is LLVM's code, not ours.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "mlir/Transforms/Passes.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdio>
#include <cstdlib>
#include <string>

using namespace mlir;

namespace {

/// What runs when an input names no pipeline: every mhc entry point, some
/// with unusual options.
const char *const kPipelines[] = {
    "",
    "canonicalize",
    "canonicalize,cse",
    "convert-mhc-to-linalg",
    "mhc-cpu-pipeline",
    "mhc-fuse",
    "mhc-fuse,mhc-select-schedule",
    "mhc-select-schedule{chip=sm_80 tile-tokens=16}",
    "convert-mhc-to-gpu",
    "mhc-fuse,convert-mhc-to-gpu{chip=sm_100}",
    "mhc-gpu-pipeline{format=mlir}",
    "mhc-gpu-pipeline{format=llvm fuse=0}",
    "mhc-gpu-pipeline{format=isa chip=sm_120 tile-tokens=32}",
    "mhc-gpu-host-memory",
    "mhc-gpu-check-target{format=mlir}",
    "mhc-hyperconnect",
    "mhc-hyperconnect{streams=1 mode=hc init=identity}",
    "mhc-hyperconnect{streams=7 mode=static-hc params=constants}",
    "mhc-hyperconnect{streams=2 iterations=1 min-blocks=1},canonicalize",
    "mhc-generate-backward",
    "mhc-generate-backward{save=all},canonicalize",
    "mhc-generate-backward{save=inputs},mhc-cpu-pipeline",
};
constexpr size_t kNumPipelines = sizeof(kPipelines) / sizeof(kPipelines[0]);

[[noreturn]] void bug(const std::string &what, llvm::StringRef input) {
  fprintf(stderr, "mhc-fuzz: BUG: %s\n--- input ---\n%.*s\n--- end ---\n",
          what.c_str(), static_cast<int>(input.size()), input.data());
  abort();
}

const DialectRegistry &registry() {
  static const DialectRegistry *r = [] {
    auto *reg = new DialectRegistry();
    registerAllDialects(*reg);
    registerAllExtensions(*reg);
    registerAllToLLVMIRTranslations(*reg);
    reg->insert<mhc::MHCDialect>();
    return reg;
  }();
  return *r;
}

/// Counts error diagnostics and those without a source location; prints
/// nothing (the fuzzer runs millions of inputs).
struct DiagnosticCounter {
  explicit DiagnosticCounter(MLIRContext &ctx)
      : handler(&ctx, [this](Diagnostic &d) {
          if (d.getSeverity() == DiagnosticSeverity::Error) {
            ++errors;
            if (!hasFileLocation(d.getLocation()) && unlocated.empty())
              unlocated = d.str();
          }
          return success();
        }) {}
  static bool hasFileLocation(Location loc) {
    bool found = false;
    loc->walk([&](Location l) {
      found |= isa<FileLineColRange>(l);
      return found ? WalkResult::interrupt() : WalkResult::advance();
    });
    return found;
  }
  ScopedDiagnosticHandler handler;
  int errors = 0;
  std::string unlocated;
};

/// Verifies after every pass that succeeded. One of mhc's passes may fail
/// (with an error), but it must not leave invalid IR behind and claim
/// success. After an upstream pass inside an mhc pipeline (e.g. gpu-to-llvm
/// on a module with clashing symbols) invalid IR gets the verifier's located
/// errors, which is what mhc-opt's pass manager reports, with exit 1; the
/// fuzzer lets the remaining passes run on it and checks nothing more.
struct VerifyAfterEachPass : PassInstrumentation {
  std::string broken; // the mhc pass that left invalid IR
  bool invalid = false;
  static bool isMHCPass(Pass *pass) {
    StringRef arg = pass->getArgument();
    return arg.starts_with("mhc-") || arg.starts_with("convert-mhc-");
  }
  void runAfterPass(Pass *pass, Operation *op) override {
    if (invalid)
      return;
    if (!isMHCPass(pass)) {
      invalid = failed(verify(op));
      return;
    }
    // The verifier's own diagnostics would count as the pipeline's errors.
    ScopedDiagnosticHandler silence(op->getContext(),
                                    [](Diagnostic &) { return success(); });
    if (failed(verify(op))) {
      broken = pass->getArgument().str();
      invalid = true;
    }
  }
};

OwningOpRef<ModuleOp> parse(llvm::StringRef text, MLIRContext &ctx) {
  // MLIR's lexer reads up to the NUL that llvm::MemoryBuffer puts after a
  // file's bytes (what mhc-opt parses); libFuzzer's data has none, and
  // parseSourceString does not add one: a NUL-terminated copy.
  llvm::SourceMgr sources;
  sources.AddNewSourceBuffer(
      llvm::MemoryBuffer::getMemBufferCopy(text, "fuzz-input"), llvm::SMLoc());
  ParserConfig config(&ctx);
  return parseSourceFile<ModuleOp>(sources, config);
}

std::string print(Operation *op, bool generic) {
  std::string s;
  llvm::raw_string_ostream os(s);
  OpPrintingFlags flags;
  if (generic)
    flags.printGenericOpForm();
  op->print(os, flags);
  return s;
}

/// The printed forms of a valid module must parse back into a valid module.
void checkRoundTrip(ModuleOp module, MLIRContext &ctx, llvm::StringRef input) {
  for (bool generic : {false, true}) {
    std::string text = print(module, generic);
    ScopedDiagnosticHandler silence(&ctx,
                                    [](Diagnostic &) { return success(); });
    OwningOpRef<ModuleOp> again = parse(text, ctx);
    if (!again || failed(verify(*again)))
      bug(std::string("the ") + (generic ? "generic" : "custom") +
              " printed form does not parse back:\n" + text,
          input);
  }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  mhc::registerMHCPasses();
  mhc::registerMHCConversionPasses();
  mhc::registerMHCPipelines();
  registerCanonicalizerPass();
  registerCSEPass();
  (void)registry();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  llvm::StringRef input(reinterpret_cast<const char *>(data), size);
  // The pipeline: a first line "// pipeline: ...", else picked by byte 0.
  std::string pipeline;
  llvm::StringRef source = input;
  if (input.consume_front("// pipeline:")) {
    auto [line, rest] = input.split('\n');
    pipeline = line.trim().str();
    source = rest;
  } else if (size > 0) {
    pipeline = kPipelines[data[0] % kNumPipelines];
  }
  llvm::StringRef p(pipeline);
  if ((p.contains("mhc-gpu-pipeline") || p.contains("mhc-gpu-check-target")) &&
      !p.contains("format=isa") && !p.contains("format=llvm") &&
      !p.contains("format=mlir"))
    return -1; // would run ptxas: not part of the corpus
  // Large inputs only slow the fuzzer down without finding more.
  if (size > 64 * 1024)
    return -1;

  MLIRContext ctx(registry(), MLIRContext::Threading::DISABLED);
  DiagnosticCounter diagnostics(ctx);
  OwningOpRef<ModuleOp> module = parse(source, ctx);
  if (!module) {
    if (diagnostics.errors == 0)
      bug("the parser failed without an error", input);
    return 0;
  }
  if (failed(verify(*module))) {
    if (diagnostics.errors == 0)
      bug("the verifier failed without an error", input);
    return 0;
  }
  checkRoundTrip(*module, ctx, input);
  if (pipeline.empty())
    return 0;

  PassManager pm(&ctx);
  std::string parseErrors;
  llvm::raw_string_ostream errorStream(parseErrors);
  if (failed(parsePassPipeline(pipeline, pm, errorStream)))
    return -1; // not a pipeline of ours
  pm.enableVerifier(false); // VerifyAfterEachPass tells a bug from an error
  auto *verifier = new VerifyAfterEachPass();
  pm.addInstrumentation(std::unique_ptr<PassInstrumentation>(verifier));
  int errorsBefore = diagnostics.errors;
  LogicalResult result = pm.run(*module);
  if (!verifier->broken.empty())
    bug("pass '" + verifier->broken + "' succeeded but left invalid IR", input);
  if (failed(result) && diagnostics.errors == errorsBefore)
    bug("pipeline '" + pipeline + "' failed without an error", input);
  if (!diagnostics.unlocated.empty())
    bug("an error without a source location: " + diagnostics.unlocated,
        input);
  return 0;
}
