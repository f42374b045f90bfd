# A whole mHC sublayer backward written with the gradient ops by hand (no pass): the forward
# (norm_project, split_mixes, sinkhorn, pre_apply, F = tanh, post_res), then, in the order the
# generated backward uses, post_res_grad, F's VJP, pre_apply_grad, sinkhorn_grad,
# split_mixes_grad, norm_project_grad and the two arith.addf of x's cotangents. n in {1, 2, 4, 8},
# C in {13, 100}, f32/bf16/f16, static, dynamic and empty token dims, non-default attributes, on
# seeded random data.
#
# Checked against mhc.reference.mhc_sublayer_backward (float64, no storage rounding), which is
# itself checked against central differences of mhc.reference.mhc_sublayer on the same data
# (|ref - fd| <= 1e-6 max|fd| + 1e-9 at 24 sampled elements per gradient). Printed gradients,
# normwise against max|ref|: f32 activations within 1e-5 (measured <= 7e-7); bf16/f16 within
# 2^-6 / 2^-9 (u, y, the VJP, each dx term and their two sums are rounded to the activation type,
# and the rounded cotangents feed every parameter gradient; measured <= 4.9e-3 / 6.6e-4).
# The controls at the end show that the checks reject spoiled data.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import numpy as np

from mhc import reference as ref
from mhc.testing import (LEADING, Checker, Program, Tools, check_f32, check_fd, fd_gradient,
                         per_token, spoil, vjp_loss)

NORMWISE = {"f32": 1e-5, "bf16": 2.0 ** -6, "f16": 2.0 ** -9}
rng = np.random.default_rng(59)
p = Program()
cases = []


def sublayer_backward(n, c, elem, label, lead, dyn, iterations=None, eps=None, post_mult=None,
                      generic=False):
    m = n * n + 2 * n
    x = p.random(rng, lead + (n, c), elem)
    fn = p.random(rng, (m, n * c), "f32", scale=1.2 / np.sqrt(n * c))
    scale = p.constant(rng.uniform(0.5, 2.0, 3).astype(np.float32), "f32")
    base = p.random(rng, (m,), "f32", scale=0.5)
    dout = p.random(rng, lead + (n, c), elem)
    xd, doutd = (per_token(p, v, len(lead), dyn) for v in (x, dout))
    mix = p.norm_project(xd, fn, eps=eps, generic=generic)
    pre, post, logits = p.split_mixes(mix, scale, base, post_mult=post_mult, generic=generic)
    comb = p.sinkhorn(logits, iterations=iterations, eps=eps, generic=generic)
    u = p.pre_apply(xd, pre, generic=generic)
    y = p.tanh(u)
    dy, dx_res, dpost, dcomb = p.post_res_grad(y, xd, post, comb, doutd, generic=generic)
    du = p.tanh_vjp(u, dy)
    dx_pre, dpre = p.pre_apply_grad(xd, pre, du, generic=generic)
    dlogits = p.sinkhorn_grad(logits, dcomb, iterations=iterations, eps=eps, generic=generic)
    dmix, dscale, dbase = p.split_mixes_grad(mix, scale, base, dpre, dpost, dlogits,
                                             post_mult=post_mult, generic=generic)
    dx_np, dfn = p.norm_project_grad(xd, fn, dmix, eps=eps, generic=generic)
    dx = p.add(p.add(dx_res, dx_pre), dx_np)
    for v in (dx, dfn, dscale, dbase):
        p.output(v)
    attrs = dict(eps=float(np.float32(1e-6 if eps is None else eps)),
                 post_mult=float(np.float32(2.0 if post_mult is None else post_mult)),
                 iterations=20 if iterations is None else iterations,
                 sinkhorn_eps=float(np.float32(1e-6 if eps is None else eps)))
    cases.append((f"n={n} C={c} {elem} {label}" + (" generic" if generic else ""), elem,
                  [x.data, fn.data, scale.data, base.data], dout.data, attrs))


for i, n in enumerate((1, 2, 4, 8)):
    for e, elem in enumerate(("f32", "bf16", "f16")):
        label, lead, dyn = LEADING[(2 * i + e) % len(LEADING)]
        sublayer_backward(n, 13, elem, label, lead, dyn)
for elem in ("f32", "bf16"):
    sublayer_backward(4, 100, elem, "?=5", (5,), True)
    sublayer_backward(4, 13, elem, "iterations=5 eps=1e-3 post_mult=1.5", (3, 2), False,
                      iterations=5, eps=1e-3, post_mult=1.5, generic=(elem == "bf16"))
sublayer_backward(2, 13, "bf16", "T=0", (0,), False)

got = iter(p.run(Tools.from_argv()))
check = Checker()
for name, elem, inputs, dout, attrs in cases:
    def forward(x, fn, scale, base, a=attrs):
        return ref.mhc_sublayer(x, fn, scale, base, np.tanh, dtype=np.float64, **a)

    g = ref.mhc_sublayer_backward(*inputs, np.tanh, lambda u, dy: dy * (1 - np.tanh(u) ** 2),
                                  dout, dtype=np.float64, **attrs)
    expected = [g["dx"], g["dfn"], g["dscale"], g["dbase"]]
    loss = vjp_loss(forward, [dout])
    for k, (gname, e) in enumerate(zip(("dx", "dfn", "dscale", "dbase"), expected)):
        printed = next(got)
        idx, fd = fd_gradient(loss, inputs, k, rng)
        check.record(f"{name} {gname}: reference", *check_fd(e, idx, fd))
        check.record(f"{name} {gname}", *check_f32(printed, e, rtol=NORMWISE[elem]))
        if elem == "bf16" and gname == "dfn" and np.any(e):
            control = (name, printed, e, loss, inputs)
name, printed, e, loss, inputs = control
check.control(f"{name} dfn spoiled by 2^-5", check_f32(spoil(printed, 2.0 ** -5), e,
                                                       rtol=NORMWISE["bf16"]))
idx, fd = fd_gradient(loss, inputs, 1, np.random.default_rng(0), points=16)
bad = np.array(e, np.float64)
bad.flat[idx[int(np.argmax(np.abs(fd)))]] += 1e-4 * np.max(np.abs(fd))
check.control(f"{name} reference dfn off by 1e-4 of max|fd|", check_fd(bad, idx, fd))
check.finish()
