"""Ground truth for bench_backward's per-kernel times (thirtieth session, call 6): the kernels' own
durations from torch.profiler (CUDA activity), C from argv. Run on the GPU machine from the repo root:
    PYTHONPATH=python MHC_CACHE=.mhc-cache python3 bench/results/session30-kernel-profile.py 512"""
import os, sys, torch
sys.path.insert(0, "bench")
import bench_backward as bb
from mhc.torch import kernels as K
C = int(sys.argv[1])
sets = bb.make_sets(C)
ks = K.KernelSet(K.KernelKey(n=4, C=C, dtype="bf16", iterations=20).folder(os.path.abspath(os.environ["MHC_CACHE"])))
st = lambda: torch.cuda.current_stream().cuda_stream
for s in sets:
    _, s["post"], s["comb"], _ = ks.run("hc_pre", s["x"], s["fn"], s["scale"], s["base"])
    _, s["dpost"], s["dcomb"] = ks.run("hc_post_backward", *bb._args(s, "hc_post_backward"))
    s["post_lower"] = s["post"]
def step(s):
    ks.run("hc_steady_forward", s["x"], s["mix"], s["scale"], s["base"], s["y"], s["fn"], stream=st())
    ks.run("hc_joint_backward_lower", *bb._args(s, "hc_joint_backward_lower"), stream=st())
for i in range(5): step(sets[i % 3])
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for i in range(30): step(sets[i % 3])
    torch.cuda.synchronize()
tot = {}
for e in prof.events():
    if e.device_type == torch.autograd.DeviceType.CUDA and e.name.startswith("mhc"):
        c, d = tot.get(e.name, (0, 0.0)); tot[e.name] = (c + 1, d + e.time_range.elapsed_us())
for name, (c, d) in sorted(tot.items()):
    print(f"C={C} {name:32s} {d / c / 1e3:.4f} ms (profiled, {c} calls)")
