#!/usr/bin/env python3
"""Checks on the GPU that the chain's two halves are bit-identical to the ops they stand for, in
every kernel set of a cache:

* hc_pre_mixed(x, mix) == hc_pre(x)'s u, post, comb when mix is hc_pre's own mix -- what the
  recomputation (recompute=True) relies on: it recomputes u/post/comb from the saved mix;
* hc_post_project(y, x, post, comb, fn_next) == (hc_post(...), hc_pre(x_next, fn_next)'s mix) --
  what chaining (eager C++ path, mhc.torch.chain_pass under torch.compile) relies on.

    MHC_NATIVE=0 python3 bench/check_chain_ops.py --cache .mhc-cache --json out.json

Inputs: check_backward.py's seeded random data (never zeros), T in --Ts; every result compared
with torch.equal (the largest difference printed where not equal).
"""
import argparse, json, os, sys
from pathlib import Path

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
from mhc.torch import kernels as K  # noqa: E402
from compare_kernel_sets import inputs  # noqa: E402


def check(key, ks, Ts, rows):
    differ = 0
    for T in Ts:
        d = inputs(key, T, seed=T + 1)
        fn_next = inputs(key, T, seed=T + 2)["fn"]
        u, post, comb, mix = ks.run("hc_pre", d["x"], d["fn"], d["scale"], d["base"])
        x_next = ks.run("hc_post", d["y"], d["x"], post, comb)[0]
        mix_next = ks.run("hc_pre", x_next, fn_next, d["scale"], d["base"])[3]
        pairs = {
            "hc_pre_mixed": (ks.run("hc_pre_mixed", d["x"], mix, d["scale"], d["base"]),
                             (u, post, comb), ("u", "post", "comb")),
            "hc_post_project": (ks.run("hc_post_project", d["y"], d["x"], post, comb, fn_next),
                                (x_next, mix_next), ("x_next", "mix_next")),
        }
        torch.cuda.synchronize()
        for op, (got, want, names) in pairs.items():
            for name, g, w in zip(names, got, want):
                same = torch.equal(g, w)
                diff = 0.0 if same else (g.double() - w.double()).abs().max().item()
                rows.append(dict(set=key.folder_name(), T=T, op=op, result=name, identical=same,
                                 max_abs_diff=diff))
                if not same:
                    differ += 1
                    print(f"  {key.folder_name()} T={T} {op} {name}: DIFFERS by {diff:.3e}",
                          flush=True)
    print(f"{key.folder_name()}: {differ} results differ", flush=True)
    return differ


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="kernel cache root")
    ap.add_argument("--Ts", default="0,1,17,1000,4097,16384")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    root = Path(args.cache).resolve()
    Ts = [int(t) for t in args.Ts.split(",")]
    rows, differ, sets = [], 0, []
    for manifest in sorted(root.glob("*/*/*/manifest.json")):
        key = K.KernelKey.from_dict(json.loads(manifest.read_text())["key"])
        ks = K.KernelSet(key.folder(root))
        if not ks.chains:
            print(f"{key.folder_name()}: no chain ops, skipped")
            continue
        sets.append(key.folder_name())
        differ += check(key, ks, Ts, rows)
    with open(args.json, "w") as f:
        json.dump(dict(cache=args.cache, Ts=Ts, sets=sets, rows=rows, differ=differ), f, indent=1)
    print(f"{differ} of {len(rows)} results differ, {len(sets)} kernel sets")
    return 1 if differ or not sets else 0


if __name__ == "__main__":
    sys.exit(main())
