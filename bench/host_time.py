#!/usr/bin/env python3
"""Host (CPU) time of mhc.torch's cuda backend per sublayer, on the GPU machine.

    PYTHONPATH=python MHC_CACHE=.mhc-cache python3 bench/host_time.py --json out.json

With few tokens (T = 64) the kernels take a few µs, so a loop that never synchronises runs at the
speed of the host: the time per iteration is the host time. Measured, per sublayer (n = 4, bf16):

  * ``dispatcher``: torch.ops.mhc.hc_pre + hc_post (forward), hc_post_backward + hc_pre_backward
    (backward) through PyTorch's custom-op dispatcher (what torch.compile'd code calls);
  * ``direct``: the same four ops through ops.DirectOps (HyperConnection's eager path);
  * ``module``: HyperConnection(n, C, nn.Identity()) forward, and forward + backward, with
    recompute off and on; ``plain``: x + Identity(x) forward + backward, the autograd cost any
    residual block pays (subtract it to get what mHC adds);
  * a cProfile of the module's forward + backward (the 25 functions with the most own time), with
    autograd's backward in the calling thread so that the profile sees it.
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from mhc.torch import HyperConnection  # noqa: E402
from mhc.torch.ops import DirectOps  # noqa: E402

ATTRS = (20, 1e-6, 1e-6, 2.0)


def per_call_us(fn, reps):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t) / reps * 1e6
    torch.cuda.synchronize()
    return host


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--C", type=int, default=4096)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--reps", type=int, default=300)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    n, C, T = args.n, args.C, args.T
    torch.manual_seed(0)
    x = torch.randn(T, n, C, device=dev, dtype=torch.bfloat16)
    hc = HyperConnection(n, C, nn.Identity(), backend="cuda", recompute=False).to(dev)
    fn, scale, base = (t.detach() for t in (hc.fn, hc.scale, hc.base))
    u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *ATTRS)
    y, dxn = torch.randn_like(u), torch.randn_like(x)
    out = {"n": n, "C": C, "T": T, "reps": args.reps, "device": torch.cuda.get_device_name(),
           "torch": torch.__version__, "us": {}}
    us = out["us"]

    for name, ops in (("dispatcher", torch.ops.mhc), ("direct", DirectOps)):
        us[f"{name}.forward"] = per_call_us(
            lambda: (ops.hc_pre(x, fn, scale, base, *ATTRS), ops.hc_post(y, x, post, comb)),
            args.reps)
        us[f"{name}.backward"] = per_call_us(
            lambda: (ops.hc_post_backward(y, x, post, comb, dxn),
                     ops.hc_pre_backward(x, fn, scale, base, mix, u, post, comb, dxn, *ATTRS)),
            args.reps)

    xg = x.clone().requires_grad_()

    def plain():
        (xg + xg).backward(dxn)

    us["plain.forward_backward"] = per_call_us(plain, args.reps)
    for recompute in (False, True):
        hc.recompute = recompute
        tag = "module" + (".recompute" if recompute else "")
        with torch.no_grad():
            us[f"{tag}.forward_no_grad"] = per_call_us(lambda: hc(x), args.reps)
        us[f"{tag}.forward"] = per_call_us(lambda: hc(xg), args.reps)

        def step():
            hc(xg).backward(dxn)
        us[f"{tag}.forward_backward"] = per_call_us(step, args.reps)

    hc.recompute = False
    # The backward normally runs on autograd's device thread, which cProfile does not see: in
    # the calling thread here (and timed that way too).
    with torch.autograd.set_multithreading_enabled(False):
        us["module.forward_backward_one_thread"] = per_call_us(
            lambda: hc(xg).backward(dxn), args.reps)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            hc(xg).backward(dxn)
        prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
    out["profile_module_forward_backward_200_calls"] = s.getvalue()
    for k, v in us.items():
        print(f"{k:36s} {v:8.1f} us")
    print(out["profile_module_forward_backward_200_calls"])
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
