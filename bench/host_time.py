#!/usr/bin/env python3
"""Host (CPU) time of mhc.torch's cuda backend per sublayer, on the GPU machine.

    PYTHONPATH=python MHC_CACHE=.mhc-cache python3 bench/host_time.py --json out.json

With few tokens (T = 64) the kernels take a few µs, so a loop that never synchronises runs at the
speed of the host: the time per iteration is the host time. Measured, per sublayer (n = 4, bf16):

  * ``dispatcher``: torch.ops.mhc.hc_pre + hc_post (forward), hc_post_backward + hc_pre_backward
    (backward) through PyTorch's custom-op dispatcher (what torch.compile'd code calls);
  * ``direct``: the same four ops through ops.DirectOps (the Python steps' eager path);
  * ``module``: HyperConnection(n, C, nn.Identity()) forward, and forward + backward, with
    recompute off and on; ``module[.recompute].two_in_a_row``: two of them one after the other
    (on the C++ path the second is chained: the steady state of a model);
    ``module.recompute.norm_linear``: around RMSNorm + Linear, whose saved tensors go through
    the recomputation's saved-tensor hooks (``norm_linear.alone``: the sublayer by itself);
    with --norm, ``module.recompute[.norm].two_in_a_row.forward_backward``: two in a row around a
    Linear, without and with the sublayer's pre-norm fused (``norm=nn.RMSNorm(C)``, the *_norm
    ops; needs the kernel set of that eps, ``build_cache --norm-eps``); ``plain``: x + Identity(x)
    forward, and forward + backward, the autograd cost any residual block pays (subtract it to get
    what mHC adds); ``torch.one_add``: one PyTorch op (this host's cost of a launch);
  * a cProfile of the module's forward + backward (the 25 functions with the most own time), with
    autograd's backward in the calling thread so that the profile sees it;
  * ``dispatcher.chained.forward`` / ``dispatcher.folded.backward``: what a compiled model's steady
    sublayer calls instead (mhc.torch.chain_pass): hc_post_project + hc_pre_mixed, and one
    hc_joint_backward_lower;
  * ``compiled.*``: a compiled stack of --compiled-depth sublayers (a Linear each), plain and mHC,
    forward + backward; ``compiled.per_sublayer`` is the difference over the depth: what mHC adds
    to a compiled step's host time per sublayer, the graphs' own code around the ops included
    (a host reading only where the GPU keeps up at --T tokens: at C = 4096 and 64 tokens the
    launches wait for it, bench/results/session33.log call 2);
  * ``parts.*``: the C++ path's pieces one by one (an allocation, run_op, the two autograd steps,
    the module's Python checks), see breakdown().

Beside each row, the GPU's own time per call (``gpu_us``: the calls queued behind a sleeping kernel,
then run back to back). Where it exceeds the host time, a loop of these calls is paced by the GPU,
not the host; the host figure stays the host's as long as a round's launches fit in the launch
queue (hence few calls per round: --reps 50). At T = 64 it does exceed it: the kernels' grids
follow T (one block per 32-64 tokens), so a few blocks do all the work.

Each row twice: ``native.*`` with the C++ launch path and steps (mhc.torch.native, the default
where it builds) and ``python.*`` inside ``native.python_path()`` (ctypes launches, Python
autograd steps). Each figure is the best and the median of --rounds rounds.
"""
import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from mhc.torch import HyperConnection  # noqa: E402
from mhc.torch import native  # noqa: E402
from mhc.torch.ops import DirectOps  # noqa: E402

ATTRS = (20, 1e-6, 1e-6, 2.0)


def per_call_us(fn, reps, rounds=5):
    """Host µs per call: (best, median) over `rounds` rounds of `reps` calls each, the GPU never
    waited for inside a round (the host is shared: the best round is the cleanest reading)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    readings = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        readings.append((time.perf_counter() - t) / reps * 1e6)
        torch.cuda.synchronize()
    return min(readings), statistics.median(readings)


def gpu_us_per_call(fn, calls=40):
    """The GPU's own time per call: the calls queued behind a sleeping kernel, then run back to
    back. Where it exceeds a row's host time, a loop of those calls is paced by the GPU; the host
    figure is still the host's (see the module docstring: a round's launches fit in the queue)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(200_000_000)           # ~0.1 s: longer than queueing the calls takes
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def host_profile(fn, calls, per_round, top, warmup=0):
    """cProfile of `calls` calls of `fn` (after `warmup` unprofiled ones), the `top` functions by
    own time, as text. Autograd's backward runs in the calling thread, so that the profile sees
    it; the GPU is waited for every `per_round` calls, outside the profile, which so sees the
    host's work (where the GPU is slower, a long round would fill the launch queue)."""
    with torch.autograd.set_multithreading_enabled(False):
        for _ in range(warmup):
            fn()
        prof = cProfile.Profile()
        for _ in range(calls // per_round):
            prof.enable()
            for _ in range(per_round):
                fn()
            prof.disable()
            torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


def breakdown(record, hc, x, xg, fn, scale, base, y):
    """Where the C++ path's forward time goes: its allocations, launches, autograd steps and the
    module's Python around them (``parts.*``), and the two steps alone with no Python between
    them (``parts.steps_only``: what a forward with no module overhead would cost)."""
    from mhc.torch import modules
    steps = native.load()
    ks = modules._native_kernel_set(xg, hc.attrs)
    handle = ks.native_handle()
    T, n, C = x.shape
    record("parts.torch_empty", lambda: torch.empty(T, C, device=x.device, dtype=x.dtype))
    record("parts.run_op.hc_pre", lambda: steps.run_op(handle, "hc_pre", [x, fn, scale, base]))
    u, post, comb, mix, link = steps.pre_step(xg, fn, scale, base, None, handle, True)
    record("parts.run_op.hc_post", lambda: steps.run_op(handle, "hc_post", [y, x, post, comb]))
    record("parts.pre_step", lambda: steps.pre_step(xg, fn, scale, base, None, handle, True))
    record("parts.post_step", lambda: steps.post_step(y, xg, link, post, comb, mix, fn, scale,
                                                      base, None, handle, False, None))

    def steps_only():
        u, post, comb, mix, link = steps.pre_step(xg, fn, scale, base, None, handle, True)
        return steps.post_step(u, xg, link, post, comb, mix, fn, scale, base, None, handle,
                               False, None)
    record("parts.steps_only", steps_only)
    record("parts.check_input", lambda: hc._check_input(xg))
    record("parts.params", lambda: hc._params(xg))
    record("parts.resolve_backend", lambda: modules.resolve_backend(hc.backend, xg, hc.n, hc.C))
    record("parts.native_kernel_set", lambda: modules._native_kernel_set(xg, hc.attrs))
    record("parts.sublayer", lambda: hc._sublayer(y, xg, None, (), {}))


def compiled_stack(record, out, x, dxn, depth, reps):
    """A compiled model's host time per sublayer: `depth` residual sublayers (a bias-free Linear
    each) under torch.compile(fullgraph=True), forward + backward, plain (h + F(h)) and mHC
    (HyperConnection, chained and folded by mhc.torch.chain_pass); ``compiled.per_sublayer``: their
    difference over the depth, what mHC adds to a compiled step's host time per sublayer (the
    graphs' own Python around the ops included)."""
    T, n, C = x.shape
    torch.manual_seed(1)
    linears = [nn.Linear(C, C, bias=False).to(x.device, x.dtype) for _ in range(depth)]

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fs = nn.ModuleList(linears)

        def forward(self, h):
            for f in self.fs:
                h = h + f(h)
            return h

    class Mhc(nn.Module):
        def __init__(self):
            super().__init__()
            self.hcs = nn.ModuleList(HyperConnection(n, C, f, layer=i, backend="cuda")
                                     for i, f in enumerate(linears))

        def forward(self, x):
            for hc in self.hcs:
                x = hc(x)
            return x

    plain = torch.compile(Plain().to(x.device), fullgraph=True)
    mhc_stack = torch.compile(Mhc().to(x.device), fullgraph=True)
    hg = x[:, 0].clone().requires_grad_()
    xg = x.clone().requires_grad_()
    dh = dxn[:, 0].contiguous()
    # Few steps a round (`reps`): a compiled step queues ~10 launches a sublayer, and at 64
    # tokens the GPU is slower than the host here (the few-token kernels' grids are a few
    # blocks), so longer rounds would fill the launch queue and time the GPU instead.
    record("compiled.plain.forward_backward", lambda: plain(hg).backward(dh), reps)
    record("compiled.mhc.forward_backward", lambda: mhc_stack(xg).backward(dxn), reps)
    for stat in ("us_best", "us_median"):
        out[stat]["compiled.per_sublayer"] = (out[stat]["compiled.mhc.forward_backward"] -
                                              out[stat]["compiled.plain.forward_backward"]) / depth
    out["gpu_us"]["compiled.per_sublayer"] = (out["gpu_us"]["compiled.mhc.forward_backward"] -
                                              out["gpu_us"]["compiled.plain.forward_backward"]) / depth
    out["compiled_depth"] = depth
    # Where the compiled mHC step's host time goes.
    out["profile_compiled_mhc_forward_backward"] = host_profile(
        lambda: mhc_stack(xg).backward(dxn), calls=100, per_round=reps, top=30, warmup=3)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--C", type=int, default=4096)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--cpu", type=int, default=None,
                   help="pin the process to this CPU core (less run-to-run spread)")
    p.add_argument("--compiled-depth", type=int, default=8,
                   help="sublayers of the compiled stack (compiled.*; 0: skip it)")
    p.add_argument("--compiled-reps", type=int, default=3,
                   help="compiled steps a round (few: the launch queue must not fill)")
    p.add_argument("--norm", action="store_true",
                   help="also two HyperConnections around a Linear with and without "
                        "norm=nn.RMSNorm(C) fused (the bf16 norm set: --norm-eps 0.0078125)")
    p.add_argument("--ops-only", action="store_true",
                   help="only the C++ path's op rows (dispatcher.*, direct.*) and the compiled stack")
    args = p.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    dev = torch.device("cuda")
    n, C, T = args.n, args.C, args.T
    torch.manual_seed(0)
    x = torch.randn(T, n, C, device=dev, dtype=torch.bfloat16)
    hc = HyperConnection(n, C, nn.Identity(), backend="cuda", recompute=False).to(dev)
    fn, scale, base = (t.detach() for t in (hc.fn, hc.scale, hc.base))
    u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    y, dxn = torch.randn_like(u), torch.randn_like(x)
    out = {"n": n, "C": C, "T": T, "reps": args.reps, "rounds": args.rounds,
           "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "native": native.load() is not None, "native_failure": native.failure(),
           "cpu": args.cpu,
           "us_best": {}, "us_median": {}, "gpu_us": {}}

    def record(name, fn, reps=None):
        out["us_best"][name], out["us_median"][name] = per_call_us(fn, reps or args.reps,
                                                                   args.rounds)
        out["gpu_us"][name] = gpu_us_per_call(fn)

    xg = x.clone().requires_grad_()
    record("plain.forward_backward", lambda: (xg + xg).backward(dxn))
    # What one PyTorch op and a plain residual's forward cost on this host (to read the rest by).
    record("torch.one_add", lambda: torch.add(y, y))
    record("plain.forward", lambda: xg + xg)
    hc2 = HyperConnection(n, C, nn.Identity(), backend="cuda", recompute=False).to(dev)
    # A sublayer that saves tensors (RMSNorm + Linear): under recomputation its saved u is
    # recomputed and the rest passes the saved-tensor hooks; norm_linear.alone is its own cost.
    norm_linear = nn.Sequential(nn.RMSNorm(C), nn.Linear(C, C)).to(dev, x.dtype)
    hc_nl = HyperConnection(n, C, norm_linear, backend="cuda", recompute=True).to(dev)
    ug = u.clone().requires_grad_()
    record("norm_linear.alone.forward", lambda: norm_linear(ug))
    # Two in a row around a Linear, with the sublayer's pre-norm outside it: as two
    # HyperConnection(norm=nn.RMSNorm(C)) (fused) and as plain ones (the norm left out).
    pairs = {}
    if args.norm:
        linears = [nn.Linear(C, C).to(dev, x.dtype) for _ in range(2)]
        pairs[""] = [HyperConnection(n, C, f, backend="cuda").to(dev) for f in linears]
        pairs[".norm"] = [HyperConnection(n, C, f, backend="cuda",
                                          norm=nn.RMSNorm(C, device=dev, dtype=x.dtype)).to(dev)
                          for f in linears]
    for path in ("native",) if args.ops_only else ("native", "python"):
        if path == "native" and not out["native"]:
            continue
        with native.python_path() if path == "python" else contextlib.nullcontext():
            for name, ops in (("dispatcher", torch.ops.mhc), ("direct", DirectOps)):
                record(f"{path}.{name}.forward", lambda: (ops.hc_pre(x, fn, scale, base, *ATTRS),
                                                          ops.hc_post(y, x, post, comb)))
                record(f"{path}.{name}.backward", lambda: (
                    ops.hc_post_backward(y, x, post, comb, dxn),
                    ops.hc_pre_backward(x, fn, scale, base, mix, u, post, comb, dxn, *ATTRS)))
            # What a compiled model's steady sublayer calls (mhc.torch.chain_pass): the chained
            # forward (post_res + the next projection, then pre from that mix) and the folded
            # backward of a sublayer in the middle of a stack (one op).
            mhc_ops = torch.ops.mhc
            record(f"{path}.dispatcher.chained.forward", lambda: (
                mhc_ops.hc_pre_mixed(*mhc_ops.hc_post_project(y, x, post, comb, fn, *ATTRS),
                                     scale, base, *ATTRS)))
            record(f"{path}.dispatcher.folded.backward", lambda: mhc_ops.hc_joint_backward_lower(
                x, y, fn, scale, base, mix, u, dxn, post, *ATTRS))
            if args.ops_only:
                continue
            for recompute in (False, True):
                hc.recompute = recompute
                tag = f"{path}.module" + (".recompute" if recompute else "")
                with torch.no_grad():
                    record(f"{tag}.forward_no_grad", lambda: hc(x))
                record(f"{tag}.forward", lambda: hc(xg))
                record(f"{tag}.forward_backward", lambda: hc(xg).backward(dxn))
            hc.recompute = False
            # Two HyperConnections in a row: on the C++ path the second is chained (the first's
            # post kernel computes its mix), as every sublayer after the first in a model.
            record(f"{path}.module.two_in_a_row.forward", lambda: hc2(hc(xg)))
            hc.recompute = hc2.recompute = True          # the default
            record(f"{path}.module.recompute.two_in_a_row.forward", lambda: hc2(hc(xg)))
            hc.recompute = hc2.recompute = False
            record(f"{path}.module.recompute.norm_linear.forward", lambda: hc_nl(xg))
            for tag, (first, second) in pairs.items():
                record(f"{path}.module.recompute{tag}.two_in_a_row.forward_backward",
                       lambda: second(first(xg)).backward(dxn))
            # The backward normally runs on autograd's device thread: here in the calling
            # thread too (the profile below needs that).
            with torch.autograd.set_multithreading_enabled(False):
                record(f"{path}.module.forward_backward_one_thread",
                       lambda: hc(xg).backward(dxn))
            out[f"profile_{path}_module_forward_backward_200_calls"] = host_profile(
                lambda: hc(xg).backward(dxn), calls=200, per_round=200, top=25)
    if out["native"] and not args.ops_only:
        breakdown(record, hc, x, xg, fn, scale, base, y)
    if args.compiled_depth > 0:
        compiled_stack(record, out, x, dxn, args.compiled_depth, args.compiled_reps)
    for k in out["us_best"]:
        print(f"{k:44s} best {out['us_best'][k]:8.1f} us   median {out['us_median'][k]:8.1f} us"
              f"   GPU {out['gpu_us'][k]:7.1f} us")
    for k in out:
        if k.startswith("profile_"):
            print(k, out[k], sep="\n")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
