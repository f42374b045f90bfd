# mhc.norm_project_grad on the CPU path: n in {1, 2, 4, 8}, C in {13, 100}, f32/bf16/f16
# activations (dfn is always f32), static, dynamic and empty leading dims (T = 0, where dfn is a
# sum over no tokens: zero), a non-default eps with small x (eps dominating the mean square),
# custom and generic assembly (the spec's generic example verbatim), on seeded random data
# (x ~ 1.5 N(0, 1) + 0.2, fn ~ 0.05 N(0, 1), dmix ~ N(0, 1)).
#
# Every result is checked twice on the data the program ran on: the float64 reference backward
# (mhc.reference.norm_project_backward) against central differences of the reference forward
# (|ref - fd| <= 1e-6 max|fd| + 1e-9 at 24 sampled elements per result), and the printed result
# against the reference: dfn and f32 dx within a normwise relative error of 1e-5; bf16/f16 dx
# (f32 sums, rounded once) within one ulp of the correctly rounded reference (+ 1e-5 max|ref|).
# The controls at the end show that each of these checks rejects spoiled data.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import (LEADING, Checker, Program, Tools, Value, check_controls, check_vjp,
                         per_token)

rng = np.random.default_rng(43)
p = Program()
cases = []


def norm_project_grad(label, elem, n, c, lead, dyn, eps=None, x_scale=1.5, generic=False):
    m = n * n + 2 * n
    x = p.random(rng, lead + (n, c), elem, scale=x_scale, offset=0.2 * x_scale / 1.5)
    fn = p.random(rng, (m, n * c), "f32", scale=0.05)
    dmix = p.random(rng, lead + (m,), "f32")
    xd, dmixd = (per_token(p, v, len(lead), dyn) for v in (x, dmix))
    for v in p.norm_project_grad(xd, fn, dmixd, eps=eps, generic=generic):
        p.output(v)
    cases.append((f"n={n} C={c} {elem} {label}" + (" generic" if generic else ""), elem,
                  [x.data, fn.data], dmix.data, float(np.float32(1e-6 if eps is None else eps))))


for n in (1, 2, 4, 8):
    for elem in ("f32", "bf16", "f16"):
        # C = 100 with n = 8 would make fn 80x800; n <= 4 covers the wide case.
        for c in ((13, 100) if n <= 4 else (13,)):
            leads = LEADING if c == 13 else [l for l in LEADING if l[0] in ("2x3", "?=7")]
            if elem == "f16":
                leads = leads[1:3]
            for label, lead, dyn in leads:
                norm_project_grad(label, elem, n, c, lead, dyn,
                                  generic=(label == "?=7" and c == 13))
for elem in ("f32", "bf16"):
    norm_project_grad("eps=1e-3 small x", elem, 4, 13, (3, 4), False, eps=1e-3, x_scale=0.02)
# The spec's generic-form example, character for character (n = 4, C = 12, T = 3).
x = p.random(rng, (3, 4, 12), "f32")
fn = p.random(rng, (24, 48), "f32", scale=0.05)
dmix = p.random(rng, (3, 24), "f32")
p.emit(f'%dx, %dfn = "mhc.norm_project_grad"({x.name}, {fn.name}, {dmix.name}) '
       '<{eps = 1.0e-06 : f32}> : (tensor<3x4x12xf32>, tensor<24x48xf32>, tensor<3x24xf32>) '
       '-> (tensor<3x4x12xf32>, tensor<24x48xf32>)')
spec = ref.norm_project_backward(x.data, fn.data, dmix.data, float(np.float32(1e-6)),
                                 dtype=np.float64)
p.output(Value("%dx", [3, 4, 12], "f32", spec[0]))
p.output(Value("%dfn", [24, 48], "f32", spec[1]))
cases.append(("spec example, verbatim", "f32", [x.data, fn.data], dmix.data,
              float(np.float32(1e-6))))

got = iter(p.run(Tools.from_argv()))
check = Checker()
controls = {}
for name, elem, inputs, dmix, eps in cases:
    forward = lambda x, fn, eps=eps: ref.norm_project(x, fn, eps, dtype=np.float64)
    dx, dfn = ref.norm_project_backward(*inputs, dmix, eps, dtype=np.float64)
    g_dx, g_dfn = next(got), next(got)
    check_vjp(check, name, forward, inputs, [dmix],
              [("dx", 0, dx, g_dx, elem), ("dfn", 1, dfn, g_dfn, "f32")], rng)
    if dx.size:
        controls[elem] = (forward, inputs, [dmix], dx, dfn, g_dx, g_dfn)
forward, inputs, cts, dx, dfn, g_dx, g_dfn = controls["bf16"]
check_controls(check, "bf16 dx", g_dx, dx, "bf16", (forward, inputs, cts, 0, dx))
check_controls(check, "dfn", g_dfn, dfn, "f32", (forward, inputs, cts, 1, dfn))
check.finish()
