# mhc.pre_apply_grad on the CPU path: n in {1, 2, 4, 8}, C in {13, 100}, f32/bf16/f16
# activations, static, dynamic and empty leading dims (T = 0), custom and generic assembly, on
# seeded random data (pre in (0.05, 1), x and du normal).
#
# Every result is checked twice on the data the program ran on: the float64 reference backward
# (mhc.reference.pre_apply_backward) against central differences of the reference forward
# (|ref - fd| <= 1e-6 max|fd| + 1e-9 at 24 sampled elements per result), and the printed result
# against the reference: f32 results within a normwise relative error of 1e-5; bf16/f16 dx within
# one ulp of the correctly rounded reference (+ 1e-5 max|ref|; dx = pre * du is one product,
# rounded once). The controls at the end show that each of these checks rejects spoiled data.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import (Checker, Program, Tools, check_controls, check_vjp, per_token,
                         token_op_cases)

rng = np.random.default_rng(31)
p = Program()
cases = []
for n, elem, c, label, lead, dyn in token_op_cases(f16_leads=slice(1, 3)):
    x = p.random(rng, lead + (n, c), elem)
    pre = p.constant(rng.uniform(0.05, 1.0, lead + (n,)).astype(np.float32), "f32")
    du = p.random(rng, lead + (c,), elem)
    generic = label == "T=5" and c == 13
    operands = (per_token(p, v, len(lead), dyn) for v in (x, pre, du))
    dx, dpre = p.pre_apply_grad(*operands, generic=generic)
    p.output(dx)
    p.output(dpre)
    cases.append((f"n={n} C={c} {elem} {label}" + (" generic" if generic else ""),
                  elem, x, pre, du))

# Mixed staticness: x and du dynamic, pre static (the verifier accepts it).
x = p.random(rng, (6, 4, 13), "bf16")
pre = p.constant(rng.uniform(0.05, 1.0, (6, 4)).astype(np.float32), "f32")
du = p.random(rng, (6, 13), "bf16")
for v in p.pre_apply_grad(p.dynamic_leading(x, 1), pre, p.dynamic_leading(du, 1)):
    p.output(v)
cases.append(("x, du: ? of 6, pre: 6 bf16", "bf16", x, pre, du))

got = iter(p.run(Tools.from_argv()))
check = Checker()
forward = lambda x, pre: ref.pre_apply(x, pre, dtype=np.float64)
controls = {}   # element type -> the data of its last non-empty case
for name, elem, x, pre, du in cases:
    inputs = [x.data, pre.data]
    dx, dpre = ref.pre_apply_backward(*inputs, du.data, dtype=np.float64)
    g_dx, g_dpre = next(got), next(got)
    check_vjp(check, name, forward, inputs, [du.data],
              [("dx", 0, dx, g_dx, elem), ("dpre", 1, dpre, g_dpre, "f32")], rng)
    if dx.size:
        controls[elem] = (inputs, [du.data], dx, dpre, g_dx, g_dpre)
inputs, cts, dx, dpre, g_dx, g_dpre = controls["bf16"]
check_controls(check, "bf16 dx", g_dx, dx, "bf16", (forward, inputs, cts, 0, dx))
inputs, cts, dx, dpre, g_dx, g_dpre = controls["f32"]
check_controls(check, "f32 dpre", g_dpre, dpre, "f32", (forward, inputs, cts, 1, dpre))
check.finish()
