# Ops that torch-mlir's linalg-on-tensors output contains besides what the exported models use:
# tensor.pad, linalg.batch_matmul, tensor.expand_shape with a dynamic dim, math.erf (GELU) and an
# ml_program global that is loaded, updated and reloaded, all through --mhc-cpu-pipeline, checked
# against numpy in float64 (f32 bar, normwise).
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: 4 of 4 checks passed
import math

import numpy as np

from mhc.testing import Checker, Program, Tools, Value

rng = np.random.default_rng(17)
p = Program()
a = p.random(rng, (2, 3, 5), "f32")
b = p.random(rng, (2, 5, 4), "f32")
w = rng.standard_normal(6).astype(np.float32)

# tensor.pad (a row of 0.5 above each matrix), then batch_matmul with b.
p.emit("%half = arith.constant 0.5 : f32")
p.emit(f"%padded = tensor.pad {a.name} low[0, 1, 0] high[0, 0, 0] {{\n"
       "    ^bb0(%i: index, %j: index, %k: index):\n"
       "      tensor.yield %half : f32\n"
       "    } : tensor<2x3x5xf32> to tensor<2x4x5xf32>")
p.emit("%zero = arith.constant dense<0.0> : tensor<2x4x4xf32>")
p.emit(f"%bmm = linalg.batch_matmul ins(%padded, {b.name} : tensor<2x4x5xf32>, tensor<2x5x4xf32>) "
       "outs(%zero : tensor<2x4x4xf32>) -> tensor<2x4x4xf32>")
padded = np.concatenate([np.full((2, 1, 5), 0.5), a.data.astype(np.float64)], axis=1)
bmm = Value("%bmm", [2, 4, 4], "f32", padded @ b.data.astype(np.float64))
p.output(bmm)

# Dynamic expand_shape of the result, then exact GELU 0.5 x (1 + erf(x / sqrt 2)).
p.emit("%flat = tensor.collapse_shape %bmm [[0, 1], [2]] : tensor<2x4x4xf32> into tensor<8x4xf32>")
p.emit("%dyn = tensor.cast %flat : tensor<8x4xf32> to tensor<?x4xf32>")
p.emit("%c2 = arith.constant 2 : index")
p.emit("%c0 = arith.constant 0 : index")
p.emit("%rows = tensor.dim %dyn, %c0 : tensor<?x4xf32>")
p.emit("%half_rows = arith.divui %rows, %c2 : index")
p.emit("%re = tensor.expand_shape %dyn [[0, 1], [2]] output_shape [2, %half_rows, 4] "
       ": tensor<?x4xf32> into tensor<2x?x4xf32>")
p.emit("%inv_sqrt2 = arith.constant dense<0.70710678> : tensor<2x4x4xf32>")
p.emit("%one = arith.constant dense<1.0> : tensor<2x4x4xf32>")
p.emit("%halfs = arith.constant dense<0.5> : tensor<2x4x4xf32>")
p.emit("%re_s = tensor.cast %re : tensor<2x?x4xf32> to tensor<2x4x4xf32>")
p.emit("%scaled = arith.mulf %re_s, %inv_sqrt2 : tensor<2x4x4xf32>")
p.emit("%erf = math.erf %scaled : tensor<2x4x4xf32>")
p.emit("%onep = arith.addf %erf, %one : tensor<2x4x4xf32>")
p.emit("%hx = arith.mulf %re_s, %halfs : tensor<2x4x4xf32>")
p.emit("%gelu = arith.mulf %hx, %onep : tensor<2x4x4xf32>")
erf = np.vectorize(math.erf)
x = bmm.data
gelu = Value("%gelu", [2, 4, 4], "f32", 0.5 * x * (1 + erf(x * float(np.float32(0.70710678)))))
p.output(gelu)

# An ml_program global: load, double, store, reload. The first load is printed before the store:
# upstream bufferizes ml_program.global_load to a memref.get_global of the global itself, so a
# loaded value read after a later store to the same global would see the stored data.
p.emit("%w = ml_program.global_load @w : tensor<6xf32>")
p.output(Value("%w", [6], "f32", w.astype(np.float64)))
p.emit("%w2 = arith.addf %w, %w : tensor<6xf32>")
p.emit("ml_program.global_store @w = %w2 : tensor<6xf32>")
p.emit("%w3 = ml_program.global_load @w : tensor<6xf32>")
p.output(Value("%w3", [6], "f32", 2.0 * w.astype(np.float64)))

values = ", ".join(repr(float(v)) for v in w)
p.declare(f"ml_program.global private mutable @w(dense<[{values}]> : tensor<6xf32>) "
          ": tensor<6xf32>")
got = p.run(Tools.from_argv())
check = Checker()
for case, g, v in zip(("tensor.pad + batch_matmul", "expand_shape + erf GELU",
                       "ml_program.global_load", "ml_program.global_store + reload"),
                      got, p._outputs):
    check.check(case, g, v)
check.finish()
