//===- GPUPipeline.cpp - --mhc-gpu-pipeline -------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"

using namespace mlir;

void mlir::mhc::registerMHCGPUPipeline() {
  // TODO(in progress): filled in with the GPU lowering.
}
