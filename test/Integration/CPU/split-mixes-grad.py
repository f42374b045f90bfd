# mhc.split_mixes_grad on the CPU path: n in {1, 2, 4, 8}, static, dynamic and empty leading
# dims (T = 0, where dscale and dbase are sums over no tokens: zero), mixed staticness, default
# and non-default post_mult/pre_eps, custom and generic assembly, on seeded random data
# (mix ~ 2 N(0, 1), scale in (0.5, 2), base ~ 0.5 N(0, 1), cotangents ~ N(0, 1)). All results are
# f32.
#
# Every result is checked twice on the data the program ran on: the float64 reference backward
# (mhc.reference.split_mixes_backward) against central differences of the reference forward
# (|ref - fd| <= 1e-6 max|fd| + 1e-9 at 24 sampled elements per result), and the printed result
# against the reference within a normwise relative error of 1e-5. The controls at the end show
# that both checks reject spoiled data.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import (LEADING, Checker, Program, Tools, check_controls, check_vjp,
                         per_token)

rng = np.random.default_rng(47)
p = Program()
cases = []


def split_mixes_grad(label, n, lead, dyn, post_mult=None, pre_eps=None, generic=False,
                     dynamic_operands=(0, 3, 4, 5)):
    m = n * n + 2 * n
    mix = p.random(rng, lead + (m,), "f32", scale=2.0)
    scale = p.constant(rng.uniform(0.5, 2.0, 3).astype(np.float32), "f32")
    base = p.random(rng, (m,), "f32", scale=0.5)
    dpre = p.random(rng, lead + (n,), "f32")
    dpost = p.random(rng, lead + (n,), "f32")
    dlogits = p.random(rng, lead + (n, n), "f32")
    operands = [per_token(p, v, len(lead), dyn and k in dynamic_operands)
                for k, v in enumerate((mix, scale, base, dpre, dpost, dlogits))]
    for v in p.split_mixes_grad(*operands, post_mult=post_mult, pre_eps=pre_eps, generic=generic):
        p.output(v)
    attrs = dict(post_mult=float(np.float32(2.0 if post_mult is None else post_mult)),
                 pre_eps=float(np.float32(1e-6 if pre_eps is None else pre_eps)))
    cases.append((f"n={n} {label}" + (" generic" if generic else ""),
                  [mix.data, scale.data, base.data], [dpre.data, dpost.data, dlogits.data], attrs))


for n in (1, 2, 4, 8):
    for label, lead, dyn in LEADING:
        split_mixes_grad(label, n, lead, dyn, generic=(label == "2x3"))
split_mixes_grad("post_mult=1.5 pre_eps=1e-3", 4, (4, 3), False, post_mult=1.5, pre_eps=1e-3)
split_mixes_grad("generic post_mult=0.5", 4, (5,), True, post_mult=0.5, generic=True)
split_mixes_grad("mix ? of 6, cotangents static", 2, (6,), True, dynamic_operands=(0,))

got = iter(p.run(Tools.from_argv()))
check = Checker()
for name, inputs, cotangents, attrs in cases:
    forward = lambda mix, scale, base, a=attrs: ref.split_mixes(mix, scale, base, dtype=np.float64,
                                                                **a)
    expected = ref.split_mixes_backward(*inputs, *cotangents, dtype=np.float64, **attrs)
    printed = [next(got) for _ in range(3)]
    check_vjp(check, name, forward, inputs, cotangents,
              [(label, k, expected[k], printed[k], "f32")
               for k, label in enumerate(("dmix", "dscale", "dbase"))], rng)
check_controls(check, "dmix", printed[0], expected[0], "f32",
               (forward, inputs, cotangents, 0, expected[0]))
check_controls(check, "dscale", printed[1], expected[1], "f32",
               (forward, inputs, cotangents, 1, expected[1]))
check.finish()
