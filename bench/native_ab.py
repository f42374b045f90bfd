#!/usr/bin/env python3
"""Host time of HyperConnection on the C++ path with two versions of native.cpp, interleaved in one
process, on the GPU machine: an A/B of a change to the C++ steps that separate host-time runs cannot
resolve (this host's timing drifts by 1.5x between runs and processes; interleaving rounds of 50
calls puts A and B under the same drift).

    git show OLD:python/mhc/torch/native.cpp > /tmp/native_a.cpp
    PYTHONPATH=python MHC_CACHE=.mhc-cache MHC_NATIVE=1 taskset -c 5 \\
        python3 bench/native_ab.py --a /tmp/native_a.cpp --json out.json

A is built as its own extension module beside B, this tree's native.cpp (native.load()); both get
the kernel set n = 4, C = 4096, bf16 from $MHC_CACHE and take HyperConnection's fast path in turn.
Rows (T = 64, Identity sublayers unless said): one forward; two in a row (the second chained, a
model's steady state), with and without recomputation; around RMSNorm + Linear with recomputation;
forward + backward. Per row and version: the best and the median over --rounds rounds of --reps
calls. A must take the same set_signatures / add_op / enable_fast_path / forward arguments as B.
"""
import argparse
import os
import sys
import time

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
sys.path.insert(0, HERE)
from launch_ab import report  # noqa: E402
from mhc.torch import kernels, modules, native  # noqa: E402
from mhc.torch.modules import HyperConnection  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="native.cpp of version A")
    p.add_argument("--json", required=True)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)
    n, C, dev = 4, 4096, torch.device("cuda")
    b = native.load()
    assert b is not None, native.failure()
    a = native._compile("mhc_torch_native_a", args.a, native.build_directory() / "ab-a")
    a.set_signatures(kernels.signature_table())
    torch.manual_seed(0)
    xg = torch.randn(args.T, n, C, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dxn = torch.randn_like(xg)
    hc, hc2 = (HyperConnection(n, C, nn.Identity(), backend="cuda", layer=i).to(dev)
               for i in range(2))
    norm_linear = nn.Sequential(nn.RMSNorm(C), nn.Linear(C, C)).to(dev, xg.dtype)
    hc_nl = HyperConnection(n, C, norm_linear, backend="cuda").to(dev)
    hc(xg)                                        # picks the kernel set (the general path)
    ks = modules._native_kernel_set(xg, hc.attrs)
    versions = {"A": a, "B": b}
    handles = {"A": native.register(ks, a), "B": ks.native_handle()}
    for name, module in versions.items():
        module.enable_fast_path(n, C, *hc.attrs, ks.key.dtype, xg.get_device(), handles[name])

    def use(name):                                # modules.py calls native.fast_forward
        native.fast_forward = versions[name].forward

    def recompute(on):
        hc.recompute = hc2.recompute = on

    rows = {
        "module.forward": (False, lambda: hc(xg)),
        "module.two_in_a_row.forward": (False, lambda: hc2(hc(xg))),
        "module.recompute.two_in_a_row.forward": (True, lambda: hc2(hc(xg))),
        "module.recompute.norm_linear.forward": (True, lambda: hc_nl(xg)),
        "module.forward_backward": (False, lambda: hc(xg).backward(dxn)),
        "module.recompute.forward_backward": (True, lambda: hc(xg).backward(dxn)),
    }
    readings = {(row, name): [] for row in rows for name in versions}
    for name in versions:                         # warm-up; each version learns the chain
        use(name)
        for on, f in rows.values():
            recompute(on)
            for _ in range(20):
                f()
    torch.cuda.synchronize()
    for r in range(args.rounds):
        for row, (on, f) in rows.items():
            recompute(on)
            for name in (("A", "B") if r % 2 == 0 else ("B", "A")):   # no position advantage
                use(name)
                t = time.perf_counter()
                for _ in range(args.reps):
                    f()
                readings[(row, name)].append((time.perf_counter() - t) / args.reps * 1e6)
                torch.cuda.synchronize()
    use("B")
    report({"a": args.a, "b": str(native.SOURCE), "T": args.T, "reps": args.reps,
            "rounds": args.rounds, "device": torch.cuda.get_device_name(),
            "torch": torch.__version__}, readings, args.json)


if __name__ == "__main__":
    main()
