# mhc.sinkhorn on the CPU path against the float64 reference: n in {1, 2, 4, 8}, static, dynamic
# and empty leading dims, default and non-default attributes, custom and generic assembly.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import LEADING, Checker, Program, Tools, Value, per_token

rng = np.random.default_rng(2024)
p = Program()
cases = []
for n in (1, 2, 4, 8):
    for label, lead, dyn in LEADING:
        logits = p.random(rng, lead + (n, n), "f32", scale=2.0)
        c = p.sinkhorn(per_token(p, logits, len(lead), dyn))
        p.output(c)
        cases.append((f"n={n} {label}", c))
# Non-default attributes, and the spec's generic-form example verbatim (8x4x4).
for it, eps in ((5, 1e-3), (1, 1e-6), (3, 0.0)):
    logits = p.random(rng, (6, 4, 4), "f32", scale=3.0)
    c = p.sinkhorn(logits, iterations=it, eps=eps)
    p.output(c)
    cases.append((f"iterations={it} eps={eps}", c))
logits = p.random(rng, (8, 4, 4), "f32", scale=2.0)
c = p.sinkhorn(logits, iterations=20, eps=1e-6, generic=True)
p.output(c)
cases.append(("generic form 8x4x4", c))
# The spec's line, character for character.
p.emit(f'%spec = "mhc.sinkhorn"({logits.name}) <{{eps = 1.0e-06 : f32, iterations = 20 : i64}}> '
       ': (tensor<8x4x4xf32>) -> tensor<8x4x4xf32>')
spec = Value("%spec", [8, 4, 4], "f32",
             ref.sinkhorn(logits.data, 20, float(np.float32(1e-6)), dtype=np.float64))
p.output(spec)
cases.append(("spec example, verbatim", spec))

got = p.run(Tools.from_argv())
check = Checker()
for (case, v), g in zip(cases, got):
    check.check(case, g, v)
check.finish()
