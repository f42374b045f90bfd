#!/usr/bin/env python3
"""Checks the backward kernels on the GPU against PyTorch autograd of the reference math in float64.

Runs on the GPU machine with a kernel cache built here (`python -m mhc.torch.build_cache`, one
kernel set per (n, C, dtype): the ops of mhc.torch.kernel_build) and carried along:

  MHC_CACHE=.mhc-cache python3 test/Integration/GPU/harness/check_backward.py --json out.json

For every kernel set and T in --Ts (default 0, 1, 1000, 16384), on seeded random data (never
zeros; at T = 0 the parameter gradients must come back as zeros, written by the kernels):
  * forward: hc_pre (norm_project + split + Sinkhorn + pre_apply) gives u, post, comb and the mix
    the backward takes (the forward's saved value, as in training);
  * fused: hc_sublayer_backward (the whole sublayer: rows (+ tokens) + cols + params kernels);
  * split: hc_post_backward then hc_pre_backward (the two halves around a sublayer's own VJP);
  * reference: torch.autograd of spec section 3 (x -> u, x_next) in float64 on the GPU, inputs
    the very values the kernels got (x, y, du, dx_next as stored in the activation dtype);
  * relative errors ||out - ref|| / ||ref|| per gradient (dx, dy, dfn, dscale, dbase);
    tolerances: activation gradients 1e-2 for bf16/f16 (the bf16 rounding of the stored result is
    ~2e-3), 5e-4 for f32; parameter gradients (f32) 5e-4;
  * misaligned: the fused backward on views one element off 16 bytes (fn 4 bytes off 8): the same
    values as the aligned run within 1e-6 (scalar paths);
  * determinism: the fused backward twice on the same inputs: bit-identical gradients;
  * overflow: token 1 scaled by 1e30 (its f32 sum of squares overflows): the fused backward
    against the reference as above (its share of dfn needs the rescaled norm factor);
  * the dy fold (sets that have its ops): hc_joint_backward, hc_joint_backward_lower and
    hc_pre_backward_lower give the gradients of the ops they stand for bit for bit, and
    dy_lower is hc_post_backward's dy of their dx (check_dy_fold);
  * control: the check is re-run against a reference of a different dx_next (one stream swapped);
    it must fail, so a passing check means something.
Outputs are poisoned (NaN) before each call so unwritten elements fail.
"""
import argparse, json, os, sys, time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "python"))
from mhc.torch import kernels as K  # noqa: E402
from mhc.torch import native  # noqa: E402
from mhc.testing import relative_error as relerr  # noqa: E402

DT = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
ACT_TOL = {"bf16": 1e-2, "f16": 1e-2, "f32": 5e-4}
PARAM_TOL = 5e-4
GRADS = ("dx", "dy", "dfn", "dscale", "dbase")


def reference(x, y, fn, scale, base, du, dxn, key):
    """Spec section 3 forward in float64 and its autograd gradients."""
    x, y, fn, scale, base = (t.detach().double().requires_grad_() for t in (x, y, fn, scale, base))
    n, C = key.n, key.C
    v = x.reshape(-1, n * C)
    r = torch.rsqrt((v * v).sum(-1, keepdim=True) / (n * C) + key.eps)
    mix = (v @ fn.t()) * r
    se = torch.cat([scale[0].expand(n), scale[1].expand(n), scale[2].expand(n * n)])
    a = mix * se + base
    pre = torch.sigmoid(a[:, :n]) + key.pre_eps
    post = torch.sigmoid(a[:, n:2 * n]) * key.post_mult
    P = torch.softmax(a[:, 2 * n:].reshape(-1, n, n), dim=-1) + key.eps
    P = P / (P.sum(-2, keepdim=True) + key.eps)
    for _ in range(key.iterations - 1):
        P = P / (P.sum(-1, keepdim=True) + key.eps)
        P = P / (P.sum(-2, keepdim=True) + key.eps)
    xs = x.reshape(-1, n, C)
    u = torch.einsum("ti,tic->tc", pre, xs)
    xn = post[:, :, None] * y.reshape(-1, 1, C) + torch.einsum("tij,tic->tjc", P, xs)
    gx, gy, gfn, gs, gb = torch.autograd.grad(
        (u, xn), (x, y, fn, scale, base),
        (du.double().reshape(u.shape), dxn.double().reshape(xn.shape)))
    return dict(dx=gx, dy=gy, dfn=gfn, dscale=gs, dbase=gb)


def tolerance(key, grad):
    return ACT_TOL[key.dtype] if grad in ("dx", "dy") else PARAM_TOL


def compare(res, name, out, ref, key):
    """res[name.grad] for every gradient of `out` against the float64 reference `ref`."""
    for g in GRADS:
        tol, e = tolerance(key, g), relerr(out[g], ref[g])
        res[f"{name}.{g}"] = dict(err=e, tol=tol, ok=bool(e <= tol))


def poison(results):
    for r in results:
        if r.is_floating_point():
            r.fill_(float("nan"))
    return results


def run(ks, op, *args):
    """One op of the kernel set, with NaN-poisoned results (allocated here, then filled; the
    Python launch path, which allocates through K.allocate_results)."""
    orig = K.allocate_results

    def poisoned(o, a):
        return poison(orig(o, a))
    K.allocate_results = poisoned
    try:
        with native.python_path():      # the C++ path allocates its own results: no poison
            out = ks.run(op, *args, stream=torch.cuda.current_stream().cuda_stream)
    finally:
        K.allocate_results = orig
    torch.cuda.synchronize()
    return out


def inputs(key, T, gen):
    n, C, M, d = key.n, key.C, key.M, DT[key.dtype]
    dev = "cuda"
    x = torch.randn((T, n, C), generator=gen, device=dev).to(d)
    y = torch.randn((T, C), generator=gen, device=dev).to(d)
    fn = torch.randn((M, n * C), generator=gen, device=dev) / (n * C) ** 0.5
    scale = torch.rand(3, generator=gen, device=dev) * 1.5 + 0.25
    base = torch.randn(M, generator=gen, device=dev) * 0.5
    du = torch.randn((T, C), generator=gen, device=dev).to(d)
    dxn = torch.randn((T, n, C), generator=gen, device=dev).to(d)
    return x, y, fn, scale, base, du, dxn


def misaligned(t):
    """The same values one element further into a fresh buffer."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


def check_one(ks, key, T, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x, y, fn, scale, base, du, dxn = inputs(key, T, gen)
    u, post, comb, mix = run(ks, "hc_pre", x, fn, scale, base)
    fused = dict(zip(GRADS, run(ks, "hc_sublayer_backward", x, y, fn, scale, base, mix, du, dxn)))
    dy2, dpost, dcomb = run(ks, "hc_post_backward", y, x, post, comb, dxn)
    dx2, dfn2, ds2, db2 = run(ks, "hc_pre_backward", x, fn, scale, base, mix, du, dpost, dcomb, dxn)
    split = dict(dx=dx2, dy=dy2, dfn=dfn2, dscale=ds2, dbase=db2)
    ref = reference(x, y, fn, scale, base, du, dxn, key)
    res = {}
    compare(res, "fused", fused, ref, key)
    compare(res, "split", split, ref, key)
    # Misaligned views (scalar paths) and determinism.
    args = [misaligned(t) for t in (x, y, fn)] + [scale, base, mix] + [misaligned(t) for t in (du, dxn)]
    again = dict(zip(GRADS, run(ks, "hc_sublayer_backward", *args)))
    twice = dict(zip(GRADS, run(ks, "hc_sublayer_backward", x, y, fn, scale, base, mix, du, dxn)))
    for g in GRADS:
        e = relerr(again[g], fused[g])
        res[f"misaligned.{g}"] = dict(err=e, tol=1e-6, ok=bool(e <= 1e-6))
        same = bool(torch.equal(twice[g], fused[g]))
        res[f"deterministic.{g}"] = dict(err=0.0 if same else 1.0, tol=0.0, ok=same)
    # A token whose f32 sum of squares overflows (elements ~1e30): its r comes
    # from the rescaled re-read (docs/Guarantees.md), so its O(1) share of dfn
    # (dm x^T with dm ~ r) must be there; with r = 0 dfn misses it.
    if T > 1 and key.dtype != "f16":       # 1e30 is inf in f16
        xo = x.clone()
        xo[1] *= 1e30
        mix_o = run(ks, "hc_pre", xo, fn, scale, base)[3]
        out = dict(zip(GRADS, run(ks, "hc_sublayer_backward", xo, y, fn, scale, base, mix_o, du,
                                  dxn)))
        compare(res, "overflow", out, reference(xo, y, fn, scale, base, du, dxn, key), key)
    if "hc_joint_backward_lower" in ks.plans:
        check_dy_fold(res, ks, key, gen, (x, y, fn, scale, base, mix, du, dxn), post, comb,
                      (dpost, dcomb), fused, split)
    # Control: a different cotangent in the reference must be caught.
    if key.n > 1 and T > 1:
        wrong = reference(x, y, fn, scale, base, du, dxn.roll(1, dims=1), key)
        worst = max(relerr(fused[g], wrong[g]) / tolerance(key, g) for g in GRADS)
        res["control.detected"] = dict(err=worst, tol=1.0, ok=bool(worst > 1.0))
    return res


def check_dy_fold(res, ks, key, gen, args, post, comb, sums, fused, split):
    """The dy fold's ops (sets built since the twenty-third session): hc_joint_backward and
    hc_joint_backward_lower must give hc_sublayer_backward's dx, dfn, dscale, dbase and
    hc_pre_backward_lower hc_pre_backward's, bit for bit (the same kernels, without dy or with
    dy_lower besides); dy_lower must be hc_post_backward's dy of their dx with post_lower, bit
    for bit (the same sum in the same order, from dx as stored)."""
    x, y, fn, scale, base, mix, du, dxn = args
    T, n = x.shape[0], key.n
    post_lower = torch.rand((T, n), generator=gen, device=x.device) * 2
    joint = run(ks, "hc_joint_backward", *args)
    joint_lower = run(ks, "hc_joint_backward_lower", *args, post_lower)
    pre_lower = run(ks, "hc_pre_backward_lower", x, fn, scale, base, mix, du, *sums, dxn,
                    post_lower)
    names = ("dx", "dfn", "dscale", "dbase")
    for name, out, want in (("joint", joint, fused), ("joint_lower", joint_lower, fused),
                            ("pre_lower", pre_lower, split)):
        same = all(torch.equal(o, want[g]) for o, g in zip(out[:4], names))
        res[f"fold.{name}.same"] = dict(err=0.0 if same else 1.0, tol=0.0, ok=same)
    for name, out in (("joint_lower", joint_lower), ("pre_lower", pre_lower)):
        want = run(ks, "hc_post_backward", y, x, post_lower, comb, out[0])[0]
        same = bool(torch.equal(out[4], want))
        res[f"fold.{name}.dy_lower"] = dict(err=0.0 if same else relerr(out[4], want), tol=0.0,
                                           ok=same)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=os.environ.get("MHC_CACHE", ".mhc-cache"))
    ap.add_argument("--json", required=True)
    ap.add_argument("--Ts", default="0,1,1000,16384")
    a = ap.parse_args()
    root = os.path.abspath(a.cache)
    runtime = K.load_runtime(K.find_runtime(root))
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, checks=[])
    failures, t0 = 0, time.time()
    for manifest in sorted(__import__("glob").glob(os.path.join(root, "*", "*", "*", "manifest.json"))):
        folder = os.path.dirname(manifest)
        ks = K.KernelSet(folder, runtime=runtime)
        key = ks.key
        for T in [int(t) for t in a.Ts.split(",")]:
            seed = (key.n * 7919 + key.C * 31 + T + len(key.dtype)) & 0xFFFF
            try:
                res = check_one(ks, key, T, seed)
            except Exception as e:  # noqa: BLE001 - record and go on
                res = {"error": dict(err=repr(e)[:300], tol=0, ok=False)}
            bad = [k for k, v in res.items() if not v["ok"]]
            failures += len(bad)
            # The control must fail (its err/tol is large by design): not a check's worst.
            worst = max((v["err"] / v["tol"] for k, v in res.items()
                         if isinstance(v["err"], float) and v["tol"] > 0
                         and not k.startswith("control.")), default=0.0)
            print(f"n={key.n} C={key.C:5d} {key.dtype:4s} T={T:5d} worst err/tol={worst:.3g} "
                  + ("ok" if not bad else "FAIL " + ", ".join(f"{k}={res[k]['err']}" for k in bad)),
                  flush=True)
            out["checks"].append(dict(n=key.n, C=key.C, dtype=key.dtype, T=T, results=res))
            torch.cuda.empty_cache()
    out["failures"] = failures
    out["seconds"] = time.time() - t0
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"checks: {len(out['checks'])}, failures: {failures}, {out['seconds']:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
