#!/usr/bin/env python3
"""Host time of mhc.torch's launches with two runtime libraries, interleaved in one process, on
the GPU machine: an A/B of a runtime change that a host-time run per library cannot resolve (this
host's timing drifts by 1.5x between runs; interleaving rounds of 50 calls puts A and B under the
same drift).

    PYTHONPATH=python MHC_CACHE=.mhc-cache python3 bench/launch_ab.py \\
        --a .mhc-cache/libmhc_runtime.so --b other/libmhc_runtime.so --json out.json

Rows, each for A and B (the kernel set n = 4, C = 4096, bf16, T = 64, from $MHC_CACHE): run_op of
hc_pre (two launches) and hc_post (one), and two chained HyperConnections' forward (the C++ path,
recompute off). Per row: the best and the median over --rounds rounds of --reps calls.
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn

from mhc.torch import kernels, native
from mhc.torch.kernels import KernelSet
from mhc.torch.modules import HyperConnection

ATTRS = (20, 1e-6, 1e-6, 2.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="runtime library A")
    p.add_argument("--b", required=True, help="runtime library B")
    p.add_argument("--json", required=True)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=40)
    args = p.parse_args(argv)
    n, C, dev = 4, 4096, torch.device("cuda")
    x = torch.randn(args.T, n, C, device=dev, dtype=torch.bfloat16)
    folder = kernels.for_call("hc_pre", x, ATTRS).folder
    sets = {name: KernelSet(folder, runtime=kernels.load_runtime(path))
            for name, path in (("A", args.a), ("B", args.b))}
    steps = native.load()
    assert steps is not None, native.failure()
    hcs = [HyperConnection(n, C, nn.Identity(), backend="cuda", recompute=False, layer=i).to(dev)
           for i in range(2)]
    fn, scale, base = (t.detach() for t in (hcs[0].fn, hcs[0].scale, hcs[0].base))
    xg = x.clone().requires_grad_()

    def rows(ks):
        handle = ks.native_handle()
        u, post, comb, mix = steps.run_op(handle, "hc_pre", [x, fn, scale, base])

        def chained():
            x1 = hcs[0]._forward_native(ks, xg, *hcs[0]._params(xg))
            return hcs[1]._forward_native(ks, x1, *hcs[1]._params(x1))
        return {"run_op.hc_pre": lambda: steps.run_op(handle, "hc_pre", [x, fn, scale, base]),
                "run_op.hc_post": lambda: steps.run_op(handle, "hc_post", [u, x, post, comb]),
                "module.two_in_a_row.forward": chained}
    calls = {name: rows(ks) for name, ks in sets.items()}
    readings = {(row, name): [] for name in calls for row in calls[name]}
    for fns in calls.values():
        for f in fns.values():
            for _ in range(20):
                f()
    torch.cuda.synchronize()
    for _ in range(args.rounds):
        for row in calls["A"]:
            for name in ("A", "B"):
                f = calls[name][row]
                t = time.perf_counter()
                for _ in range(args.reps):
                    f()
                readings[(row, name)].append((time.perf_counter() - t) / args.reps * 1e6)
                torch.cuda.synchronize()
    report({"a": args.a, "b": args.b, "T": args.T, "reps": args.reps, "rounds": args.rounds,
            "device": torch.cuda.get_device_name(), "torch": torch.__version__}, readings, args.json)


def report(out, readings, path):
    """Adds out["rows"] (best and median per row and version) from `readings` {(row, "A" or "B"):
    [us per round]}, prints them and writes `out` to `path` (bench/native_ab.py's too)."""
    out["rows"] = {}
    for (row, name), r in readings.items():
        out["rows"].setdefault(row, {})[name] = {"best_us": min(r), "median_us": statistics.median(r)}
    for row, v in out["rows"].items():
        print(f"{row:42s} A {v['A']['best_us']:7.1f} / {v['A']['median_us']:7.1f}   "
              f"B {v['B']['best_us']:7.1f} / {v['B']['median_us']:7.1f}  us (best / median)")
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
