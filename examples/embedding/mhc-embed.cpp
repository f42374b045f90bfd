//===- mhc-embed.cpp - mhc inside another program -------------------------===//
//
// What a compiler that takes mhc as a dependency does: register the mhc
// dialect and passes in its own MLIRContext, then run the flow on a model
// with its own PassManager:
//
//   --mhc-hyperconnect (residual adds -> mHC streams)
//   --mhc-fuse         (kernel groups)
//   a lowering         (--convert-mhc-to-linalg, or the CPU / GPU pipeline)
//
// and report what each step did.
//
//   mhc-embed MODEL.mlir [--streams=N] [--lower=linalg|cpu|gpu] [-o OUT.mlir]
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mhc/Dialect/MHC/IR/MHCOps.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/ToolOutputFile.h"

#include <map>
#include <string>

using namespace mlir;

static llvm::cl::opt<std::string> inputFile(llvm::cl::Positional,
                                            llvm::cl::desc("<model.mlir>"),
                                            llvm::cl::Required);
static llvm::cl::opt<int64_t> streams("streams",
                                      llvm::cl::desc("mHC streams (n)"),
                                      llvm::cl::init(4));
static llvm::cl::opt<std::string>
    lowering("lower",
             llvm::cl::desc("linalg (for another compiler), cpu (LLVM "
                            "dialect) or gpu (kernels + host code)"),
             llvm::cl::init("linalg"));
static llvm::cl::opt<std::string> outputFile("o",
                                             llvm::cl::desc("Output file"),
                                             llvm::cl::init(""));

/// Op name -> count, for the ops whose name starts with `prefix`.
static std::map<std::string, int> countOps(ModuleOp module, StringRef prefix) {
  std::map<std::string, int> counts;
  module.walk([&](Operation *op) {
    StringRef name = op->getName().getStringRef();
    if (name.starts_with(prefix))
      ++counts[name.str()];
  });
  return counts;
}

static void printCounts(const std::map<std::string, int> &counts) {
  for (const auto &[name, n] : counts)
    llvm::outs() << "    " << name << " x" << n << "\n";
}

static LogicalResult run(ModuleOp module, StringRef step,
                         function_ref<void(OpPassManager &)> build) {
  PassManager pm(module.getContext());
  build(pm);
  if (failed(pm.run(module))) {
    llvm::errs() << "mhc-embed: " << step << " failed\n";
    return failure();
  }
  return success();
}

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  llvm::cl::ParseCommandLineOptions(argc, argv, "mhc inside another program\n");
  if (lowering != "linalg" && lowering != "cpu" && lowering != "gpu") {
    llvm::errs() << "mhc-embed: --lower must be linalg, cpu or gpu, not '"
                 << lowering << "'\n";
    return 1;
  }

  // 1. Our own context: upstream dialects plus mhc, and the mhc passes and
  //    pipelines in MLIR's registry (so pipeline strings can name them).
  DialectRegistry registry;
  registerAllDialects(registry);
  registerAllExtensions(registry);
  registerAllToLLVMIRTranslations(registry); // the GPU pipeline's binaries
  registry.insert<mhc::MHCDialect>();
  MLIRContext context(registry);
  mhc::registerMHCPasses();
  mhc::registerMHCConversionPasses();
  mhc::registerMHCPipelines();

  llvm::SourceMgr sourceMgr;
  SourceMgrDiagnosticHandler diagnostics(sourceMgr, &context);
  OwningOpRef<ModuleOp> module =
      parseSourceFile<ModuleOp>(inputFile, sourceMgr, &context);
  if (!module)
    return 1;
  int64_t functions = 0, arguments = 0;
  module->walk([&](func::FuncOp f) {
    ++functions;
    arguments += f.getNumArguments();
  });
  llvm::outs() << "read " << inputFile << ": " << functions
               << " function(s), " << arguments << " argument(s)\n";

  // 2. Residual adds -> mHC, new parameters appended as function arguments.
  mhc::MHCHyperConnectOptions hc;
  hc.streams = streams;
  if (failed(run(*module, "mhc-hyperconnect", [&](OpPassManager &pm) {
        pm.addPass(mhc::createMHCHyperConnect(hc));
      })))
    return 1;
  int64_t newArguments = -arguments;
  module->walk([&](func::FuncOp f) { newArguments += f.getNumArguments(); });
  auto mhcOps = countOps(*module, "mhc.");
  int blocks = mhcOps.count("mhc.post_res") ? mhcOps["mhc.post_res"] : 0;
  llvm::outs() << "mhc-hyperconnect (streams=" << streams << "): " << blocks
               << " residual block(s) rewritten, " << newArguments
               << " parameter argument(s) added\n";
  printCounts(mhcOps);

  // 3. Kernel groups.
  if (failed(run(*module, "mhc-fuse", [](OpPassManager &pm) {
        pm.addNestedPass<func::FuncOp>(mhc::createMHCFuse());
      })))
    return 1;
  std::map<std::string, int> groups;
  module->walk([&](mhc::FusedOp f) { ++groups[f.getKind().str()]; });
  llvm::outs() << "mhc-fuse: kernel groups\n";
  printCounts(groups);

  // 4. Lowering: mhc's own pass, or a registered pipeline by name.
  LogicalResult lowered =
      lowering == "linalg"
          ? run(*module, "convert-mhc-to-linalg",
                [](OpPassManager &pm) {
                  pm.addPass(mhc::createConvertMHCToLinalg());
                })
          : run(*module, "the " + lowering + " pipeline",
                [&](OpPassManager &pm) {
                  // The groups are formed already (fuse=0).
                  std::string pipeline =
                      lowering == "cpu" ? "mhc-cpu-pipeline"
                                        : "mhc-gpu-pipeline{format=isa fuse=0}";
                  if (failed(parsePassPipeline(pipeline, pm)))
                    llvm::errs() << "mhc-embed: cannot parse " << pipeline
                                 << "\n";
                });
  if (failed(lowered))
    return 1;
  auto left = countOps(*module, "mhc.");
  int leftCount = 0;
  for (const auto &entry : left)
    leftCount += entry.second;
  auto top = countOps(*module, "");
  llvm::outs() << "lowering (" << lowering << "): " << leftCount
               << " mhc op(s) left; linalg.generic x"
               << top["linalg.generic"] << ", llvm.func x" << top["llvm.func"]
               << ", gpu.binary x" << top["gpu.binary"] << "\n";

  if (!outputFile.empty()) {
    std::string error;
    auto out = openOutputFile(outputFile, &error);
    if (!out) {
      llvm::errs() << "mhc-embed: " << error << "\n";
      return 1;
    }
    module->print(out->os());
    out->keep();
    llvm::outs() << "wrote " << outputFile << "\n";
  }
  return 0;
}
