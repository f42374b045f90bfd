# mhc.post_res_grad on the CPU path: n in {1, 2, 4, 8}, C in {13, 100}, f32/bf16/f16
# activations, static, dynamic and empty leading dims (T = 0), mixed staticness, custom and
# generic assembly, on seeded random data (post in (0, 2), comb in (0, 1), y, x, dout normal).
#
# Every result is checked twice on the data the program ran on: the float64 reference backward
# (mhc.reference.post_res_backward) against central differences of the reference forward
# (|ref - fd| <= 1e-6 max|fd| + 1e-9 at 24 sampled elements per result), and the printed result
# against the reference: f32 results (dpost, dcomb, and dy/dx for f32 activations) within a
# normwise relative error of 1e-5; bf16/f16 dy and dx (f32 sums over the n destination streams,
# rounded once) within one ulp of the correctly rounded reference (+ 1e-5 max|ref|). The controls
# at the end show that each of these checks rejects spoiled data.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import (Checker, Program, Tools, check_controls, check_vjp, per_token,
                         token_op_cases)

rng = np.random.default_rng(37)
p = Program()
cases = []


def post_res_grad(label, elem, n, c, lead, dyn, generic=False, dynamic_operands=(0, 1, 2, 3, 4)):
    y = p.random(rng, lead + (c,), elem)
    x = p.random(rng, lead + (n, c), elem)
    post = p.constant(rng.uniform(0.0, 2.0, lead + (n,)).astype(np.float32), "f32")
    comb = p.constant(rng.uniform(0.0, 1.0, lead + (n, n)).astype(np.float32), "f32")
    dout = p.random(rng, lead + (n, c), elem)
    operands = [per_token(p, v, len(lead), dyn and k in dynamic_operands)
                for k, v in enumerate((y, x, post, comb, dout))]
    outs = p.post_res_grad(*operands, generic=generic)
    for v in outs:
        p.output(v)
    cases.append((f"n={n} C={c} {elem} {label}" + (" generic" if generic else ""), elem,
                  [y.data, x.data, post.data, comb.data], dout.data))


for n, elem, c, label, lead, dyn in token_op_cases(f16_leads=slice(1, 3)):
    post_res_grad(label, elem, n, c, lead, dyn, generic=(label == "T=5" and c == 13))
# Mixed staticness: x and dout dynamic, the rest static (the verifier accepts it).
post_res_grad("x, dout: ? of 6", "bf16", 4, 13, (6,), True, dynamic_operands=(1, 4))

got = iter(p.run(Tools.from_argv()))
check = Checker()
forward = lambda y, x, post, comb: ref.post_res(y, x, post, comb, dtype=np.float64)
controls = {}
for name, elem, inputs, dout in cases:
    expected = ref.post_res_backward(*inputs, dout, dtype=np.float64)
    printed = [next(got) for _ in range(4)]
    elems = (elem, elem, "f32", "f32")
    check_vjp(check, name, forward, inputs, [dout],
              [(label, k, expected[k], printed[k], elems[k])
               for k, label in enumerate(("dy", "dx", "dpost", "dcomb"))], rng)
    if expected[0].size:
        controls[elem] = (inputs, [dout], expected, printed)
inputs, cts, expected, printed = controls["bf16"]
check_controls(check, "bf16 dx", printed[1], expected[1], "bf16", (forward, inputs, cts, 1,
                                                                     expected[1]))
inputs, cts, expected, printed = controls["f32"]
check_controls(check, "f32 dcomb", printed[3], expected[3], "f32", (forward, inputs, cts, 3,
                                                                      expected[3]))
check.finish()
