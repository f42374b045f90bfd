# mhc.rms_norm_grad on the CPU path: C in {2, 13, 100}, f32/bf16/f16 u and dout with a weight of
# u's type or f32, eps default and 1e-2, static, dynamic and empty leading dims (T = 0: dweight is
# zero), custom and generic assembly, on seeded random data (u, dout normal, weight uniform in
# (0.5, 1.5)).
#
# Every result is checked twice on the data the program ran on: the float64 reference backward
# (mhc.reference.rms_norm_backward) against central differences of the reference forward
# (|ref - fd| <= 1e-6 max|fd| + 1e-9 at 24 sampled elements per result), and the printed result
# against the reference: f32 results within a normwise relative error of 1e-5; bf16/f16 du and
# dweight within one ulp of the correctly rounded reference (+ 1e-5 max|ref|). The controls at the
# end show that each of these checks rejects spoiled data.
#
# Not C = 1: there du = r g (1 - u^2 r^2) = r g eps / (u^2 + eps), and the f32 difference in the
# op's formula (the spec's kind: one formula for every C) loses about u^2 / eps of its relative
# precision (rms-norm.py runs the forward at C = 1).
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import (LEADING, Checker, Program, Tools, check_controls, check_vjp, per_token)

rng = np.random.default_rng(43)
p = Program()
cases = []
for elem in ("f32", "bf16", "f16"):
    for c in (2, 13, 100):
        for w_elem in ((elem,) if elem == "f32" else (elem, "f32")):
            for label, lead, dyn in LEADING:
                if elem == "f16" and label not in ("T=5", "?=7", "T=0"):
                    continue    # central differences cost the most here
                u = p.random(rng, lead + (c,), elem)
                w = p.random(rng, (c,), w_elem, scale=0.25, offset=1.0)
                dout = p.random(rng, lead + (c,), elem)
                eps = 1e-2 if label == "2x3" else None
                generic = label == "T=5" and c == 13
                du, dw = p.rms_norm_grad(per_token(p, u, len(lead), dyn), w,
                                         per_token(p, dout, len(lead), dyn), eps=eps,
                                         generic=generic)
                p.output(du)
                p.output(dw)
                cases.append((f"C={c} u:{elem} w:{w_elem} {label}"
                              + (f" eps={eps}" if eps else "") + (" generic" if generic else ""),
                              elem, w_elem, u, w, dout, 1e-6 if eps is None else eps))

got = iter(p.run(Tools.from_argv()))
check = Checker()
controls = {}
for name, elem, w_elem, u, w, dout, eps in cases:
    inputs = [u.data, w.data]
    forward = lambda u, w, eps=np.float32(eps): ref.rms_norm(u, w, eps, dtype=np.float64)
    du, dw = ref.rms_norm_backward(*inputs, dout.data, np.float32(eps), dtype=np.float64)
    g_du, g_dw = next(got), next(got)
    check_vjp(check, name, forward, inputs, [dout.data],
              [("du", 0, du, g_du, elem), ("dweight", 1, dw, g_dw, w_elem)], rng)
    if du.size and u.data.shape[-1] > 1:
        controls[(elem, w_elem)] = (forward, inputs, [dout.data], du, dw, g_du, g_dw)
forward, inputs, cts, du, dw, g_du, g_dw = controls[("bf16", "bf16")]
check_controls(check, "bf16 du", g_du, du, "bf16", (forward, inputs, cts, 0, du))
forward, inputs, cts, du, dw, g_du, g_dw = controls[("f32", "f32")]
check_controls(check, "f32 dweight", g_dw, dw, "f32", (forward, inputs, cts, 1, dw))
check.finish()
