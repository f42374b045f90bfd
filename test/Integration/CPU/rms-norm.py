# mhc.rms_norm on the CPU path against the reference: C in {1, 13, 100}, f32/bf16/f16 u with a
# weight of u's type or f32, eps default and 1e-2, static, dynamic and empty leading dims, custom
# and generic assembly, on seeded random data (u normal, weight uniform in (0.5, 1.5)), and rows
# whose f32 sum of squares overflows (bf16 u ~ 1e19: the overflow-free factor, as norm_project's).
# f32 results within a normwise relative error of 1e-5; bf16/f16 within one ulp of the correctly
# rounded reference (+ 1e-5 max|ref|). The controls show that both checks reject spoiled data.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc.testing import (LEADING, Checker, Program, Tools, check_f32, check_rounded, per_token,
                         spoil)

rng = np.random.default_rng(41)
p = Program()
cases = []
for elem in ("f32", "bf16", "f16"):
    for c in (1, 13, 100):
        for w_elem in ((elem,) if elem == "f32" else (elem, "f32")):
            for label, lead, dyn in LEADING:
                u = p.random(rng, lead + (c,), elem)
                w = p.random(rng, (c,), w_elem, scale=0.25, offset=1.0)
                eps = 1e-2 if label == "2x3" else None
                generic = label == "T=5" and c == 13
                o = p.rms_norm(per_token(p, u, len(lead), dyn), w, eps=eps, generic=generic)
                p.output(o)
                cases.append((f"C={c} u:{elem} w:{w_elem} {label}"
                              + (f" eps={eps}" if eps else "") + (" generic" if generic else ""), o))

# Sums of squares beyond f32's range: 1e19 squared times 100 columns.
u = p.random(rng, (3, 100), "bf16", scale=1e19)
w = p.random(rng, (100,), "bf16", scale=0.25, offset=1.0)
big = p.rms_norm(u, w)
p.output(big)
cases.append(("bf16 rows of ~1e19 (f32 sum of squares overflows)", big))

got = list(p.run(Tools.from_argv()))
check = Checker()
for (case, v), g in zip(cases, got):
    check.check(case, g, v)
(_, f32_case), f32_got = next(((cv, g) for cv, g in zip(cases, got)
                              if cv[1].elem == "f32" and g.size > 4))
check.control("f32 result spoiled by 3e-5", check_f32(spoil(f32_got, 3e-5), f32_case.data))
check.control("bf16 result spoiled by 2^-6",
              check_rounded(spoil(got[-1], 2.0 ** -6), big.data, "bf16"))
check.finish()
