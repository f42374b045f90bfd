# mhc.post_res on the CPU path against the reference: n in {1, 2, 4, 8}, C in {13, 100},
# f32/bf16/f16 activations (f32 accumulation, one rounding), static, dynamic and empty leading
# dims, custom and generic assembly.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc.testing import Checker, Program, Tools, per_token, token_op_cases

rng = np.random.default_rng(4)
p = Program()
cases = []
for n, elem, c, label, lead, dyn in token_op_cases():
    k = len(lead)
    y = p.random(rng, lead + (c,), elem)
    x = p.random(rng, lead + (n, c), elem)
    post = p.constant(rng.uniform(0.0, 2.0, lead + (n,)).astype(np.float32), "f32")
    comb = p.constant(rng.uniform(0.0, 1.0, lead + (n, n)).astype(np.float32), "f32")
    generic = label == "T=5" and c == 13
    out = p.post_res(*(per_token(p, v, k, dyn) for v in (y, x, post, comb)),
                     generic=generic)
    p.output(out)
    cases.append((f"n={n} C={c} {elem} {label}" + (" generic" if generic else ""),
                  out))

got = p.run(Tools.from_argv())
check = Checker()
for (case, v), g in zip(cases, got):
    check.check(case, g, v)
check.finish()
