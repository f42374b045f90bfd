# mhc.norm_project and norm_project_grad on tokens whose f32 sum of squares overflows: elements
# of 1e19 and more are ordinary bf16/f32 values, but sum(v^2) is then +inf in f32 and the spec's
# rsqrt(sum / K + eps) is 0 -- mix = 0, a confident wrong answer. mhc computes the factor from the
# sum of the squares scaled by 2^-96 in that case (docs/Guarantees.md), so mix (which does not
# depend on the scale of x) and the gradients match the float64 reference; tokens whose sum is
# finite keep the spec's numerics bit for bit (the other integration tests), and a token holding
# inf gets NaN, not a number.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import (Checker, Program, Tools, Value, check_f32, check_rounded,
                         round_to_dtype)

rng = np.random.default_rng(12)
p = Program()
n, c, m = 4, 13, 24
fn = p.random(rng, (m, n * c), "f32", scale=0.05)
# Token magnitudes: ordinary, just past the overflow (sum ~ 52 * 1e38), deep in it.
magnitudes = np.array([1.0, 1e19, 3e20, 1e30, 2.0])
cases = []
for elem in ("f32", "bf16"):
    data = rng.standard_normal((5, n, c)) * magnitudes[:, None, None] + 0.1 * magnitudes[:, None, None]
    x = p.constant(round_to_dtype(data, elem), elem)
    mix = p.norm_project(x, fn)
    p.output(mix)
    cases.append((f"mix, {elem}, tokens of 1 .. 1e30", "f32", mix))
    huge = p.constant(round_to_dtype(rng.standard_normal((3, n, c)) * 1e25, elem), elem)
    dmix = p.random(rng, (3, m), "f32")
    dx, dfn = p.norm_project_grad(huge, fn, dmix)
    p.output(dx)
    p.output(dfn)
    cases.append((f"dx, {elem}, tokens of 1e25", elem, dx))
    cases.append((f"dfn, {elem}, tokens of 1e25", "f32", dfn))

# A token holding inf (written into x with tensor.insert: constants are finite): its mix is NaN,
# the other tokens are unaffected.
with_inf = rng.standard_normal((3, n, c)).astype(np.float32)
x_inf = p.constant(with_inf, "f32")
with_inf[1, 2, 5] = np.inf
p.emit("%inf = arith.constant 0x7F800000 : f32")
p.emit("%c1 = arith.constant 1 : index")
p.emit("%c2 = arith.constant 2 : index")
p.emit("%c5 = arith.constant 5 : index")
p.emit(f"%x_inf = tensor.insert %inf into {x_inf.name}[%c1, %c2, %c5] : {x_inf.type}")
with np.errstate(invalid="ignore"):    # the reference of that token is NaN as well
    mix_inf = p.norm_project(Value("%x_inf", [3, n, c], "f32", with_inf), fn)
p.output(mix_inf)

got = p.run(Tools.from_argv())
check = Checker()
for (case, elem, v), g in zip(cases, got):
    if elem == "f32":
        check.record(case, *check_f32(g, v.data))
    else:
        check.record(case, *check_rounded(g, v.data, elem))

g = got[-1]
finite = ref.norm_project(np.delete(with_inf, 1, axis=0), fn.data, dtype=np.float64)
check.record("token with inf: NaN", bool(np.all(np.isnan(g[1]))), f"row 1 = {g[1][:3]} ...")
check.record("token with inf: the others", *check_f32(np.delete(g, 1, axis=0), finite))

# Control: the spec's formula evaluated literally in f32 gives mix = 0 for the large tokens,
# which the check rejects.
x32 = round_to_dtype(rng.standard_normal((5, n, c)) * magnitudes[:, None, None], "f32")
v = x32.reshape(5, -1).astype(np.float32)
with np.errstate(over="ignore", divide="ignore"):
    literal = (v @ fn.data.T.astype(np.float32)) / np.sqrt(
        np.sum(v * v, axis=-1, keepdims=True) / np.float32(n * c) + np.float32(1e-6))
check.control("mix from the literal f32 formula",
              check_f32(literal, ref.norm_project(x32, fn.data, dtype=np.float64)))
check.finish()
