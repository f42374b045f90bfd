# mhc.split_mixes on the CPU path against the float64 reference: n in {1, 2, 4, 8}, static,
# dynamic and empty leading dims, default and non-default post_mult/pre_eps, custom and generic
# assembly. All three results (pre, post, logits) are checked.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc.testing import LEADING, Checker, Program, Tools, per_token

rng = np.random.default_rng(5)
p = Program()
cases = []


def split(mix, scale, base, label, **attrs):
    outs = p.split_mixes(mix, scale, base, **attrs)
    for name, v in zip(("pre", "post", "logits"), outs):
        p.output(v)
        cases.append((f"{label} {name}", v))


for n in (1, 2, 4, 8):
    m = n * n + 2 * n
    for label, lead, dyn in LEADING:
        mix = p.random(rng, lead + (m,), "f32", scale=2.0)
        scale = p.constant(rng.uniform(0.5, 2.0, 3).astype(np.float32), "f32")
        base = p.random(rng, (m,), "f32", scale=0.5)
        split(per_token(p, mix, len(lead), dyn), scale, base, f"n={n} {label}",
              generic=(label == "2x3"))
mix = p.random(rng, (4, 3, 24), "f32", scale=2.0)
scale = p.constant(np.array([0.7, 1.1, 1.9], np.float32), "f32")
base = p.random(rng, (24,), "f32", scale=0.5)
split(mix, scale, base, "post_mult=1.5 pre_eps=1e-3", post_mult=1.5, pre_eps=1e-3)
split(mix, scale, base, "generic post_mult=1.5", post_mult=1.5, pre_eps=1e-6, generic=True)

got = p.run(Tools.from_argv())
check = Checker()
for (case, v), g in zip(cases, got):
    check.check(case, g, v)
check.finish()
