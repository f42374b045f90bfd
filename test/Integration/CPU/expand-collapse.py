# mhc.expand and mhc.collapse on the CPU path against the reference: n in {1, 2, 4, 8}, C in {13,
# 100}, f32/bf16/f16, static, dynamic and empty leading dims, custom and generic assembly.
# expand is a copy (must be exact); collapse sums in f32 and rounds once.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc.testing import Checker, Program, Tools, per_token, token_op_cases

rng = np.random.default_rng(11)
p = Program()
cases = []
for n, elem, c, label, lead, dyn in token_op_cases():
    generic = label == "2x3" and c == 13
    h = p.random(rng, lead + (c,), elem)
    x = p.expand(per_token(p, h, len(lead), dyn), n, generic=generic)
    p.output(x)
    cases.append((f"expand n={n} C={c} {elem} {label}", x, True))
    xs = p.random(rng, lead + (n, c), elem)
    s = p.collapse(per_token(p, xs, len(lead), dyn), generic=generic)
    p.output(s)
    cases.append((f"collapse n={n} C={c} {elem} {label}", s, False))

got = p.run(Tools.from_argv())
check = Checker()
for (case, v, exact), g in zip(cases, got):
    if exact:
        check.record(case, np.array_equal(g, v.data), "bit-exact copy")
    else:
        check.check(case, g, v)
check.finish()
