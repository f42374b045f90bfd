# mhc.sinkhorn_grad on the CPU path: n in {1, 2, 4, 8}, static, dynamic and empty leading dims
# (T = 0), iterations in {1, 2, 3, 5, 20} and eps in {0, 1e-6, 1e-3}, custom and generic
# assembly, on seeded random data (logits ~ 2 N(0, 1), dcomb ~ N(0, 1)).
# The lowering recomputes the iterates from the logits (there is no other input).
#
# Every result is checked twice on the data the program ran on: the float64 reference backward
# (mhc.reference.sinkhorn_backward) against central differences of the reference forward
# (|ref - fd| <= 1e-6 max|fd| + 1e-9 at 24 sampled elements), and the printed f32 result against
# the reference within a normwise relative error of 1e-5. The controls at the end show that both
# checks reject spoiled data.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import (LEADING, Checker, Program, Tools, Value, check_controls, check_vjp,
                         per_token)

rng = np.random.default_rng(41)
p = Program()
cases = []


def sinkhorn_grad(label, n, lead, dyn, iterations=None, eps=None, generic=False):
    logits = p.random(rng, lead + (n, n), "f32", scale=2.0)
    dcomb = p.random(rng, lead + (n, n), "f32")
    operands = [per_token(p, v, len(lead), dyn) for v in (logits, dcomb)]
    dl = p.sinkhorn_grad(*operands, iterations=iterations, eps=eps, generic=generic)
    p.output(dl)
    attrs = dict(iterations=20 if iterations is None else iterations,
                 eps=float(np.float32(1e-6 if eps is None else eps)))
    cases.append((f"n={n} {label}" + (" generic" if generic else ""), logits.data, dcomb.data,
                  attrs))


for n in (1, 2, 4, 8):
    for label, lead, dyn in LEADING:
        sinkhorn_grad(label, n, lead, dyn, generic=(label == "2x3"))
for it, eps in ((1, 1e-6), (2, 1e-3), (5, 1e-3), (5, 0.0), (20, 0.0)):
    sinkhorn_grad(f"iterations={it} eps={eps}", 4, (6,), False, iterations=it, eps=eps)
sinkhorn_grad("iterations=3 ?=5", 4, (5,), True, iterations=3)
# The spec's attribute spelling in the generic form, verbatim.
logits = p.random(rng, (8, 4, 4), "f32", scale=2.0)
dcomb = p.random(rng, (8, 4, 4), "f32")
p.emit(f'%spec = "mhc.sinkhorn_grad"({logits.name}, {dcomb.name}) '
       '<{eps = 1.0e-06 : f32, iterations = 20 : i64}> '
       ': (tensor<8x4x4xf32>, tensor<8x4x4xf32>) -> tensor<8x4x4xf32>')
p.output(Value("%spec", [8, 4, 4], "f32",
                ref.sinkhorn_backward(logits.data, dcomb.data, 20, float(np.float32(1e-6)),
                                      dtype=np.float64)))
cases.append(("spec-style generic form 8x4x4", logits.data, dcomb.data,
              dict(iterations=20, eps=float(np.float32(1e-6)))))

got = iter(p.run(Tools.from_argv()))
check = Checker()
for name, logits, dcomb, attrs in cases:
    forward = lambda l, a=attrs: ref.sinkhorn(l, dtype=np.float64, **a)
    expected = ref.sinkhorn_backward(logits, dcomb, dtype=np.float64, **attrs)
    printed = next(got)
    check_vjp(check, name, forward, [logits], [dcomb], [("dlogits", 0, expected, printed, "f32")],
              rng)
check_controls(check, "dlogits", printed, expected, "f32", (forward, [logits], [dcomb], 0,
                                                             expected))
check.finish()
