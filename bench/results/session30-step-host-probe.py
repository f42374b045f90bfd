"""Where a compiled step's host time goes, plain against mHC: block_bench's four-block stack under
torch.compile, a few steps under torch.profiler (CPU activity only, so the GPU's kernels are not
traced), the host ops with the most self CPU time, and the host ms per step without the profiler.
Run on the GPU machine from the repo root (MHC_CACHE set):
    PYTHONPATH=python:bench python3 bench/results/session30-step-host-probe.py --C 4096"""
import argparse, time, torch
import block_bench as bb

p = argparse.ArgumentParser()
p.add_argument("--C", type=int, default=4096)
p.add_argument("--blocks", type=int, default=4)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=4096)
p.add_argument("--head-dim", type=int, default=128)
a = p.parse_args()
torch.manual_seed(0)
dev = torch.device("cuda")
sub = bb.Blocks(a.blocks, a.C, a.head_dim, torch.bfloat16, dev)
h = torch.randn(a.batch, a.seq, a.C, device=dev, dtype=torch.bfloat16, requires_grad=True)
for name, make in (("plain", lambda: bb.plain_variant(sub, h)),
                   ("mhc", lambda: bb.mhc_variant(sub, h, "cuda", False))):
    row, step, grads = bb.prepare(name, "compile", make, sub, h)
    def steps(k):
        for _ in range(k):
            for g in grads:
                g.grad = None
            step()
    steps(3)
    torch.cuda.synchronize()
    for k in (1, 3):
        t = time.perf_counter(); steps(k); host = (time.perf_counter() - t) * 1e3 / k
        torch.cuda.synchronize()
        print(f"{name}: host {host:.2f} ms a step over {k} step(s) after a synchronisation", flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        steps(2)
        torch.cuda.synchronize()
    print(f"== {name}: 2 steps, host ops by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    del step, grads
    torch.cuda.empty_cache()
