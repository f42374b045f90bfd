# A full mHC sublayer on the CPU path: norm_project -> split_mixes -> sinkhorn -> pre_apply ->
# F = tanh -> post_res, then collapse, for n in {1, 2, 4, 8}, f32/bf16/f16 activations, C = 13
# and 100, static, dynamic and empty leading dims, and non-default attributes (iterations = 5,
# eps = 1e-3, post_mult = 1.5).
#
# f32: every printed value (mix, comb, u, x_next, h) within the f32 bar of the float64 reference.
# bf16/f16: the coefficients (f32) within the f32 bar; u, y and x_next stage by stage, each against
# the reference applied to the program's own rounded inputs of that stage (u from x and the
# reference pre; y = round(tanh(u_got)); x_next from y_got), within 1 ulp; and x_next end to end
# against mhc.reference.mhc_sublayer(storage=...) within 2 ulps of max|x_next| (normwise): one
# flipped rounding of u or y moves x_next by up to post_mult ulps of y.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import (LEADING, Checker, Program, Tools, check_f32, check_rounded, per_token,
                         round_to_dtype)

ULP_BITS = {"bf16": 8, "f16": 11}
rng = np.random.default_rng(1234)
p = Program()
cases = []


def sublayer(n, c, elem, label, lead, dyn, iterations=None, eps=None, post_mult=None,
             generic=False):
    m = n * n + 2 * n
    x = p.random(rng, lead + (n, c), elem)
    fn = p.random(rng, (m, n * c), "f32", scale=0.3)
    scale = p.constant(rng.uniform(0.5, 2.0, 3).astype(np.float32), "f32")
    base = p.random(rng, (m,), "f32", scale=0.5)
    xd = per_token(p, x, len(lead), dyn)
    mix = p.norm_project(xd, fn, eps=eps, generic=generic)
    pre, post, logits = p.split_mixes(mix, scale, base, post_mult=post_mult, generic=generic)
    comb = p.sinkhorn(logits, iterations=iterations, eps=eps, generic=generic)
    u = p.pre_apply(xd, pre, generic=generic)
    y = p.tanh(u)
    xn = p.post_res(y, xd, post, comb, generic=generic)
    h = p.collapse(xn, generic=generic)
    for v in (mix, comb, u, y, xn, h):
        p.output(v)
    attrs = dict(eps=1e-6 if eps is None else float(np.float32(eps)),
                 post_mult=2.0 if post_mult is None else float(np.float32(post_mult)),
                 iterations=20 if iterations is None else iterations,
                 sinkhorn_eps=1e-6 if eps is None else float(np.float32(eps)))
    cases.append(dict(name=f"n={n} C={c} {elem} {label}", elem=elem, x=x, fn=fn, scale=scale,
                      base=base, values=(mix, comb, u, y, xn, h), attrs=attrs))


# Each (n, element type) pair takes two of the leading-dim variants in turn, so every variant
# meets every n and every element type once or more while the program stays small enough to JIT.
for i, n in enumerate((1, 2, 4, 8)):
    for e, elem in enumerate(("f32", "bf16", "f16")):
        k = 2 * (i + e)
        for label, lead, dyn in (LEADING[k % len(LEADING)], LEADING[(k + 1) % len(LEADING)]):
            sublayer(n, 13, elem, label, lead, dyn)
for elem in ("f32", "bf16", "f16"):
    sublayer(4, 100, elem, "?=5", (5,), True)
for elem in ("f32", "bf16"):
    sublayer(4, 13, elem, "iterations=5 eps=1e-3 post_mult=1.5", (3, 2), False, iterations=5,
             eps=1e-3, post_mult=1.5)
    sublayer(4, 13, elem, "generic form, non-default attributes", (6,), True, iterations=5,
             eps=1e-3, post_mult=1.5, generic=True)

outputs = p.run(Tools.from_argv())
# The same program grouped into kernels by --mhc-fuse first: the CPU path inlines the mhc.fused
# groups, so every printed value must be bit-identical.
fused = p.run(Tools.from_argv(opt_flags=["--mhc-fuse", "--mhc-cpu-pipeline"]))
got = iter(outputs)
check = Checker()
check.record("--mhc-fuse then --mhc-cpu-pipeline: bit-identical outputs",
             all(np.array_equal(a, b) for a, b in zip(outputs, fused)) and len(outputs) == len(fused),
             f"{len(fused)} printed arrays compared")
for case in cases:
    name, elem, a = case["name"], case["elem"], case["attrs"]
    mix, comb, u, y, xn, h = case["values"]
    g = {k: next(got) for k in ("mix", "comb", "u", "y", "xn", "h")}
    check.check(f"{name} mix", g["mix"], mix)
    check.check(f"{name} comb", g["comb"], comb)
    if elem == "f32":
        # The whole chain against float64 (no intermediate rounding in f32 storage).
        check.check(f"{name} u", g["u"], u)
        check.check(f"{name} x_next", g["xn"], xn)
        check.check(f"{name} h", g["h"], h)
        continue
    x64 = np.asarray(case["x"].data, np.float64)
    # Stage by stage, each stage from the program's own (rounded) inputs.
    check.record(f"{name} u", *check_rounded(g["u"], u.data, elem))
    check.record(f"{name} y", *check_rounded(g["y"], np.tanh(g["u"].astype(np.float64)), elem))
    pre_ref, post_ref, logits_ref = ref.split_mixes(mix.data, case["scale"].data,
                                                    case["base"].data, a["post_mult"], 1e-6,
                                                    dtype=np.float64)
    staged_xn = ref.post_res(g["y"], x64, post_ref, comb.data, dtype=np.float64)
    check.record(f"{name} x_next (staged)", *check_rounded(g["xn"], staged_xn, elem))
    check.record(f"{name} h (staged)",
                 *check_rounded(g["h"], ref.collapse(g["xn"], dtype=np.float64), elem))
    # End to end against the reference's storage emulation.
    e2e = ref.mhc_sublayer(x64, case["fn"].data, case["scale"].data, case["base"].data, np.tanh,
                           storage=elem, dtype=np.float64, **a)
    if e2e.size:
        bound = 2.0 ** (2 - ULP_BITS[elem])    # 2 ulps of max|x_next|, relative
        ok, msg = check_f32(g["xn"], e2e, rtol=bound)
        check.record(f"{name} x_next (end to end)", ok, msg)
check.finish()
