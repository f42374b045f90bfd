#!/usr/bin/env python3
"""Checks the GPU backward of a sublayer with the pre-norm (docs/PreNorm.md) against float64
autograd of the reference math.

  build (here, with mhc-opt):   check_prenorm_backward.py build --mhc-opt build/bin/mhc-opt --out DIR
  run (on the GPU machine):     check_prenorm_backward.py run --dir DIR --json out.json

`build` writes, per (n, C, dtype), one module with two functions in the shapes
--mhc-generate-backward writes and --mhc-fuse groups (u made again from x and the recomputed pre,
rms_norm_grad giving pre_apply_grad's du):
  * @whole(x, y, fn, scale, base, mix, g, w, dxn) -> (dx, dy, dfn, dscale, dbase, dweight): one
    "backward" group (g, the norm's output cotangent, given: no sublayer between);
  * @pre_side(x, fn, scale, base, mix, g, w, dpost, dcomb, dxn) -> (dx, dfn, dscale, dbase,
    dweight): the "pre_backward" group after a sublayer's VJP (dpost, dcomb from post_backward);
and @pre_side_plain, the same group without the norm (du given; the timing's baseline);
compiles it (kernels.cubin) and records each function's launches (mhc.torch.kernel_build's
reading of the host IR: kernels, grids, buffers, scratch) in launches.json.

`run` launches them with CuPy on seeded random data (mix = norm_project(x, fn) as the forward
saves it) at T = 0, 1, 1000, 16384 (outputs poisoned with NaN) and compares every gradient with
torch.autograd in float64: relative error ||out - ref|| / ||ref|| <= 1e-2 for bf16 activation
gradients, 5e-4 for f32 ones and for the parameter gradients (dfn, dscale, dbase; dweight has
the weight's type). A control re-checks against a reference with another g: it must fail. With --time it also
times pre_side against pre_side_plain + the norm's backward compiled by torch.compile.
"""
import argparse, json, os, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "python"))

CONFIGS = [(4, 4096, "bf16"), (4, 512, "bf16"), (4, 100, "f32"), (2, 1000, "bf16")]
EPS, PRE_EPS, POST_MULT, ITERS, RMS_EPS = 1e-6, 1e-6, 2.0, 20, 7.8125e-3


def module(n, C, dt):
    M = n * n + 2 * n
    X, H, P, Q = f"tensor<?x{n}x{C}x{dt}>", f"tensor<?x{C}x{dt}>", f"tensor<?x{n}xf32>", f"tensor<?x{n}x{n}xf32>"
    F, MX, S, B, W = f"tensor<{M}x{n * C}xf32>", f"tensor<?x{M}xf32>", "tensor<3xf32>", f"tensor<{M}xf32>", f"tensor<{C}x{dt}>"
    head = f"""
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : {MX}, {S}, {B} -> {P}, {P}, {Q}
  %comb = mhc.sinkhorn %l : {Q}"""
    norm = f"""
  %u = mhc.pre_apply %x, %pre : {X}, {P} -> {H}
  %du, %dw = mhc.rms_norm_grad %u, %w, %g {{eps = {RMS_EPS:.7e} : f32}} : {H}, {W}, {H}
  %dxb, %dpre = mhc.pre_apply_grad %x, %pre, %du : {X}, {P}, {H}
  %dl = mhc.sinkhorn_grad %l, %dcomb : {Q}
  %dmix, %dscale, %dbase = mhc.split_mixes_grad %mix, %scale, %base, %dpre, %dpost, %dl : {MX}, {S}, {B}, {P}, {P}, {Q}
  %dxc, %dfn = mhc.norm_project_grad %x, %fn, %dmix : {X}, {F}, {MX}
  %dxab = arith.addf %dxa, %dxb : {X}
  %dx = arith.addf %dxab, %dxc : {X}"""
    # The baseline of the timing: the same group without the norm (du given).
    plain = "\n" + norm.split("\n", 3)[3]
    saved = '{mhc.saved = "mix"}'
    return f"""
func.func @whole(%x: {X}, %y: {H}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved}, %g: {H},
                 %w: {W}, %dxn: {X}) -> ({X}, {H}, {F}, {S}, {B}, {W}) {{{head}
  %dy, %dxa, %dpost, %dcomb = mhc.post_res_grad %y, %x, %post, %comb, %dxn : {H}, {X}, {P}, {Q}, {X}{norm}
  return %dx, %dy, %dfn, %dscale, %dbase, %dw : {X}, {H}, {F}, {S}, {B}, {W}
}}
func.func @pre_side(%x: {X}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved}, %g: {H}, %w: {W},
                    %dpost: {P}, %dcomb: {Q}, %dxn: {X}) -> ({X}, {F}, {S}, {B}, {W}) {{{head}
  %c0 = arith.constant 0 : index
  %T = tensor.dim %x, %c0 : {X}
  %y = tensor.empty(%T) : {H}
  %dy_, %dxa, %dpost_, %dcomb_ = mhc.post_res_grad %y, %x, %post, %comb, %dxn : {H}, {X}, {P}, {Q}, {X}{norm}
  return %dx, %dfn, %dscale, %dbase, %dw : {X}, {F}, {S}, {B}, {W}
}}
func.func @pre_side_plain(%x: {X}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved}, %du: {H},
                          %dpost: {P}, %dcomb: {Q}, %dxn: {X}) -> ({X}, {F}, {S}, {B}) {{{head}
  %c0 = arith.constant 0 : index
  %T = tensor.dim %x, %c0 : {X}
  %y = tensor.empty(%T) : {H}
  %dy_, %dxa, %dpost_, %dcomb_ = mhc.post_res_grad %y, %x, %post, %comb, %dxn : {H}, {X}, {P}, {Q}, {X}{plain}
  return %dx, %dfn, %dscale, %dbase : {X}, {F}, {S}, {B}
}}
"""


ARGS = {"whole": (("x", "y", "fn", "scale", "base", "mix", "g", "w", "dxn"),
                  ("dx", "dy", "dfn", "dscale", "dbase", "dweight")),
        "pre_side": (("x", "fn", "scale", "base", "mix", "g", "w", "dpost", "dcomb", "dxn"),
                     ("dx", "dfn", "dscale", "dbase", "dweight")),
        "pre_side_plain": (("x", "fn", "scale", "base", "mix", "du", "dpost", "dcomb", "dxn"),
                           ("dx", "dfn", "dscale", "dbase"))}
CHECKED = ("whole", "pre_side")
TIMED = (4, 4096, "bf16")


def build(a):
    from mhc import compiler
    from mhc.torch import kernel_build as KB
    os.makedirs(a.out, exist_ok=True)
    index = {}
    for n, C, dt in CONFIGS:
        name = f"n{n}_c{C}_{dt}"
        src = os.path.join(a.out, name + ".mlir")
        open(src, "w").write(module(n, C, dt))
        run = lambda *args: subprocess.run([a.mhc_opt, src, *args], check=True, capture_output=True,
                                           text=True).stdout
        host = run("--mhc-fuse", "--convert-mhc-to-gpu")
        full = run("--mhc-gpu-pipeline=format=bin")
        blob = KB.re.search(r'bin = "((?:[^"\\]|\\.)*)"', full).group(1)
        open(os.path.join(a.out, name + ".cubin"), "wb").write(compiler.decode_mlir_string(blob))
        funcs = KB._functions(host)
        index[name] = dict(n=n, C=C, dt=dt, ops={f: KB.launches_of(funcs[f], *ARGS[f], None)
                                                 for f in ARGS})
        os.remove(src)
        print(name, {f: [l["kernel"] for l in spec["launches"]] for f, spec in index[name]["ops"].items()})
    json.dump(index, open(os.path.join(a.out, "launches.json"), "w"), indent=1)


def run(a):
    import numpy as np
    import torch
    import cupy as cp
    from mhc.testing import relative_error as relerr
    DT = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
    index = json.load(open(os.path.join(a.dir, "launches.json")))
    out = dict(device=torch.cuda.get_device_name(), checks=[])
    failures = 0

    for name, cfg in index.items():
        n, C, dt = cfg["n"], cfg["C"], cfg["dt"]
        M, d = n * n + 2 * n, DT[dt]
        mod = cp.RawModule(path=os.path.join(a.dir, name + ".cubin"))
        for T in (0, 1, 1000, 16384):
            gen = torch.Generator(device="cuda").manual_seed(T + 7 * C + n)
            rnd = lambda *s: torch.randn(*s, generator=gen, device="cuda")
            v = dict(x=rnd(T, n, C).to(d), y=rnd(T, C).to(d), fn=rnd(M, n * C) / (n * C) ** 0.5,
                     scale=torch.rand(3, generator=gen, device="cuda") + 0.25,
                     base=rnd(M) * 0.5, g=rnd(T, C).to(d),
                     w=(torch.rand(C, generator=gen, device="cuda") + 0.5).to(d),
                     dpost=rnd(T, n), dcomb=rnd(T, n, n), dxn=rnd(T, n, C).to(d))
            xv = v["x"].double().reshape(T, n * C)
            r0 = torch.rsqrt((xv * xv).sum(-1, keepdim=True) / (n * C) + EPS)
            v["mix"] = ((xv @ v["fn"].double().t()) * r0).float().contiguous()
            for fname in CHECKED:
                resn, spec = ARGS[fname][1], cfg["ops"][fname]
                shapes = dict(dx=(T, n, C), dy=(T, C), dfn=(M, n * C), dscale=(3,), dbase=(M,),
                              dweight=(C,))
                res = {r: torch.full(shapes[r], float("nan"), device="cuda",
                                     dtype=torch.float32 if r in ("dfn", "dscale", "dbase") else d)
                       for r in resn}
                bufs = dict(v)
                bufs.update(res)
                launcher(mod, spec, bufs, T, np, torch)()
                torch.cuda.synchronize()
                ref = reference(v, n, C, fname, torch)
                checks = {}
                for r in resn:
                    tol = 1e-2 if (dt != "f32" and r in ("dx", "dy", "dweight")) else 5e-4
                    e = relerr(res[r], ref[r])
                    checks[r] = dict(err=e, tol=tol, ok=bool(e <= tol))
                bad = [r for r, c in checks.items() if not c["ok"]]
                failures += len(bad)
                worst = max(c["err"] / c["tol"] for c in checks.values())
                print(f"{name} {fname:8s} T={T:5d} worst err/tol={worst:.3g} "
                      f"{'OK' if not bad else 'FAIL ' + ','.join(bad)}", flush=True)
                if T == 1000 and fname == "whole":   # control: another g must fail dx
                    other = dict(v, g=torch.roll(v["g"], 1, dims=1))
                    e = relerr(res["dx"], reference(other, n, C, fname, torch)["dx"])
                    ok = e > (1e-2 if dt != "f32" else 5e-4)
                    failures += 0 if ok else 1
                    print(f"{name} control (g rolled by a column): dx err {e:.3g} "
                          f"{'rejected, OK' if ok else 'NOT rejected: FAIL'}", flush=True)
                out["checks"].append(dict(config=name, fn=fname, T=T, results=checks))
                json.dump(out, open(a.json, "w"), indent=1)
        if a.time and (n, C, dt) == TIMED:
            out["timing"] = timing(mod, cfg, v, n, C, d, np, torch)
            print(json.dumps(out["timing"], indent=1), flush=True)
    out["failures"] = failures
    json.dump(out, open(a.json, "w"), indent=1)
    print(f"failures: {failures}")
    return 1 if failures else 0


def launcher(mod, spec, bufs, T, np, torch):
    """A function that launches one recorded function's kernels on bufs (scratch allocated here,
    arguments marshalled once)."""
    bufs = dict(bufs)
    for sname, s in spec.get("scratch", {}).items():
        size = 1
        for f in s["shape"]:
            size *= T if f == "T" else (max((T + int(f.split(":")[1]) - 1) // int(f.split(":")[1]), 1)
                                        if isinstance(f, str) else f)
        bufs[sname] = torch.empty(max(size, 1), device="cuda", dtype=torch.float32)
    calls = []
    for launch in spec["launches"]:
        args = [np.int64(T)]
        for b in launch["buffers"]:
            t = bufs[b]
            assert t.is_contiguous()
            p = np.uint64(t.data_ptr())
            args += [p, p, np.int64(0), np.int64(t.numel()), np.int64(1)]
        gx = launch["grid"]
        gridx = gx["x"] if "x" in gx else max((T + gx["tokens_per_block"] - 1) // gx["tokens_per_block"], 1)
        calls.append((mod.get_function(launch["kernel"]), (gridx, gx.get("y", 1), gx.get("z", 1)),
                      tuple(launch["block"]), tuple(args)))
    keep = bufs   # the launches hold raw pointers: keep the tensors alive with the closure

    def go():
        assert keep
        for fn, grid, block, args in calls:
            fn(grid, block, args)
    return go


def timing(mod, cfg, v, n, C, d, np, torch):
    """pre_side (the pre_backward group with the norm's gradient) against pre_side_plain (the
    group without it, du given) + the norm's backward as torch.compile makes it from its math
    (what the plain path of a block pays), at the T of v. Median of 7 reps of 20 calls each,
    CUDA events, after a warm-up."""
    T = v["x"].shape[0]
    M = n * n + 2 * n
    f32 = dict(device="cuda", dtype=torch.float32)
    res = dict(dx=torch.empty(T, n, C, device="cuda", dtype=d), dfn=torch.empty(M, n * C, **f32),
               dscale=torch.empty(3, **f32), dbase=torch.empty(M, **f32),
               dweight=torch.empty(C, device="cuda", dtype=d))
    u = torch.einsum("ti,tic->tc", torch.rand(T, n, device="cuda"), v["x"].float()).to(d)
    fused = launcher(mod, cfg["ops"]["pre_side"], dict(v, **res), T, np, torch)
    plain = launcher(mod, cfg["ops"]["pre_side_plain"], dict(v, du=v["g"], **res), T, np, torch)

    def norm_backward(u, w, g):
        uf, wf, gf = u.float(), w.float(), g.float()
        r = torch.rsqrt((uf * uf).mean(-1, keepdim=True) + RMS_EPS)
        wg = wf * gf
        k = r * r * r * (wg * uf).sum(-1, keepdim=True) / C
        return (r * wg - k * uf).to(u.dtype), (gf * uf * r).sum(0).to(w.dtype)
    norm_c = torch.compile(norm_backward)

    def timed(f):
        for _ in range(3):
            f()
        torch.cuda.synchronize()
        ms = []
        for _ in range(7):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(20):
                f()
            b.record()
            b.synchronize()
            ms.append(a.elapsed_time(b) / 20)
        return sorted(ms)[3]
    t = dict(T=T, n=n, C=C, dtype=str(d))
    t["fused_ms"] = timed(fused)
    t["plain_group_ms"] = timed(plain)
    t["compiled_norm_backward_ms"] = timed(lambda: norm_c(u, v["w"], v["g"]))
    t["plain_plus_norm_ms"] = timed(lambda: (norm_c(u, v["w"], v["g"]), plain()))
    t["saved_ms"] = t["plain_plus_norm_ms"] - t["fused_ms"]
    return t


def reference(v, n, C, fname, torch):
    """torch.autograd in float64 of the sublayer with the pre-norm: u = pre_apply(x, pre(mix)),
    o = rms_norm(u, w) with cotangent g, x_next = post_res(y, x, post, comb) with cotangent dxn
    (whole); for pre_side, post and comb's cotangents dpost, dcomb given and x_next's comb-mix
    of x alone (its comb constant), as the pre_backward group splits it."""
    T = v["x"].shape[0]
    x, fn, scale, base, w = (v[k].detach().double().requires_grad_() for k in ("x", "fn", "scale", "base", "w"))
    y = v["y"].detach().double().requires_grad_()
    xv = x.reshape(T, n * C)
    r0 = torch.rsqrt((xv * xv).sum(-1, keepdim=True) / (n * C) + EPS)
    mix = (xv @ fn.t()) * r0
    se = torch.cat([scale[0].expand(n), scale[1].expand(n), scale[2].expand(n * n)])
    a = mix * se + base
    pre = torch.sigmoid(a[:, :n]) + PRE_EPS
    post = torch.sigmoid(a[:, n:2 * n]) * POST_MULT
    P = torch.softmax(a[:, 2 * n:].reshape(T, n, n), dim=-1) + EPS
    P = P / (P.sum(-2, keepdim=True) + EPS)
    for _ in range(ITERS - 1):
        P = P / (P.sum(-1, keepdim=True) + EPS)
        P = P / (P.sum(-2, keepdim=True) + EPS)
    # u's value in the activations' type, as pre_apply stores it and rms_norm reads it, with the
    # identity as the rounding's gradient in float64 (the kernels keep du in f32; a cast's
    # backward would round du too). The parameter gradients see the difference: S = sum w g u
    # and dpre = sum du x_i are sums of incoherent terms whose relative error is the terms'
    # (~1e-3 for one bf16 rounding), above their tolerance.
    u64 = torch.einsum("ti,tic->tc", pre, x)
    u = u64 + (u64.to(v["x"].dtype).double() - u64).detach()
    o = u * torch.rsqrt((u * u).mean(-1, keepdim=True) + RMS_EPS) * w
    g, dxn = v["g"].double(), v["dxn"].double()
    loss = (o * g).sum()
    if fname == "whole":
        xn = post[:, :, None] * y[:, None, :] + torch.einsum("tij,tic->tjc", P, x)
        loss = loss + (xn * dxn).sum()
        wrt = (x, y, fn, scale, base, w)
        names = ("dx", "dy", "dfn", "dscale", "dbase", "dweight")
    else:
        loss = loss + (post * v["dpost"].double()).sum() + (P * v["dcomb"].double()).sum() \
            + (torch.einsum("tij,tic->tjc", P.detach(), x) * dxn).sum()
        wrt = (x, fn, scale, base, w)
        names = ("dx", "dfn", "dscale", "dbase", "dweight")
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return {k: (gr if gr is not None else torch.zeros_like(t)) for k, gr, t in zip(names, grads, wrt)}


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--mhc-opt", required=True)
    b.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dir", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--time", action="store_true",
                   help=f"also time pre_side against pre_side_plain + a compiled norm backward at {TIMED}, T = 16384")
    a = ap.parse_args()
    return build(a) if a.cmd == "build" else run(a)


if __name__ == "__main__":
    sys.exit(main())
