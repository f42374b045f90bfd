#!/usr/bin/env python3
"""The forward ops' few_tokens variants (16 tokens per block, launched for T <= max_T; docs/GPU.md,
"Schedule") against the ops' own kernels on the GPU: the same results bit for bit, and the GPU
time of both at small T.

    MHC_CACHE=.mhc-cache MHC_NATIVE=0 python3 bench/check_few_tokens.py --json out.json

For every kernel set of the cache that has the variants (or --n/--C/--dtype) and T in --Ts:
seeded random inputs (check_backward.py's, never zeros; mix, post and comb from hc_pre), each
forward op launched with its own kernels and with its few_tokens kernels at the same T, every
result compared with torch.equal (the largest difference printed where not equal). Then, for the
sets in --time (n:C:dtype), each op's GPU time per call with both at --time-Ts
(host_time.gpu_us_per_call: calls queued behind a sleeping kernel, run back to back).
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "test", "Integration", "GPU", "harness"))
sys.path.insert(0, HERE)
from mhc.torch import kernels as K  # noqa: E402
from compare_kernel_sets import inputs  # noqa: E402  (check_backward.py's random inputs)
from host_time import gpu_us_per_call  # noqa: E402

OPS = ("hc_pre", "hc_post", "hc_pre_mixed", "hc_post_project", "hc_steady_forward")


def calls(ks, key, T, seed):
    """op -> (plan, arguments) for the forward ops of `ks` at T tokens."""
    d = inputs(key, T, seed)
    x, y, fn, scale, base = (d[k] for k in ("x", "y", "fn", "scale", "base"))
    u, post, comb, mix = ks.run("hc_pre", x, fn, scale, base)
    args = {"hc_pre": (x, fn, scale, base), "hc_post": (y, x, post, comb),
            "hc_pre_mixed": (x, mix, scale, base), "hc_post_project": (y, x, post, comb, fn),
            "hc_steady_forward": (x, mix, scale, base, y, fn)}
    return {op: (ks.plans[op], args[op]) for op in OPS if op in ks.plans}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--n", type=int, action="append")
    p.add_argument("--C", type=int, action="append")
    p.add_argument("--dtype", action="append")
    p.add_argument("--Ts", default="0,1,17,1000,4096")
    p.add_argument("--time", default="4:4096:bf16,4:2560:bf16,4:7168:bf16,4:512:bf16")
    p.add_argument("--time-Ts", default="64,256,1024,4096")
    args = p.parse_args(argv)
    root = K.cache_root()
    sets = []
    for manifest in sorted(root.glob("*/*/*/manifest.json")):
        key = K.KernelKey.from_dict(json.loads(manifest.read_text())["key"])
        if ((args.n and key.n not in args.n) or (args.C and key.C not in args.C)
                or (args.dtype and key.dtype not in args.dtype)):
            continue
        ks = K.KernelSet(manifest.parent, key)
        if any(plan.few_tokens for plan in ks.plans.values()):
            sets.append((key, ks))
    stream = torch.cuda.current_stream().cuda_stream
    rows, differ = [], 0
    for key, ks in sets:
        lib = ks.runtime.lib
        for T in (int(t) for t in args.Ts.split(",")):
            for op, (plan, a) in calls(ks, key, T, seed=T).items():
                own = plan.launch(lib, stream, a)
                few = plan.few_tokens.launch(lib, stream, a)
                torch.cuda.synchronize()
                for i, (ra, rb) in enumerate(zip(own, few)):
                    same = torch.equal(ra, rb) and bool(torch.isfinite(rb.float()).all())
                    diff = 0.0 if same else (ra.double() - rb.double()).abs().max().item()
                    differ += not same
                    rows.append({"n": key.n, "C": key.C, "dtype": key.dtype, "T": T, "op": op,
                                 "result": K.OP_BUFFERS[op][1][i], "equal": same, "max_diff": diff})
                    if not same:
                        print(f"DIFFER n={key.n} C={key.C} {key.dtype} T={T} {op} "
                              f"{K.OP_BUFFERS[op][1][i]}: max |a - b| = {diff:.3g}", flush=True)
    print(f"{differ} of {len(rows)} results differ, {len(sets)} kernel sets", flush=True)
    timed = {}
    wanted = {tuple(s.split(":")) for s in args.time.split(",") if s}
    for key, ks in sets:
        if (str(key.n), str(key.C), key.dtype) not in wanted:
            continue
        lib, name = ks.runtime.lib, f"n{key.n}-C{key.C}-{key.dtype}"
        for T in (int(t) for t in args.time_Ts.split(",")):
            for op, (plan, a) in calls(ks, key, T, seed=1).items():
                own = gpu_us_per_call(lambda: plan.launch(lib, stream, a))
                few = gpu_us_per_call(lambda: plan.few_tokens.launch(lib, stream, a))
                timed.setdefault(name, {}).setdefault(op, {})[T] = {"own_us": own, "few_us": few}
                print(f"{name} T={T:5d} {op:16s} own {own:8.1f} us  few_tokens {few:8.1f} us  "
                      f"x{own / few:.2f}", flush=True)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "differ": differ, "results": len(rows), "sets": len(sets), "rows": rows,
           "time_us": timed}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
