"""Host time of one torch.ops.mhc call on the CPU with the mock runtime: the ops' Python kernels
(made to take their CUDA path: checks + ks.run) against the C++ dispatcher kernels installed for
the CPU key. Run from the repo root after a build:
    PYTHONPATH=python python3 bench/results/session29-dispatch-probe.py"""
import os, sys, time, types, torch, pathlib, tempfile
sys.path.insert(0, "python/tests")
from mhc.torch import native, kernels, ops, checks
from mhc.torch.kernels import KernelSet
import test_torch_kernels as tk
m = native.load()
os.environ["MHC_MOCK_QUIET"] = "1"
mock = kernels.load_runtime(tk.mock_library())
ks = KernelSet(tk.write_set(pathlib.Path(tempfile.mkdtemp()) / "s"), tk.KEY, runtime=mock)
h = ks.native_handle()
x, fn, scale, base = tk.inputs(T=8)
T = 8
y = torch.randn(T, tk.C).bfloat16(); post = torch.rand(T, tk.N); comb = torch.rand(T, tk.N, tk.N)
A = (20, 1e-6, 1e-6, 2.0)
def t(f, reps=4000):
    for _ in range(300): f()
    best = 1e9
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(reps // 5): f()
        best = min(best, (time.perf_counter() - s) / (reps // 5) * 1e6)
    return best
# The Python CUDA path, emulated on the CPU: the op's Python body with the kernels' launch glue.
ops._on_gpu = lambda x: True
ops._KERNELS = types.SimpleNamespace(run=lambda op, *a: ks.run(op, *a))
post_f = lambda: torch.ops.mhc.hc_post(y, x, post, comb)
pre_f = lambda: torch.ops.mhc.hc_pre(x, fn, scale, base, *A)
for grad in (True, False):
    with torch.set_grad_enabled(grad):
        py = (t(post_f), t(pre_f))
        native.install_ops(m, "CPU", lambda op, xx, attrs: h)
        cpp = (t(post_f), t(pre_f))
        m.uninstall_ops("CPU")
        native.install_ops(m, "CUDA")
    print(f"grad mode {grad}: hc_post python {py[0]:.1f} us, C++ {cpp[0]:.1f} us; hc_pre python {py[1]:.1f} us, C++ {cpp[1]:.1f} us")
print("run_op alone", t(lambda: m.run_op(h, "hc_post", [y, x, post, comb])))
