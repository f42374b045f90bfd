#!/usr/bin/env python3
"""Checks the dy fold of mhc.torch.chain_pass on the GPU: a compiled stack of blocks gives the
same loss and gradients with the fold as without it, and its backward runs the fold's ops.

    PYTHONPATH=python:bench MHC_CACHE=.mhc-cache python3 bench/check_fold_dy.py --json out.json

The blocks of bench/block_bench.py (pre-norm attention + SwiGLU, each sublayer wrapped in a
HyperConnection with the cuda backend, n = 4, bf16), --blocks of them, compiled with
torch.compile(fullgraph=True) twice in one process: with the fold (MHC_COMPILE_FOLD_DY=1) and
without (=0). Same inputs, same output cotangent. Pass: the output and every leaf's gradient
bit-identical (the fold's ops run the same kernels, which store the same values:
check_backward.py checks that per op; with --tolerance, within it: a set built before the fold
runs its ops on older kernels), and the profiled compiled step calls the ops the fold should
leave (2k sublayers: one hc_post_backward, one hc_pre_backward_lower, 2k - 2
hc_joint_backward_lower, one hc_joint_backward) against 2k hc_post_backward + 2k hc_pre_backward
without it. Also times both steps (CUDA events, median).

--compiler passes (the default) compiles with chain_pass.passes_only_backend: mhc's pass on the
captured graphs, run op by op, so that the two compiles differ only in what the fold did.
--compiler inductor compiles with Inductor (its FX graph cache off, so that each compile runs
the pass) as a model is trained; the code Inductor generates around the mhc ops could in
principle differ between the two compiles (other fusions, reduction configurations picked by
timing; seen once in 13 runs without deterministic algorithms); with them both modes were
bit-identical in 8 of 8 runs on an H100 (twenty-sixth session; most failures without them were
the flash-attention atomics below). --tolerance allows a relative error per leaf where needed.
The ops each mode calls are counted from the backward graphs (passes) or profiled (inductor).
Deterministic algorithms are on (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG):
PyTorch's flash-attention backward accumulates dq with atomics by default, so two steps of one
compile may differ in the last bit of a gradient (blocks.0.wqkv's, by 1e-11 normwise, on an H100
in the twenty-sixth session) -- the block's own noise, not the fold's. --nondeterministic leaves
PyTorch's defaults. Either way each compile runs its step twice: a leaf whose gradient differs
(or an output) between the two is reported as the block's own nondeterminism
(repeat_differing_leaves, repeat_same_output): without deterministic algorithms even the forward
output moved between two compiles once on an H100 (twenty-sixth session).
--smoke runs the passes mode on the CPU at tiny sizes, where the ops are the reference math (CI).
"""
import argparse
import collections
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

BACKWARD_OPS = ("hc_post_backward", "hc_pre_backward", "hc_pre_backward_lower",
                "hc_joint_backward", "hc_joint_backward_lower")


def stack(blocks, C, batch, seq, dev, dtype, backend="cuda"):
    """The checked stack (seed 0): (f, its input x, the output cotangent, the leaves)."""
    torch.manual_seed(0)
    sub = bb.Blocks(blocks, C, 128, dtype, dev)
    h = torch.randn(batch, seq, C, device=dev, dtype=dtype)
    x, f = bb.mhc_variant(sub, h, backend, recompute=True)
    return f, x, torch.randn_like(f(x)), bb.leaves(f, x, sub)


def step(f, x, grad, leaves):
    for t in leaves:
        t.grad = None
    out = f(x)
    out.backward(grad)
    return out.detach(), [None if t.grad is None else t.grad.detach().clone() for t in leaves]


def mhc_op_calls(f, x, grad, leaves):
    """How often the profiled step called each mhc:: op (dispatcher records)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(f, x, grad, leaves)
        if x.is_cuda:
            torch.cuda.synchronize()
    counts = collections.Counter(e.name.removeprefix("mhc::") for e in prof.events()
                                 if e.name.startswith("mhc::"))
    return dict(sorted(counts.items()))


def median_ms(f, x, grad, leaves, reps=10):
    times = []
    for _ in range(reps):
        if x.is_cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step(f, x, grad, leaves)
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            start = time.perf_counter()
            step(f, x, grad, leaves)
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--C", type=int, default=4096)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="relative error allowed per leaf (0: bit-identical); a kernel set built "
                        "before the fold runs it as hc_pre_backward's kernels + PyTorch")
    p.add_argument("--compiler", choices=("passes", "inductor"), default="passes",
                   help="passes: mhc's pass without Inductor's code generation (bit-identity "
                        "holds); inductor: as trained (see above)")
    p.add_argument("--nondeterministic", action="store_true",
                   help="leave PyTorch's default (nondeterministic) algorithms, e.g. flash "
                        "attention's atomic dq (see above)")
    p.add_argument("--smoke", action="store_true",
                   help="CPU, tiny sizes, where the mhc:: ops run the reference math: the script "
                        "works end to end (what CI runs); no kernel is checked")
    args = p.parse_args(argv)
    if args.smoke:
        args.C, args.seq = 256, 16
    if not args.nondeterministic:
        # Before the first cuBLAS call: its handles read the workspace setting when created.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = False       # each compile must run the pass
    from mhc.torch import chain_pass
    backward_graph_ops = []    # --compiler passes: the mhc ops of each backward graph compiled

    def count_backward_ops(gm, backward):
        if backward:
            backward_graph_ops.append(dict(sorted(collections.Counter(
                str(node.target).removeprefix("mhc.").removesuffix(".default")
                for node in gm.graph.nodes
                if node.op == "call_function" and str(node.target).startswith("mhc.")).items())))

    backend = (chain_pass.passes_only_backend(count_backward_ops) if args.compiler == "passes"
               else "inductor")
    dev, dtype = torch.device("cpu" if args.smoke else "cuda"), torch.bfloat16
    # --smoke: the mhc:: ops on the CPU (backend "ops"), where they run the reference math.
    f, x, grad, leaves = stack(args.blocks, args.C, args.batch, args.seq, dev, dtype,
                               "ops" if args.smoke else "cuda")
    rows = {}
    for fold in ("1", "0"):
        os.environ["MHC_COMPILE_FOLD_DY"] = fold
        torch._dynamo.reset()
        compiled = torch.compile(f, fullgraph=True, backend=backend)
        out, grads = step(compiled, x, grad, leaves)
        out_again, grads_again = step(compiled, x, grad, leaves)
        # The ops the step calls: with --compiler passes those of its backward graph (the
        # profiler misses some custom ops run from an FX graph on the CPU), else as profiled.
        calls = (backward_graph_ops[-1] if args.compiler == "passes"
                 else mhc_op_calls(compiled, x, grad, leaves))
        rows[fold] = dict(out=out, grads=grads, out_again=out_again, grads_again=grads_again,
                          calls=calls,
                          ms=median_ms(compiled, x, grad, leaves))
    on, off = rows["1"], rows["0"]
    same_out = relerr(on["out"], off["out"]) <= args.tolerance
    errors = [None if a is None or b is None else relerr(a, b)
              for a, b in zip(on["grads"], off["grads"])]
    differing = [i for i, (a, b, e) in enumerate(zip(on["grads"], off["grads"], errors))
                 if (a is None) != (b is None) or (e is not None and e > args.tolerance)]
    # Two steps of one compile: what differs there is the block's own nondeterminism.
    repeat_differing = sorted({i for row in (on, off)
                               for i, (a, b) in enumerate(zip(row["grads"], row["grads_again"]))
                               if a is not None and b is not None and not torch.equal(a, b)})
    repeat_same_output = all(torch.equal(row["out"], row["out_again"]) for row in (on, off))
    k = 2 * args.blocks
    want_on = {"hc_post_backward": 1, "hc_pre_backward_lower": 1,
               "hc_joint_backward_lower": k - 2, "hc_joint_backward": 1}
    want_off = {"hc_post_backward": k, "hc_pre_backward": k}
    got_on = {op: n for op, n in on["calls"].items() if op in BACKWARD_OPS}
    got_off = {op: n for op, n in off["calls"].items() if op in BACKWARD_OPS}
    ok = same_out and not differing and got_on == want_on and got_off == want_off
    device_name = torch.cuda.get_device_name() if dev.type == "cuda" else str(dev)
    result = dict(device=device_name, torch=torch.__version__, C=args.C,
                  blocks=args.blocks, tokens=args.batch * args.seq, leaves=len(leaves),
                  compiler=args.compiler, deterministic=not args.nondeterministic,
                  repeat_differing_leaves=repeat_differing,
                  repeat_same_output=repeat_same_output,
                  tolerance=args.tolerance, same_output=same_out, differing_leaves=differing,
                  leaf_errors=errors,
                  calls_fold=on["calls"], calls_no_fold=off["calls"],
                  step_ms_fold=on["ms"], step_ms_no_fold=off["ms"], ok=ok)
    print(f"output within {args.tolerance:g}: {same_out}; leaves whose gradient differs by more: "
          f"{differing or 'none'} (of {len(leaves)}; worst "
          f"{max(e for e in errors if e is not None):.3g})")
    if repeat_differing or not repeat_same_output:
        print(f"between two steps of one compile: output "
              f"{'the same' if repeat_same_output else 'differs'}, leaves whose gradient "
              f"differs: {repeat_differing or 'none'} (the block's own nondeterminism, not "
              f"the fold's)")
    print(f"backward ops with the fold: {got_on} (want {want_on})")
    print(f"backward ops without it:    {got_off} (want {want_off})")
    print(f"step: {on['ms']:.2f} ms with the fold, {off['ms']:.2f} ms without "
          f"(T = {args.batch * args.seq}, {args.blocks} blocks; a check, not a benchmark)")
    print("ok" if ok else "FAIL")
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
