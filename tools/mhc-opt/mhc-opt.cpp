//===- mhc-opt.cpp - the mhc optimizer driver -----------------------------===//
//
// mlir-opt with the mhc dialect, its passes and pipelines registered next to
// every upstream dialect and pass.
//
//===----------------------------------------------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Dialect/MHC/IR/MHCDialect.h"
#include "mhc/Dialect/MHC/Transforms/Passes.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::registerAllPasses();
  mlir::mhc::registerMHCPasses();
  mlir::mhc::registerMHCConversionPasses();
  mlir::mhc::registerMHCPipelines();

  mlir::DialectRegistry registry;
  mlir::registerAllDialects(registry);
  mlir::registerAllExtensions(registry);
  // gpu-module-to-binary translates gpu.modules to LLVM IR for NVPTX.
  mlir::registerAllToLLVMIRTranslations(registry);
  registry.insert<mlir::mhc::MHCDialect>();

  return mlir::asMainReturnCode(mlir::MlirOptMain(
      argc, argv,
      "mhc optimizer driver: the mhc dialect (Manifold-Constrained "
      "Hyper-Connections), its passes and pipelines, and all of upstream MLIR\n",
      registry));
}
