# mhc.norm_project on the CPU path against the float64 reference: n in {1, 2, 4, 8}, C in {13,
# 100}, f32/bf16/f16 activations (the result is always f32), static, dynamic and empty leading dims,
# a non-default eps, custom and generic assembly.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc.testing import LEADING, Checker, Program, Tools, per_token

rng = np.random.default_rng(7)
p = Program()
cases = []
for n in (1, 2, 4, 8):
    m = n * n + 2 * n
    for elem in ("f32", "bf16", "f16"):
        # C = 100 with n = 8 would make fn 80x800; n <= 4 covers the wide case.
        for c in ((13, 100) if n <= 4 else (13,)):
            fn = p.random(rng, (m, n * c), "f32", scale=0.05)
            leads = LEADING if c == 13 else [l for l in LEADING if l[0] in ("2x3", "?=7")]
            for label, lead, dyn in leads:
                x = p.random(rng, lead + (n, c), elem, scale=1.5, offset=0.2)
                generic = label == "?=7" and c == 13
                mix = p.norm_project(per_token(p, x, len(lead), dyn), fn, generic=generic)
                p.output(mix)
                cases.append((f"n={n} C={c} x:{elem} {label}" + (" generic" if generic else ""),
                               mix))
# eps matters when the mean square is small: scale x down so that eps = 1e-3 dominates.
fn = p.random(rng, (24, 4 * 13), "f32", scale=0.05)
x = p.random(rng, (3, 4, 4, 13), "f32", scale=0.02)
mix = p.norm_project(x, fn, eps=1e-3)
p.output(mix)
cases.append(("eps=1e-3 small x", mix))

got = p.run(Tools.from_argv())
check = Checker()
for (case, v), g in zip(cases, got):
    check.check(case, g, v)
check.finish()
