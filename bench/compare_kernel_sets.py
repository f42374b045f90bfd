#!/usr/bin/env python3
"""Runs the ops of two kernel caches (forward and backward) on the same random inputs and says
whether their results are bit-identical (for kernel rewrites that must not change a single result).

    MHC_NATIVE=0 python3 bench/compare_kernel_sets.py --a .mhc-cache-old --b .mhc-cache \
        --json out.json                  # every kernel set both caches hold (or --n/--C/--dtype)

For each kernel set and T in --Ts (one token, a partial tile, many token splits; the forward ops
switch to their few-token kernels at T <= 4096, so 5000 and 16384 run their main kernels): x, y,
fn, scale, base, du, dx_next seeded random as check_backward.py makes them (never zeros); the
mix, post and comb from set A's hc_pre and dpost, dcomb from its hc_post_backward (what training
passes; fn_next is fn); then every op in OPS of A and of B, every result compared with
torch.equal (the largest difference printed where not equal; a non-finite result of B also
counts as a difference).
"""
import argparse, json, os, sys
from pathlib import Path

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "test", "Integration", "GPU", "harness"))
from mhc.torch import kernels as K  # noqa: E402
import check_backward  # noqa: E402  (its inputs: the backward check's random data)

OPS = ("hc_pre", "hc_post", "hc_pre_mixed", "hc_post_project", "hc_steady_forward",
       "hc_post_backward", "hc_pre_backward", "hc_sublayer_backward")


def inputs(key, T, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    names = ("x", "y", "fn", "scale", "base", "du", "dx_next")
    return dict(zip(names, check_backward.inputs(key, T, gen)))


def compare(key, sets, Ts, rows):
    """Appends one row per result to `rows`; returns how many differ."""
    differ = 0
    for T in Ts:
        d = inputs(key, T, seed=T)
        u, post, comb, mix = sets["a"].run("hc_pre", d["x"], d["fn"], d["scale"], d["base"])
        dy, dpost, dcomb = sets["a"].run("hc_post_backward", d["y"], d["x"], post, comb,
                                         d["dx_next"])
        given = dict(d, mix=mix, post=post, comb=comb, dpost=dpost, dcomb=dcomb, fn_next=d["fn"])
        for op in OPS:
            names_in, names_out = K.OP_BUFFERS[op]
            outs = {s: ks.run(op, *[given[a] for a in names_in]) for s, ks in sets.items()}
            torch.cuda.synchronize()
            for name, ra, rb in zip(names_out, outs["a"], outs["b"]):
                same = torch.equal(ra, rb)
                diff = 0.0 if same else (ra.double() - rb.double()).abs().max().item()
                finite = bool(torch.isfinite(rb).all())
                rows.append(dict(set=key.folder_name(), T=T, op=op, result=name, identical=same,
                                 max_abs_diff=diff, finite=finite))
                if not (same and finite):
                    differ += 1
                    print(f"  {key.folder_name()} T={T} {op} {name}: "
                          f"{'identical' if same else f'DIFFERS by {diff:.3e}'}"
                          f"{'' if finite else ', NOT FINITE'}", flush=True)
    print(f"{key.folder_name()}: {differ} results differ", flush=True)
    return differ


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="kernel cache root of the reference build")
    ap.add_argument("--b", required=True, help="kernel cache root of the build to compare")
    ap.add_argument("--n", type=int)
    ap.add_argument("--C", type=int)
    ap.add_argument("--dtype")
    ap.add_argument("--Ts", default="1,17,1000,5000,16384")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    roots = {"a": Path(args.a).resolve(), "b": Path(args.b).resolve()}
    keys = []
    for manifest in sorted(roots["a"].glob("*/*/*/manifest.json")):
        key = K.KernelKey.from_dict(json.loads(manifest.read_text())["key"])
        wanted = all(v is None or getattr(key, f) == v
                     for f, v in (("n", args.n), ("C", args.C), ("dtype", args.dtype)))
        if wanted and (key.folder(roots["b"]) / "manifest.json").exists():
            keys.append(key)
    if not keys:
        sys.exit("no kernel set is in both caches")
    Ts = [int(t) for t in args.Ts.split(",")]
    rows, differ = [], 0
    for key in keys:
        sets = {name: K.KernelSet(key.folder(root)) for name, root in roots.items()}
        differ += compare(key, sets, Ts, rows)
    with open(args.json, "w") as f:
        json.dump(dict(a=args.a, b=args.b, Ts=Ts, sets=[k.folder_name() for k in keys],
                       rows=rows, differ=differ), f, indent=1)
    print(f"{differ} of {len(rows)} results differ, {len(keys)} kernel sets")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
