"""A compiled stack's fold ops traced against a second kernel set, on the stack's own inputs.

    PYTHONPATH=python:bench MHC_NATIVE=0 python3 bench/trace_fold_ops.py SET_ROOT OTHER_ROOT [trace|plain]

check_fold_dy.py's setup (T = 1024, 2 blocks, bf16, recompute), compiled with Inductor, with
the fold and without, on the kernel cache SET_ROOT; every mhc op launched through the Python path
(MHC_NATIVE=0) is traced: after each launch the stream is synchronised and
  - every argument compared with a copy taken before the launch (an op must not write its inputs),
  - the leaves (x and all parameters) with a copy taken at the start (nothing in a step writes them),
  - the fold's ops (hc_joint_backward_lower, hc_pre_backward_lower) run again on the copied
    arguments, on SET_ROOT's set and on OTHER_ROOT's (e.g. two versions of a kernel), results
    compared bit for bit; where they differ, which results and rows, and whether replacing one
    argument by random values changes that.
Then the output and gradients with the fold against those without it (as check_fold_dy.py
--compiler inductor). Written to find why the staged fold failed that check (twenty-fifth session,
session25.log call 1): its ops matched the first version's on every call. It runs with
PyTorch's default algorithms, whose flash-attention backward is not deterministic: the cause of
that failure, found in the twenty-sixth session (check_fold_dy.py turns them on).
"""
import os
import sys
from pathlib import Path

import torch

sys.path[:0] = ["python", "bench"]
os.environ["MHC_CACHE"] = sys.argv[1]
from mhc.torch import kernels as K  # noqa: E402
import check_fold_dy as cf  # noqa: E402

OTHER_ROOT = Path(sys.argv[2])        # a cache root (KernelKey.folder adds version/chip/name)
TRACE = (sys.argv[3] if len(sys.argv) > 3 else "trace") == "trace"
FOLD_OPS = ("hc_joint_backward_lower", "hc_pre_backward_lower")
orig_run = K.KernelSet.run
other_sets = {}
watch = []          # (name, tensor, copy)


def copies(args):
    """The arguments with every tensor copied."""
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def describe(a):
    if not isinstance(a, torch.Tensor):
        return repr(a)
    return (f"{tuple(a.shape)}/{tuple(a.stride())}{'' if a.is_contiguous() else ' NONCONTIG'}"
            f" off{a.storage_offset()} al{a.data_ptr() % 16}")


def overlaps(ts):
    spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i)
             for i, t in enumerate(ts) if isinstance(t, torch.Tensor) and t.numel()]
    out = []
    for a0, a1, i in spans:
        for b0, b1, j in spans:
            if i < j and a0 < b1 and b0 < a1:
                out.append((i, j))
    return out


def bisect(mine, other, op, snap, out, first):
    """Where do the two sets differ, and which argument's values make them differ?"""
    for k, (a, b) in enumerate(zip(out, first)):
        if torch.equal(a, b):
            continue
        d = (a.float() - b.float()).abs().reshape(-1, a.shape[-1])     # rows of the last dim
        rows = torch.nonzero(d.amax(dim=1)).flatten()
        print(f"      result {k} {tuple(a.shape)}: {rows.numel()} rows differ, first {rows[:12].tolist()}"
              f" last {rows[-4:].tolist()}; nonfinite here {(~torch.isfinite(a)).sum().item()}"
              f" other {(~torch.isfinite(b)).sum().item()}")
    for i, s in enumerate(snap):
        if not isinstance(s, torch.Tensor) or not s.is_floating_point():
            continue
        alt = copies(snap)
        alt[i] = (torch.rand_like(s.float()) * 0.5 + 0.25).to(s.dtype)
        r2 = orig_run(mine, op, *alt)
        r1 = orig_run(other, op, *copies(alt))
        torch.cuda.synchronize()
        print(f"      arg {i} replaced by random: results equal {[torch.equal(a, b) for a, b in zip(r2, r1)]}")
    print("      nonfinite per argument:", [(~torch.isfinite(s)).sum().item() if isinstance(s, torch.Tensor)
                                            and s.is_floating_point() else None for s in snap])


def traced(self, op, *args, stream=0):
    plan = self.plans[op]
    n = plan.n_args
    torch.cuda.synchronize()
    snap = copies(args[:n])
    out = orig_run(self, op, *args, stream=stream)
    torch.cuda.synchronize()
    rec = dict(op=op, T=K.x_argument(op, args).numel() // (self.key.n * self.key.C))
    rec["inputs_written"] = [i for i, (a, s) in enumerate(zip(args[:n], snap))
                             if isinstance(a, torch.Tensor) and not torch.equal(a, s)]
    rec["leaves_written"] = [name for name, t, c in watch if not torch.equal(t, c)]
    rec["overlaps"] = overlaps(list(args[:n]) + list(out))
    rec["args"] = [describe(a) for a in args[:n]]
    if op in FOLD_OPS:
        other = other_sets.get(self.key)
        if other is None:
            other = other_sets[self.key] = K.KernelSet(self.key.folder(OTHER_ROOT), self.key,
                                                 runtime=self.runtime)
        again = orig_run(self, op, *copies(snap), stream=stream)
        first = orig_run(other, op, *copies(snap), stream=stream)
        torch.cuda.synchronize()
        rec["same_again"] = [torch.equal(a, b) for a, b in zip(out, again)]
        rec["same_as_other"] = [torch.equal(a, b) for a, b in zip(out, first)]
        rec["other_maxdiff"] = [(a.float() - b.float()).abs().max().item() for a, b in zip(out, first)]
        if not all(rec["same_as_other"]):
            bisect(self, other, op, snap, out, first)
    bad = (rec["inputs_written"] or rec["leaves_written"] or rec["overlaps"]
           or not all(rec.get("same_again", [True])) or not all(rec.get("same_as_other", [True])))
    print(("!! " if bad else "   ") + str({k: v for k, v in rec.items() if k != "args"}))
    if bad or op in FOLD_OPS:
        print("      args:", rec["args"])
    return out


def main():
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = False
    f, x, grad, leaves = cf.stack(2, 4096, 1, 1024, torch.device("cuda"), torch.bfloat16)
    watch.extend((f"leaf{i}", t, t.detach().clone()) for i, t in enumerate(leaves))
    rows = {}
    for fold in ("1", "0"):
        os.environ["MHC_COMPILE_FOLD_DY"] = fold
        torch._dynamo.reset()
        compiled = torch.compile(f, fullgraph=True)
        K.KernelSet.run = traced if TRACE else orig_run
        print(f"== fold {fold}: step 1")
        out, grads = cf.step(compiled, x, grad, leaves)
        print(f"== fold {fold}: step 2 (untraced)")
        K.KernelSet.run = orig_run
        out2, grads2 = cf.step(compiled, x, grad, leaves)
        torch.cuda.synchronize()
        same2 = torch.equal(out, out2) and all(torch.equal(a, b) for a, b in zip(grads, grads2)
                                               if a is not None)
        print(f"fold {fold}: step 2 identical to step 1: {same2}")
        rows[fold] = (out, grads)
    (o1, g1), (o0, g0) = rows["1"], rows["0"]
    diff = [i for i, (a, b) in enumerate(zip(g1, g0)) if not torch.equal(a, b)]
    print(f"output identical: {torch.equal(o1, o0)}; differing leaves: {diff or 'none'}")
    print("leaves written during the run:", [n for n, t, c in watch if not torch.equal(t, c)])


if __name__ == "__main__":
    main()
