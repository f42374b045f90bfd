#!/usr/bin/env python3
"""Checks the torch cuda backend (mhc's kernels through the mhc:: ops) against the reference
backend (the same math in PyTorch, float32, on the same GPU): each op's outputs, then a
HyperConnection's forward and all gradients (x, fn, scale, base, the sublayer's weight), with and
without recomputation, for T in {1, 1000, 16384} and the C values given; and the forward ops
captured in a CUDA graph and replayed on new data (bit-equal to eager); on the GPU also the
module's C++ steps against its Python steps (mhc.torch.native; relative difference <= 1e-6), and
two chained HyperConnections (hc_post_project + hc_pre_mixed) against the reference backend and
the unchained Python steps, and their forward captured in a CUDA graph (bit-equal to eager); and
three chained ones with the eager dy fold against the same without it (bit-identical); and every
op on the C++ dispatcher kernels (what a compiled graph calls) against its Python implementation.
Writes JSON.

    MHC_CACHE=.mhc-cache python3 bench/check_torch_backend.py --json $OUT/check_torch.json

Tolerances (relative, ||a - b|| / ||b||): activations stored as bf16/f16 1e-2, f32 1e-4;
coefficients and parameter gradients 1e-3 (kernel and reference reduce in different orders over up
to T*nC terms). ``--smoke`` runs the same comparisons on the CPU, where the mhc:: ops *are* the
reference math: it checks the script, not the kernels.
"""

import argparse
import contextlib
import functools
import json
import os
import sys
import traceback

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import mhc.torch as mt  # noqa: E402
from mhc.testing import relative_error  # noqa: E402
from mhc.torch import reference as ref  # noqa: E402

# an all-zero reference fails anything but an exact zero
relerr = functools.partial(relative_error, zero_ref_norm=1e-30)

ATTRS = (20, 1e-6, 1e-6, 2.0)


def check_ops(T, n, C, dtype, device, act_tol, coef_tol, forward_only=False):
    g = torch.Generator(device="cpu").manual_seed(T * 7 + C)
    M = n * n + 2 * n
    x = torch.randn(T, n, C, generator=g).to(device, dtype)
    fn = (torch.randn(M, n * C, generator=g) * 0.02).to(device)
    scale = torch.tensor([0.3, 0.5, 0.7]).to(device)
    base = torch.randn(M, generator=g).to(device)
    y = torch.randn(T, C, generator=g).to(device, dtype)
    dx_next = torch.randn(T, n, C, generator=g).to(device, dtype)
    du = torch.randn(T, C, generator=g).to(device, dtype)
    out = {}

    def compare(name, got, want, tol):
        for i, (a, b) in enumerate(zip(got, want)):
            e = relerr(a, b)
            out[f"{name}[{i}]"] = {"relerr": e, "tol": tol[i] if isinstance(tol, tuple) else tol,
                                   "ok": e <= (tol[i] if isinstance(tol, tuple) else tol)}

    k = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    r = ref.hc_pre(x, fn, scale, base, *ATTRS)
    compare("hc_pre", k, r, (act_tol, coef_tol, coef_tol, coef_tol))
    u, post, comb, mix = r            # feed both sides the same inputs from here on
    compare("hc_post", [torch.ops.mhc.hc_post(y, x, post, comb)], [ref.hc_post(y, x, post, comb)],
            act_tol)
    if forward_only:
        return out
    compare("hc_post_backward", torch.ops.mhc.hc_post_backward(y, x, post, comb, dx_next),
            ref.hc_post_backward(y, x, post, comb, dx_next), (act_tol, coef_tol, coef_tol))
    dy, dpost, dcomb = ref.hc_post_backward(y, x, post, comb, dx_next)
    args = (x, fn, scale, base, mix, du, dpost.contiguous(), dcomb.contiguous(), dx_next, *ATTRS)
    compare("hc_pre_backward", torch.ops.mhc.hc_pre_backward(*args), ref.hc_pre_backward(*args),
            (act_tol, coef_tol, coef_tol, coef_tol))
    return out


def check_module(T, n, C, dtype, device, act_tol, coef_tol, recompute):
    torch.manual_seed(T + C)
    sub = nn.Sequential(nn.RMSNorm(C), nn.Linear(C, C)).to(device, dtype)
    runs = {}
    for backend in ("cuda" if device.type == "cuda" else "auto", "reference"):
        hc = mt.HyperConnection(n, C, sub, backend=backend, recompute=recompute).to(device)
        x = torch.randn(T, n, C, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        x.requires_grad_()
        dout = torch.randn(T, n, C, generator=torch.Generator().manual_seed(2)).to(device, dtype)
        out = hc(x)
        grads = torch.autograd.grad(out, [x, hc.fn, hc.scale, hc.base, sub[1].weight], dout)
        runs[backend] = [out] + list(grads)
    names = ["x_next", "dx", "dfn", "dscale", "dbase", "dW"]
    tols = [act_tol, act_tol, coef_tol, coef_tol, coef_tol, 2 * act_tol]
    a, b = runs.values()
    return {f"module{'_recompute' if recompute else ''}.{nm}":
            {"relerr": relerr(p, q), "tol": t, "ok": relerr(p, q) <= t}
            for nm, p, q, t in zip(names, a, b, tols)}


def check_native(T, n, C, dtype, device, recompute):
    """HyperConnection's C++ steps (mhc.torch.native) against its Python steps with the Python
    launcher: the same kernels on the same inputs, so the same numbers (up to the order of
    floating-point atomics, where a kernel uses them)."""
    from mhc.torch import native
    if native.load() is None:
        return {"native.built": {"relerr": float("inf"), "tol": 0.0, "ok": False,
                                 "error": native.failure()}}
    torch.manual_seed(T + C)
    sub = nn.Sequential(nn.RMSNorm(C), nn.Linear(C, C)).to(device, dtype)
    hc = mt.HyperConnection(n, C, sub, backend="cuda", recompute=recompute).to(device)
    x = torch.randn(T, n, C, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    x.requires_grad_()
    dout = torch.randn(T, n, C, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    runs = []
    for path in ("native", "python"):
        with native.python_path() if path == "python" else contextlib.nullcontext():
            out = hc(x)
            grads = torch.autograd.grad(out, [x, hc.fn, hc.scale, hc.base, sub[1].weight], dout)
        runs.append([out] + list(grads))
    names = ["x_next", "dx", "dfn", "dscale", "dbase", "dW"]
    tag = "native" + ("_recompute" if recompute else "")
    return {f"{tag}.{nm}": {"relerr": relerr(a, b), "tol": 1e-6, "ok": relerr(a, b) <= 1e-6}
            for nm, a, b in zip(names, *runs)}


def check_dispatch(T, n, C, dtype, device):
    """Each op called through torch.ops.mhc on the C++ dispatcher kernels (native.install_ops,
    what a compiled graph calls) against the same op's Python implementation (native.python_path:
    the same kernels launched from Python): the same numbers (up to the order of floating-point
    atomics). And the C++ kernels must be the ones registered for CUDA."""
    from mhc.torch import inductor_fallbacks, kernels, native
    if native.load() is None or not native.dispatch_installed():
        return {"dispatch.installed": {"relerr": float("inf"), "tol": 0.0, "ok": False,
                                       "error": native.failure() or "not installed"}}
    g = torch.Generator().manual_seed(T + C + 7)
    out = {"dispatch.installed": {"relerr": 0.0, "tol": 0.0, "ok": True}}
    for op in inductor_fallbacks.MHC_OPS:
        args = kernels.random_arguments(op, T, n, C, g, act_dtype=dtype, device=device,
                                        fn_scale=0.02)
        args += list(ATTRS) if op in kernels.OPS_WITH_ATTRIBUTES else []
        call = getattr(torch.ops.mhc, op)
        got = call(*args)
        with native.python_path():
            want = call(*args)
        got, want = ([r] if isinstance(r, torch.Tensor) else list(r) for r in (got, want))
        for i, (a, b) in enumerate(zip(got, want)):
            e = relerr(a, b)
            out[f"dispatch.{op}[{i}]"] = {"relerr": e, "tol": 1e-6, "ok": e <= 1e-6}
    return out


def check_chain(T, n, C, dtype, device, act_tol, coef_tol, recompute=False):
    """Two HyperConnections in a row, called twice: the second call runs chained (the first
    one's post computes the second one's mix, hc_post_project + hc_pre_mixed). Its output and
    gradients against the reference backend (the usual tolerances) and against the unchained
    Python steps; with recomputation, the sublayers' saved u (RMSNorm's input) is recomputed."""
    from mhc.torch import modules, native
    torch.manual_seed(T + C + 1)
    subs = [nn.Sequential(nn.RMSNorm(C), nn.Linear(C, C)).to(device, dtype) for _ in range(2)]
    x = torch.randn(T, n, C, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    x.requires_grad_()
    dout = torch.randn(T, n, C, generator=torch.Generator().manual_seed(4)).to(device, dtype)
    runs = {}
    for name in ("chained", "python", "reference"):
        hcs = [mt.HyperConnection(n, C, s, backend="reference" if name == "reference" else "cuda",
                                  recompute=recompute, layer=i).to(device)
               for i, s in enumerate(subs)]
        with native.python_path() if name == "python" else contextlib.nullcontext():
            for _ in range(2):                      # the first call learns the chain
                out = hcs[1](hcs[0](x))
            leaves = [x] + [p for h in hcs for p in (h.fn, h.scale, h.base)]
            runs[name] = [out] + list(torch.autograd.grad(out, leaves + [subs[1][1].weight], dout))
        if name == "chained":
            ks = modules._native_kernel_set(x, hcs[0].attrs)
            chained = hcs[0].successor() is hcs[1] and ks is not None and ks.chains
    names = ["x_next", "dx"] + [f"{p}{i}" for i in (1, 2) for p in ("dfn", "dscale", "dbase")] + ["dW"]
    tag = "chain" + ("_recompute" if recompute else "")
    out = {f"{tag}.used": {"relerr": 0.0 if chained else float("inf"), "tol": 0.0, "ok": chained}}
    for other, tols in (("python", [CHAIN_TOL] * len(names)), ("reference", chain_reference_tols(
            act_tol, coef_tol))):
        for nm, a, b, t in zip(names, runs["chained"], runs[other], tols):
            e = relerr(a, b)
            out[f"{tag}_vs_{other}.{nm}"] = {"relerr": e, "tol": t, "ok": e <= t}
    return out


def check_eager_fold(T, n, C, dtype, device, recompute):
    """Three chained HyperConnections on the C++ path with the dy fold (native.cpp: the middle and
    the bottom layer take their dy from the layer above and run the joint backward) against the
    same model without it: the fold's kernels sum in the same order as the ones they replace, so
    the output and every gradient must be bit-identical; and the fold must have run (two folded
    post steps a backward)."""
    from mhc.torch import native
    module = native.load()
    if module is None:
        return {"eager_fold.built": {"relerr": float("inf"), "tol": 0.0, "ok": False,
                                     "error": native.failure()}}
    torch.manual_seed(T + C + 2)
    subs = [nn.Sequential(nn.RMSNorm(C), nn.Linear(C, C)).to(device, dtype) for _ in range(3)]
    hcs = [mt.HyperConnection(n, C, s, backend="cuda", recompute=recompute, layer=i).to(device)
           for i, s in enumerate(subs)]
    x = torch.randn(T, n, C, generator=torch.Generator().manual_seed(5)).to(device, dtype)
    x.requires_grad_()
    dout = torch.randn(T, n, C, generator=torch.Generator().manual_seed(6)).to(device, dtype)
    leaves = [x] + [p for h in hcs for p in (h.fn, h.scale, h.base)] + [s[1].weight for s in subs]
    runs, folded = {}, 0
    before = module.fold_dy()
    try:
        for fold in (True, False):
            module.set_fold_dy(fold)
            for _ in range(2):                      # the first call learns the chain
                out = hcs[2](hcs[1](hcs[0](x)))
            count = module.folded_steps()
            runs[fold] = [out] + list(torch.autograd.grad(out, leaves, dout))
            if fold:
                folded = module.folded_steps() - count
    finally:
        module.set_fold_dy(before)
    names = ["x_next", "dx"] + [f"{p}{i}" for i in (1, 2, 3) for p in ("dfn", "dscale", "dbase")] \
        + [f"dW{i}" for i in (1, 2, 3)]
    tag = "eager_fold" + ("_recompute" if recompute else "")
    out = {f"{tag}.used": {"relerr": 0.0 if folded == 2 else float("inf"), "tol": 0.0,
                           "ok": folded == 2, "folded_steps": folded}}
    for nm, a, b in zip(names, runs[True], runs[False]):
        e = relerr(a, b)
        out[f"{tag}.{nm}"] = {"relerr": e, "tol": 0.0, "ok": e == 0.0}
    return out


# The chained kernels against the unchained ones: the same math on the same data (the mix comes
# from another kernel), so the same numbers up to rounding.
CHAIN_TOL = 1e-5


def chain_reference_tols(act_tol, coef_tol):
    """Two stacked layers against the reference: the module tolerances, except for the 3-number
    dscale and the bias dbase, sums over all tokens that cancel, which the first layer's bf16
    rounding of x_next moves by up to ~4e-3 in the second layer (the unchained kernels exactly as
    much: chain_vs_python is 0 there); 1e-2 for them."""
    loose = 10 * coef_tol
    return [act_tol, act_tol, coef_tol, loose, loose, coef_tol, loose, loose, 2 * act_tol]


def check_module_cuda_graph(n, C, dtype, device):
    """Two chained HyperConnections' forward (the C++ path) captured in a CUDA graph and replayed
    on new data == eager."""
    torch.manual_seed(5)
    hcs = [mt.HyperConnection(n, C, nn.Linear(C, C).to(device, dtype), backend="cuda", layer=i)
           .to(device) for i in range(2)]
    x = torch.randn(512, n, C, device=device).to(dtype)

    def forward():
        with torch.no_grad():
            return (hcs[1](hcs[0](x)),)
    (static_out,), (eager,) = capture_and_replay(forward, x, warmups=2)   # 2: learn the chain
    e = relerr(static_out, eager)
    return {"cuda_graph.module_chained": {"relerr": e, "tol": 0.0, "ok": e == 0.0}}


def capture_and_replay(forward, x, warmups=1):
    """forward() captured in a CUDA graph after warm-up calls on a side stream, replayed with new
    data in x (in place); returns (the graph's outputs, an eager call's outputs on that data)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            forward()                              # loads the kernel set
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward()
    x.copy_(torch.randn_like(x, dtype=torch.float32).to(x.dtype))
    graph.replay()
    return static_out, forward()


def check_cuda_graph(n, C, dtype, device, act_tol):
    """hc_pre + hc_post captured in a CUDA graph and replayed on new data == eager."""
    M = n * n + 2 * n
    x = torch.randn(512, n, C, device=device).to(dtype)
    y = torch.randn(512, C, device=device).to(dtype)
    fn = torch.randn(M, n * C, device=device) * 0.02
    scale, base = torch.rand(3, device=device), torch.randn(M, device=device)

    def forward():
        u, post, comb, _ = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
        return u, torch.ops.mhc.hc_post(y, x, post, comb)
    static_out, eager = capture_and_replay(forward, x)
    return {f"cuda_graph[{i}]": {"relerr": relerr(a, b), "tol": 0.0, "ok": relerr(a, b) == 0.0}
            for i, (a, b) in enumerate(zip(static_out, eager))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--C", type=int, action="append")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "f16", "f32"))
    p.add_argument("--tokens", default="1,1000,16384")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--forward-only", action="store_true",
                   help="only hc_pre/hc_post and the CUDA graph (a build_cache --forward-only set)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.C, args.tokens = args.C or [32], "1,7"
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    act_tol = 1e-2 if dtype != torch.float32 else 1e-4
    results, ok = [], True
    for C in args.C or [2560, 4096]:
        for T in map(int, args.tokens.split(",")):
            entry = {"n": args.n, "C": C, "T": T, "dtype": args.dtype}
            try:
                entry["checks"] = check_ops(T, args.n, C, dtype, device, act_tol, 1e-3,
                                            args.forward_only)
                for rc in (() if args.forward_only else (False, True)):
                    entry["checks"].update(check_module(T, args.n, C, dtype, device, act_tol, 1e-3, rc))
                    if device.type == "cuda":
                        entry["checks"].update(check_native(T, args.n, C, dtype, device, rc))
                if device.type == "cuda" and not args.forward_only:
                    entry["checks"].update(check_dispatch(T, args.n, C, dtype, device))
                    for rc in (False, True):
                        entry["checks"].update(check_chain(T, args.n, C, dtype, device, act_tol,
                                                           1e-3, rc))
                        entry["checks"].update(check_eager_fold(T, args.n, C, dtype, device, rc))
                if device.type == "cuda" and T == 1:
                    entry["checks"].update(check_cuda_graph(args.n, C, dtype, device, act_tol))
                    entry["checks"].update(check_module_cuda_graph(args.n, C, dtype, device))
                bad = [k for k, v in entry["checks"].items() if not v["ok"]]
                entry["ok"] = not bad
                print(f"C={C} T={T}: {'ok' if not bad else 'FAIL ' + ', '.join(bad)}", flush=True)
            except Exception as e:  # noqa: BLE001 - e.g. a kernel set without backward kernels
                entry["ok"], entry["error"] = False, f"{type(e).__name__}: {e}"
                entry["traceback"] = traceback.format_exc(limit=5)
                print(f"C={C} T={T}: error {entry['error']}", flush=True)
            ok &= entry["ok"]
            results.append(entry)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   "smoke": args.smoke, "results": results, "ok": ok}, fh, indent=1)
    print("all checks pass" if ok else "some checks FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
