"""Host time of a compiled step (forward + backward) of eight chained HyperConnections around
linear sublayers (backend='ops', bf16, 16 tokens) on the CPU with the mock runtime (launches do
nothing): the ops' Python kernels (made to take their CUDA path: checks + ks.run) against the C++
dispatcher kernels installed for the CPU key. Run from the repo root after a build:
    PYTHONPATH=python python3 bench/results/session29-compiled-host-probe.py"""
import os, sys, time, types, torch, pathlib, tempfile
sys.path.insert(0, "python/tests")
from torch import nn
from mhc.torch import native, kernels, ops
from mhc.torch.kernels import KernelSet
from mhc.torch.modules import HyperConnection
import test_torch_kernels as tk
from test_torch_native import fold_manifest
m = native.load()
os.environ["MHC_MOCK_QUIET"] = "1"
mock = kernels.load_runtime(tk.mock_library())
ks = KernelSet(tk.write_set(pathlib.Path(tempfile.mkdtemp()) / "s", fold_manifest()), tk.KEY, runtime=mock)
h = ks.native_handle()
ops._on_gpu = lambda x: True
ops._KERNELS = types.SimpleNamespace(run=lambda op, *a: ks.run(op, *a),
                                     run_if_built=lambda op, *a: ks.run(op, *a) if op in ks.plans else None)
N, C = tk.N, tk.C
torch.manual_seed(0)
hcs = nn.ModuleList([HyperConnection(N, C, nn.Linear(C, C).bfloat16(), backend="ops", layer=i) for i in range(8)])
x = torch.randn(16, N, C).bfloat16().requires_grad_()
def step():
    t = x
    for hc in hcs: t = hc(t)
    t.float().sum().backward()
f = torch.compile(step, fullgraph=False)
def t_us(reps=100):
    for _ in range(10): f()
    best = 1e9
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(reps // 5): f()
        best = min(best, (time.perf_counter() - s) / (reps // 5) * 1e6)
    return best
py = t_us()
native.install_ops(m, "CPU", lambda op, xx, a: h if op in ks.plans else -1)
cpp = t_us()
m.uninstall_ops("CPU")
py2 = t_us()
print(f"compiled 8-sublayer step, host: python kernels {py:.0f} / {py2:.0f} us, C++ dispatcher kernels {cpp:.0f} us "
      f"-> {(min(py, py2) - cpp) / 8:.1f} us less per sublayer (fwd + bwd)")
