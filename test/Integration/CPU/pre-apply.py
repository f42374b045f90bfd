# mhc.pre_apply on the CPU path against the reference: n in {1, 2, 4, 8}, C in {13, 100},
# f32/bf16/f16 activations (f32 accumulation, one rounding), static, dynamic and empty leading
# dims, custom and generic assembly.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc.testing import Checker, Program, Tools, per_token, token_op_cases

rng = np.random.default_rng(3)
p = Program()
cases = []
for n, elem, c, label, lead, dyn in token_op_cases():
    x = p.random(rng, lead + (n, c), elem)
    pre = p.constant(rng.uniform(0.05, 1.0, lead + (n,)).astype(np.float32), "f32")
    generic = label == "T=5" and c == 13
    u = p.pre_apply(per_token(p, x, len(lead), dyn),
                    per_token(p, pre, len(lead), dyn), generic=generic)
    p.output(u)
    cases.append((f"n={n} C={c} {elem} {label}" + (" generic" if generic else ""), u))
# Mixed staticness: x dynamic, pre static (the verifier accepts it).
x = p.random(rng, (6, 4, 13), "bf16")
pre = p.constant(rng.uniform(0.05, 1.0, (6, 4)).astype(np.float32), "f32")
u = p.pre_apply(p.dynamic_leading(x, 1), pre)
p.output(u)
cases.append(("x:? pre:6 bf16", u))

got = p.run(Tools.from_argv())
check = Checker()
for (case, v), g in zip(cases, got):
    check.check(case, g, v)
check.finish()
