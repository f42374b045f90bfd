//===- mhc-plugin.cpp - the mhc dialect, passes and pipelines as a plugin -===//
//
// A plugin for a stock mlir-opt built against the same libMLIR (Debian's
// mlir-opt-22):
//
//   mlir-opt --load-dialect-plugin=MHCPlugin.so --load-pass-plugin=MHCPlugin.so \
//     --pass-pipeline="builtin.module(mhc-cpu-pipeline)" f.mlir
//
// The dialect plugin makes mhc IR parse; the pass plugin registers every mhc
// pass and pipeline. Pass flags such as --mhc-fuse are parsed before plugins
// load, so passes are named in --pass-pipeline.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/Tools/Plugins/DialectPlugin.h"
#include "mlir/Tools/Plugins/PassPlugin.h"
#include "llvm/Config/llvm-config.h"

using namespace mlir;

static void registerMHCPassesAndPipelines() {
  mhc::registerMHCPasses();
  mhc::registerMHCConversionPasses();
  mhc::registerMHCPipelines(); // registers once however often it is called
}

extern "C" LLVM_ATTRIBUTE_WEAK DialectPluginLibraryInfo
mlirGetDialectPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "MHC", LLVM_VERSION_STRING,
          [](DialectRegistry *registry) {
            registry->insert<mhc::MHCDialect>();
            // A dialect plugin alone is enough to use mhc from mlir-opt.
            registerMHCPassesAndPipelines();
          }};
}

extern "C" LLVM_ATTRIBUTE_WEAK PassPluginLibraryInfo mlirGetPassPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "MHCPasses", LLVM_VERSION_STRING,
          registerMHCPassesAndPipelines};
}
