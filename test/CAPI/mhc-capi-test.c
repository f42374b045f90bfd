//===- mhc-capi-test.c - mhc from C ---------------------------------------===//
//
// Drives mhc through the C API alone (include/mhc-c, libMHCCAPI.so): the
// dialect handle, passes created by the generated API and by name, the
// pipelines, and the errors a caller sees.
//
// RUN: mhc-capi-test 2>&1 | FileCheck %s
//
//===----------------------------------------------------------------------===//
#include "mhc-c/Dialects.h"
#include "mhc-c/Passes.h"
#include "mlir-c/Diagnostics.h"
#include "mlir-c/IR.h"
#include "mlir-c/Pass.h"
#include "mlir-c/RegisterEverything.h"

#include <stdio.h>
#include <string.h>

// Two residual blocks in arith form: what --mhc-hyperconnect rewrites.
static const char *kResidualNet =
    "func.func @net(%h: tensor<8x16xf32>, %w: tensor<16x16xf32>) -> "
    "tensor<8x16xf32> {\n"
    "  %z = arith.constant 0.0 : f32\n"
    "  %e = tensor.empty() : tensor<8x16xf32>\n"
    "  %f = linalg.fill ins(%z : f32) outs(%e : tensor<8x16xf32>) -> "
    "tensor<8x16xf32>\n"
    "  %a = math.tanh %h : tensor<8x16xf32>\n"
    "  %y1 = linalg.matmul ins(%a, %w : tensor<8x16xf32>, tensor<16x16xf32>) "
    "outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>\n"
    "  %h1 = arith.addf %h, %y1 : tensor<8x16xf32>\n"
    "  %b = math.tanh %h1 : tensor<8x16xf32>\n"
    "  %y2 = linalg.matmul ins(%b, %w : tensor<8x16xf32>, tensor<16x16xf32>) "
    "outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>\n"
    "  %h2 = arith.addf %y2, %h1 : tensor<8x16xf32>\n"
    "  return %h2 : tensor<8x16xf32>\n"
    "}\n";

static void printToStdout(MlirStringRef text, void *userData) {
  (void)userData;
  fwrite(text.data, 1, text.length, stdout);
}

static MlirLogicalResult printDiagnostic(MlirDiagnostic diagnostic,
                                         void *userData) {
  (void)userData;
  printf("diagnostic: ");
  mlirDiagnosticPrint(diagnostic, printToStdout, NULL);
  printf("\n");
  return mlirLogicalResultSuccess();
}

typedef struct {
  const char *prefix;
  int count;
} OpCount;

static MlirWalkResult countOps(MlirOperation op, void *userData) {
  OpCount *c = (OpCount *)userData;
  MlirStringRef name = mlirIdentifierStr(mlirOperationGetName(op));
  size_t n = strlen(c->prefix);
  if (name.length >= n && strncmp(name.data, c->prefix, n) == 0)
    ++c->count;
  return MlirWalkResultAdvance;
}

static int count(MlirModule module, const char *prefix) {
  OpCount c = {prefix, 0};
  mlirOperationWalk(mlirModuleGetOperation(module), countOps, &c,
                    MlirWalkPreOrder);
  return c.count;
}

static int runPipeline(MlirContext ctx, MlirModule module,
                       const char *pipeline) {
  MlirPassManager pm = mlirPassManagerCreate(ctx);
  MlirOpPassManager opm = mlirPassManagerGetAsOpPassManager(pm);
  MlirLogicalResult parsed = mlirParsePassPipeline(
      opm, mlirStringRefCreateFromCString(pipeline), printToStdout, NULL);
  int ok = mlirLogicalResultIsSuccess(parsed) &&
           mlirLogicalResultIsSuccess(mlirPassManagerRunOnOp(
               pm, mlirModuleGetOperation(module)));
  if (!mlirLogicalResultIsSuccess(parsed))
    printf("\n");
  mlirPassManagerDestroy(pm);
  return ok;
}

int main(void) {
  // MLIR prints some errors straight to stderr: keep the two streams in order.
  setvbuf(stdout, NULL, _IONBF, 0);
  MlirDialectRegistry registry = mlirDialectRegistryCreate();
  mlirRegisterAllDialects(registry);
  mlirDialectHandleInsertDialect(mlirGetDialectHandle__mhc__(), registry);
  MlirContext ctx = mlirContextCreateWithRegistry(registry, false);
  mlirDialectRegistryDestroy(registry);
  mlirContextAttachDiagnosticHandler(ctx, printDiagnostic, NULL, NULL);
  mlirRegisterAllMHCPasses();
  mlirRegisterAllMHCPasses(); // a second registration is harmless

  MlirDialect mhc = mlirContextGetOrLoadDialect(
      ctx, mlirStringRefCreateFromCString("mhc"));
  // CHECK: dialect: mhc
  printf("dialect: %.*s\n", (int)mlirDialectGetNamespace(mhc).length,
         mlirDialectGetNamespace(mhc).data);

  MlirModule module =
      mlirModuleCreateParse(ctx, mlirStringRefCreateFromCString(kResidualNet));
  if (mlirModuleIsNull(module))
    return 1;

  // Rewrite, by name with options (a parsed pipeline string).
  // CHECK: hyperconnect: ok, 2 mhc.post_res, 2 mhc.sinkhorn
  int ok = runPipeline(ctx, module,
                       "builtin.module(mhc-hyperconnect{streams=4 mode=mhc})");
  printf("hyperconnect: %s, %d mhc.post_res, %d mhc.sinkhorn\n",
         ok ? "ok" : "failed", count(module, "mhc.post_res"),
         count(module, "mhc.sinkhorn"));

  // Fuse, with a pass object from the generated C API, nested on functions.
  // CHECK: fuse: ok, 4 mhc.fused
  MlirPassManager pm = mlirPassManagerCreate(ctx);
  MlirOpPassManager funcPm = mlirPassManagerGetNestedUnder(
      pm, mlirStringRefCreateFromCString("func.func"));
  mlirOpPassManagerAddOwnedPass(funcPm, mlirCreateMHCMHCFuse());
  ok = mlirLogicalResultIsSuccess(
      mlirPassManagerRunOnOp(pm, mlirModuleGetOperation(module)));
  mlirPassManagerDestroy(pm);
  printf("fuse: %s, %d mhc.fused\n", ok ? "ok" : "failed",
         count(module, "mhc.fused"));

  // Lower the mhc ops to linalg (a generated create function).
  // CHECK: to linalg: ok, 0 mhc ops left
  pm = mlirPassManagerCreate(ctx);
  mlirPassManagerAddOwnedPass(pm, mlirCreateMHCConversionConvertMHCToLinalg());
  ok = mlirLogicalResultIsSuccess(
      mlirPassManagerRunOnOp(pm, mlirModuleGetOperation(module)));
  mlirPassManagerDestroy(pm);
  printf("to linalg: %s, %d mhc ops left\n", ok ? "ok" : "failed",
         count(module, "mhc."));
  mlirModuleDestroy(module);

  // The CPU pipeline, registered by name, down to the LLVM dialect.
  // CHECK: cpu pipeline: ok, 0 func.func left
  module =
      mlirModuleCreateParse(ctx, mlirStringRefCreateFromCString(kResidualNet));
  ok = runPipeline(ctx, module,
                   "builtin.module(mhc-hyperconnect, mhc-cpu-pipeline)");
  printf("cpu pipeline: %s, %d func.func left\n", ok ? "ok" : "failed",
         count(module, "func.func"));
  mlirModuleDestroy(module);

  // Errors reach the caller: a bad option value, then a pass that fails.
  // CHECK: Cannot find option named 'bogus'
  // CHECK: failed to add `mhc-hyperconnect` with options `mode=bogus`
  // CHECK: bad option: rejected
  module =
      mlirModuleCreateParse(ctx, mlirStringRefCreateFromCString(kResidualNet));
  ok = runPipeline(ctx, module, "builtin.module(mhc-hyperconnect{mode=bogus})");
  printf("bad option: %s\n", ok ? "accepted" : "rejected");
  // CHECK: diagnostic: {{.*}}chip
  // CHECK: bad chip: failed
  ok = runPipeline(ctx, module,
                   "builtin.module(mhc-hyperconnect, "
                   "mhc-gpu-pipeline{chip=sm_70})");
  printf("bad chip: %s\n", ok ? "ok" : "failed");
  mlirModuleDestroy(module);

  mlirContextDestroy(ctx);
  return 0;
}
