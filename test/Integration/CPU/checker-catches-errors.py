# The numeric checks of these tests can fail: with MHC_CHECK_PERTURB the checker multiplies the
# largest element of every printed result by (1 + r) before comparing. 3e-5 is three times the f32
# bar, and 2^-6 is two bf16 ulps or more; both must be reported as failures, while the same
# program passes unperturbed.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s --check-prefix=CLEAN
# RUN: env MHC_CHECK_PERTURB=3e-5 not %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s --check-prefix=F32
# RUN: env MHC_CHECK_PERTURB=0.015625 not %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s --check-prefix=BF16
#
# CLEAN: PASS: f32 sinkhorn
# CLEAN: PASS: f32 pre_apply
# CLEAN: PASS: bf16 post_res
# CLEAN: 3 of 3 checks passed
# F32: FAIL: f32 sinkhorn
# F32: FAIL: f32 pre_apply
# BF16: FAIL: bf16 post_res
import numpy as np

from mhc.testing import Checker, Program, Tools

rng = np.random.default_rng(99)
p = Program()
c = p.sinkhorn(p.random(rng, (4, 4, 4), "f32", scale=2.0))
x = p.random(rng, (4, 4, 13), "f32")
pre = p.constant(rng.uniform(0.1, 1.0, (4, 4)).astype(np.float32), "f32")
u = p.pre_apply(x, pre)
xb = p.random(rng, (4, 4, 13), "bf16")
yb = p.random(rng, (4, 13), "bf16")
post = p.constant(rng.uniform(0.0, 2.0, (4, 4)).astype(np.float32), "f32")
comb = p.constant(rng.uniform(0.0, 1.0, (4, 4, 4)).astype(np.float32), "f32")
xn = p.post_res(yb, xb, post, comb)
for v in (c, u, xn):
    p.output(v)
got = p.run(Tools.from_argv())
check = Checker()
for case, g, v in zip(("f32 sinkhorn", "f32 pre_apply", "bf16 post_res"), got, (c, u, xn)):
    check.check(case, g, v)
check.finish()
