#!/usr/bin/env python3
"""Checks that torch.compile of a model using mhc.torch computes what eager mode computes, on the GPU.

    PYTHONPATH=python MHC_CACHE=.mhc-cache python3 bench/check_torch_compile.py --json out.json

The block of bench/block_bench.py (pre-norm attention + SwiGLU, each sublayer wrapped in a
HyperConnection, n = 4), small enough to compile fast (T = 2 x 512), bf16, with the cuda backend
and with the reference backend: forward output and the gradient of every leaf (the stream input,
the mHC parameters, the sublayers' weights), eager against torch.compile(fullgraph=False). A leaf
whose gradient is missing on one side fails. Tolerance: relative error ||a - b|| / ||b|| <= 2e-2
(bf16; compiled kernels round differently), or, for the cuda backend when the reference backend
ran too, no worse than twice the reference backend's compiled-vs-eager error on every leaf
(judge_against_reference: at full size, compile moves the first HyperConnection's dscale by 30-50%
for both backends). Also times both, to tell a compiled step that skips
work from one that is merely faster.

At full size (--C 4096 --batch 4 --seq 4096) two more readings tell a real compile bug from an
ill-conditioned number: --cross compares each gradient of the cuda backend with the reference
backend's, both eager (two correct implementations of the same math: a gradient where they differ
as much as eager vs compiled does is cancellation, not a bug), and --profile records one step of
each mode with torch.profiler and reports the CUDA streams its kernels ran on, the kernels' summed
time and their span (first start to last end) beside the wall time.
"""
import argparse
import functools
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import block_bench as bb  # noqa: E402
from mhc.testing import relative_error  # noqa: E402

# an all-zero reference fails anything but an exact zero
relerr = functools.partial(relative_error, zero_ref_norm=1e-30)

TOL = 2e-2


def run(f, x, grad, leaves):
    for t in leaves:
        t.grad = None
    out = f(x)
    out.backward(grad)
    if x.is_cuda:
        torch.cuda.synchronize()
    return out.detach().clone(), [None if t.grad is None else t.grad.clone() for t in leaves]


def timed(f, x, grad, leaves, reps=5):
    run(f, x, grad, leaves)
    t = time.perf_counter()
    for _ in range(reps):
        run(f, x, grad, leaves)
    return (time.perf_counter() - t) / reps * 1e3


def judge_against_reference(row, rows):
    """A cuda-backend row over the absolute tolerance still passes when, leaf by leaf, its
    compiled-vs-eager error is at most twice the reference backend's (the same math in PyTorch,
    same model and seed) and nothing is missing: compile moves an ill-conditioned gradient (e.g.
    dscale, a cancelling sum over all tokens) as far for PyTorch's own ops as for mhc's kernels,
    while a kernel mis-wired under compile would stand out against the reference."""
    reference = next((r for r in rows if r["backend"] == "reference"
                      and r["recompute"] == row["recompute"]), None)
    if reference is None or any("missing" in g for g in row["grads"] + reference["grads"]):
        return
    ratios = [g["err"] / max(r["err"], TOL / 2) for g, r in zip(row["grads"], reference["grads"])]
    row["vs_reference"] = {"ratios": ratios, "limit": 2.0}
    row["ok"] = max(ratios) <= 2.0 and row["out"] <= max(TOL, 2 * reference["out"])
    print(f"backend=cuda recompute={row['recompute']!s:5s} against the reference backend under "
          f"compile: worst error ratio {max(ratios):.2f} (limit 2): {'ok' if row['ok'] else 'FAIL'}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--C", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--backends", default="cuda,reference")
    p.add_argument("--recompute", default="0,1", help="0, 1 or both")
    p.add_argument("--cross", action="store_true",
                   help="also compare every backend's eager gradients with the first backend's")
    p.add_argument("--profile", action="store_true",
                   help="profile one eager and one compiled step: streams, kernel time, span")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, reference backend only")
    args = p.parse_args(argv)
    dev = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        args.C, args.batch, args.seq = 64, 1, 32
    results, ok, first_eager = [], True, {}
    backends = ["reference"] if args.smoke else args.backends.split(",")
    for backend in backends:
        for recompute in [bool(int(r)) for r in args.recompute.split(",")]:
            torch.manual_seed(0)
            torch._dynamo.reset()
            dtype = torch.float32 if args.smoke else torch.bfloat16
            sub = bb.Sublayers(args.C, 16 if args.smoke else 64, dtype, dev)
            h = torch.randn(args.batch, args.seq, args.C, device=dev, dtype=dtype)
            x, f = bb.mhc_variant(sub, h, backend, recompute)
            leaves = bb.leaves(f, x, sub)
            grad = torch.randn_like(f(x))
            eager = run(f, x, grad, leaves)
            compiled_f = torch.compile(f)
            compiled = run(compiled_f, x, grad, leaves)
            row = {"backend": backend, "recompute": recompute, "leaves": len(leaves),
                   "out": relerr(compiled[0], eager[0]), "grads": []}
            good = row["out"] <= TOL
            for i, (a, b) in enumerate(zip(compiled[1], eager[1])):
                if a is None or b is None:
                    row["grads"].append({"leaf": i, "missing": "compiled" if a is None else "eager"})
                    good = good and a is None and b is None
                else:
                    e = relerr(a, b)
                    row["grads"].append({"leaf": i, "shape": list(b.shape), "err": e})
                    good = good and e <= TOL
            if args.cross:
                # Not a pass/fail criterion: how far two eager implementations of the same math
                # are apart, per leaf, next to the eager-vs-compiled error above.
                reference = first_eager.setdefault(recompute, (backend, eager))
                row["cross"] = {"against": reference[0], "out": relerr(eager[0], reference[1][0]),
                                "grads": [None if a is None or b is None else relerr(a, b)
                                          for a, b in zip(eager[1], reference[1][1])]}
            row["eager_ms"] = timed(f, x, grad, leaves)
            row["compiled_ms"] = timed(compiled_f, x, grad, leaves)
            if args.profile and dev.type == "cuda":
                trace = os.path.abspath(args.json) + ".trace.json"
                row["profile"] = {
                    "eager": bb.profile_kernels(lambda: run(f, x, grad, leaves), trace),
                    "compiled": bb.profile_kernels(lambda: run(compiled_f, x, grad, leaves), trace)}
                for mode, prof in row["profile"].items():
                    print(f"  {mode}: {bb.describe_profile(prof)}", flush=True)
            row["ok"] = bool(good)
            worst = max([g.get("err", 0.0) for g in row["grads"]] + [row["out"]])
            missing = [g for g in row["grads"] if "missing" in g]
            print(f"backend={backend:9s} recompute={recompute!s:5s} out err {row['out']:.2e} worst grad "
                  f"err {worst:.2e} missing {missing} eager {row['eager_ms']:.2f} ms compiled "
                  f"{row['compiled_ms']:.2f} ms: {'ok' if good else 'FAIL'}", flush=True)
            if "cross" in row:
                print(f"  eager {backend} vs eager {row['cross']['against']}: out "
                      f"{row['cross']['out']:.2e}, grads " + " ".join(
                          "-" if e is None else f"{e:.1e}" for e in row["cross"]["grads"]))
                print("  compiled vs eager, grads: " + " ".join(
                    f"{g['err']:.1e}" if "err" in g else "-" for g in row["grads"]), flush=True)
            results.append(row)
    for row in results:
        if not row["ok"] and row["backend"] == "cuda":
            judge_against_reference(row, results)
        ok = ok and row["ok"]
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"command": " ".join(sys.argv), "tolerance": TOL, "ok": ok, "rows": results}, fh,
                  indent=1)
    print("all checks pass" if ok else "FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
