#!/usr/bin/env python3
"""Checks the *_norm ops (the sublayer's pre-norm fused in, docs/PreNorm.md) on the GPU: each op's
kernels (torch.ops.mhc, the cuda backend) against the torch reference math (mhc.torch.reference)
on the same tensors, and three HyperConnection(norm=nn.RMSNorm) layers on the cuda backend (the
C++ path and the Python steps) against the same layers in float64, forward and every gradient
(check_module says with which tolerance).

    MHC_CACHE=DIR python3 test/Integration/GPU/harness/check_norm_ops.py --C 512 --json out.json

DIR holds the kernel sets of n = 4 and the --C given, bf16, built with
``build_cache --norm-eps 0.0078125`` (torch.finfo(bfloat16).eps, nn.RMSNorm's default eps).

The reference runs on the same bf16 inputs (f32 math, u rounded to bf16 like the kernels'), so the
two agree to the f32 reduction order: relative error ||out - ref|| / ||ref|| <= 1e-2 for bf16
results (one rounding of the stored value), 1e-4 for f32 ones (coefficients, parameter
gradients; dweight, bf16, 1e-2). T = 0, 1, 1000, 16384; outputs are fresh allocations the kernels
must fill. A control checks one op against the reference of another g: it must fail.
"""
import argparse, json, os, sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "python"))
import mhc.torch as mt  # noqa: E402
from mhc.testing import relative_error as relerr  # noqa: E402
from mhc.torch import kernels, reference as R  # noqa: E402

N, ATTRS, NORM_EPS = 4, (20, 1e-6, 1e-6, 2.0), 0.0078125


def inputs(T, C, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    M = N * N + 2 * N
    bf = torch.bfloat16
    v = dict(x=r(T, N, C).to(bf), y=r(T, C).to(bf), fn=r(M, N * C) / (N * C) ** 0.5,
             scale=torch.rand(3, generator=g, device="cuda") + 0.25, base=r(M) * 0.5,
             weight=(torch.rand(C, generator=g, device="cuda") + 0.5).to(bf), g=r(T, C).to(bf),
             dpost=r(T, N), dcomb=r(T, N, N), dx_next=r(T, N, C).to(bf), post_lower=r(T, N).sigmoid())
    v["mix"] = R.norm_project(v["x"], v["fn"], ATTRS[1]).contiguous()
    return v


def check_ops(C, T, out):
    v = inputs(T, C, 11 * T + C)
    fails = 0
    for op in kernels.NORM_OPS:
        args = [v[k] for k in kernels.OP_BUFFERS[op][0]] + [*ATTRS, NORM_EPS]
        got = getattr(torch.ops.mhc, op)(*args)
        want = getattr(R, op)(*args)
        res = {}
        for i, (o, w) in enumerate(zip(got, want)):
            tol = 1e-2 if o.dtype == torch.bfloat16 else 1e-4
            e = relerr(o, w.to(o.dtype) if o.dtype != w.dtype else w)
            res[str(i)] = dict(err=e, tol=tol, ok=bool(e <= tol and o.shape == w.shape))
        bad = [k for k, c in res.items() if not c["ok"]]
        fails += len(bad)
        worst = max(c["err"] / c["tol"] for c in res.values())
        print(f"C={C} T={T:5d} {op:30s} worst err/tol={worst:.3g} {'OK' if not bad else 'FAIL ' + ','.join(bad)}",
              flush=True)
        out.append(dict(C=C, T=T, op=op, results=res))
        if op == "hc_pre_backward_norm" and T == 1000:     # control: another g must fail dx
            other = [v[k] if k != "g" else torch.roll(v["g"], 1, dims=1)
                     for k in kernels.OP_BUFFERS[op][0]]
            e = relerr(got[0], R.hc_pre_backward_norm(*other, *ATTRS, NORM_EPS)[0])
            ok = e > 1e-2
            fails += 0 if ok else 1
            print(f"C={C} control (g rolled): dx err {e:.3g} {'rejected, OK' if ok else 'NOT rejected: FAIL'}")
    return fails


def check_module(C, out):
    """Three HyperConnection(norm=RMSNorm) layers in a row on the cuda backend, on the C++ path
    (chained: hc_post_project + hc_pre_mixed_norm; the dy fold: hc_joint_backward[_lower]_norm)
    and on the Python steps (native.python_path: hc_pre_norm, hc_pre_backward_norm): output and
    every gradient against the same layers in float64 (reference backend), next to the same
    layers on the reference backend in bf16. The bf16 reference is itself 1e-2 to 3e-1 away
    from float64 in the parameter gradients (sums over tokens that cancel; thirty-seventh
    session, bench/results/session37.log), so a path passes where its error is at most twice the
    bf16 reference's plus 1e-3. The second step of each is compared (the first learns the chain);
    the C++ path must fold two of its three post steps; whether it gives the Python steps' bits
    is reported. (That the layers equal the norm inside the sublayer is a CPU test,
    python/tests/test_torch_modules.py.)"""
    import contextlib
    import copy
    from torch import nn
    from mhc.torch import native
    torch.manual_seed(C)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)   # the sublayers and norms; mhc's f32
    ref = nn.Sequential(*[
        mt.HyperConnection(N, C, nn.Linear(C, C, **bf16), backend="reference", layer=i,
                           norm=nn.RMSNorm(C, **bf16)).cuda() for i in range(3)])
    with torch.no_grad():
        for m in ref:
            m.norm.weight.uniform_(0.5, 1.5)
    exact = copy.deepcopy(ref).double()
    fused = copy.deepcopy(ref)
    for m in fused:
        m.backend = "cuda"
    x = torch.randn(2, 500, N, C, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2, 500, N, C, device="cuda", dtype=torch.bfloat16)
    module = native.load()

    def step(model, path, xin=x):
        with native.python_path() if path == "python" else contextlib.nullcontext():
            for _ in range(2):
                model.zero_grad(set_to_none=True)
                xx = xin.clone().requires_grad_()
                folded = module.folded_steps() if module else 0
                y = model(xx)
                (y.double() * w.double()).sum().backward()
        folded = (module.folded_steps() if module else 0) - folded
        return {"y": y.detach(), "dx": xx.grad,
                **{k: p.grad for k, p in model.named_parameters()}}, folded

    truth, _ = step(exact, "reference", x.double())
    bf16_ref, _ = step(ref, "reference")
    ref_err = {k: relerr(bf16_ref[k], truth[k]) for k in truth}
    got = {}
    bad_total = 0
    for path in ("cpp", "python"):
        got[path], folded = step(fused, path)
        res = {}
        for k in truth:
            e = relerr(got[path][k], truth[k])
            tol = 2 * ref_err[k] + 1e-3
            res[k] = dict(err=e, bf16_reference_err=ref_err[k], tol=tol, ok=bool(e <= tol))
        want_folded = 2 if path == "cpp" and module is not None and module.fold_dy() else 0
        res["folded_steps"] = dict(got=folded, want=want_folded, ok=folded == want_folded)
        bad = [k for k, c in res.items() if not c["ok"]]
        worst = max((c for c in res.values() if "err" in c), key=lambda c: c["err"] / c["tol"])
        print(f"C={C} three layers, norm fused, cuda ({path} path) vs float64: worst err/tol "
              f"{worst['err'] / worst['tol']:.2g} (err {worst['err']:.2g}, the bf16 reference's "
              f"{worst['bf16_reference_err']:.2g}), folded steps {folded}"
              + (" OK" if not bad else " FAIL " + ",".join(bad)), flush=True)
        out.append(dict(C=C, module=res, path=path))
        bad_total += len(bad)
    same = all(torch.equal(got["cpp"][k], got["python"][k]) for k in truth)
    print(f"C={C} the C++ path's results {'equal' if same else 'differ from'} the Python steps' "
          "bit for bit", flush=True)
    out.append(dict(C=C, cpp_equals_python=same))
    return bad_total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--C", type=int, action="append", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    out, fails = [], 0
    for C in a.C:
        for T in (0, 1, 1000, 16384):
            fails += check_ops(C, T, out)
        fails += check_module(C, out)
    json.dump(dict(device=torch.cuda.get_device_name(), checks=out, failures=fails),
              open(a.json, "w"), indent=1)
    print(f"failures: {fails}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
