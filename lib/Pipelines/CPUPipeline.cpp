//===- CPUPipeline.cpp - --mhc-cpu-pipeline -------------------------------===//
#include "mhc/Conversion/Passes.h"
#include "mhc/Pipelines/Pipelines.h"
#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Bufferization/Transforms/Passes.h"
#include "mlir/Dialect/Linalg/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void mlir::mhc::registerMHCCPUPipeline() {
  // TODO(in progress): filled in with the CPU lowering.
}
