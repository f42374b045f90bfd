# The AOT route end to end without a GPU: mhc.compiler.compile_gpu builds a .so
# (cubin + host code) linked against libmhc_runtime_mock.so, mhc.runtime loads
# it, builds memref descriptors from numpy arrays and calls the C interface;
# the mock records what the host code asked for.
# REQUIRES: numpy
# RUN: env MHC_OPT=%mhc_lib_dir/../bin/mhc-opt MHC_RUNTIME_DIR=%mhc_lib_dir MHC_MOCK_QUIET=1 \
# RUN:   %python %s %t | FileCheck %s

import sys
from pathlib import Path

import numpy as np

from mhc.compiler import compile_gpu
from mhc.runtime import Library

out = Path(sys.argv[1])
src = Path(__file__).resolve().parents[3] / "examples" / "aot" / "pre_apply_gpu.mlir"
lib = Library(compile_gpu(src, out / "libpre_apply.so", runtime="mock", pipeline="upstream"))
rt = lib.runtime
print("mock:", rt.is_mock)
# CHECK: mock: True

rng = np.random.default_rng(7)
for T, C in [(3, 300), (1000, 100), (0, 64)]:
    x = rng.integers(0, 2**16, size=(T, 4, C), dtype=np.uint16)   # bf16 bit patterns
    pre = rng.random((T, 4), dtype=np.float32)
    u = np.empty((T, C), np.uint16)
    rt.mock_clear_log()
    lib.call("pre_apply", x, pre, u)
    launches = [l for l in rt.mock_log().splitlines() if "Launch" in l]
    print(T, C, launches)
# Grid (ceil(C / 256), T), 256 threads; 3 memrefs of ranks 3, 2, 2 flatten to
# 9 + 7 + 7 = 23 kernel parameters.
# CHECK: 3 300 ['mhc-mock: mgpuLaunchKernel(pre_apply, grid (2,3,1), block (256,1,1), smem 0, stream0, 23 params)']
# CHECK: 1000 100 ['mhc-mock: mgpuLaunchKernel(pre_apply, grid (1,1000,1), block (256,1,1), smem 0, stream0, 23 params)']
# Zero tokens: an empty grid is skipped, not an error.
# CHECK: 0 64 ['mhc-mock: mgpuLaunchKernel(pre_apply, empty grid: skipped)']

# Every call is checked against the function's signature (libpre_apply.signature.json, written
# by compile_gpu) before anything runs: count, dtype, rank, layout, scalars.
from mhc.runtime import signature_path
print(signature_path(lib.path).name, sorted(lib.signatures))
# CHECK: libpre_apply.signature.json ['pre_apply']
x = rng.integers(0, 2**16, size=(3, 4, 300), dtype=np.uint16)
pre = rng.random((3, 4), dtype=np.float32)
u = np.empty((3, 300), np.uint16)
bad_calls = {
    "count": (x, pre),
    "scalar for a buffer": (x, pre, 1.5),
    "dtype": (x.astype(np.float32), pre, u),
    "rank": (x, pre, u.reshape(3, 300, 1)),
    "size": (x, np.zeros((3, 5), np.float32), u),
    "non-contiguous": (x[:, :, ::2], pre, u[:, :150]),
}
rt.mock_clear_log()
for what, args in bad_calls.items():
    try:
        lib.call("pre_apply", *args)
        print(what, "accepted")
    except (TypeError, ValueError) as e:
        print(f"{what}: {type(e).__name__}: {e}")
print("launched:", rt.mock_log().count("Launch"))
# CHECK: count: TypeError: pre_apply takes 3 argument(s), got 2: pre_apply(memref<?x4x?xbf16>, memref<?x4xf32>, memref<?x?xbf16>)
# CHECK: scalar for a buffer: TypeError: pre_apply: argument 2 (memref<?x?xbf16>): expects a numpy array or torch tensor, got float
# CHECK: dtype: TypeError: pre_apply: argument 0 (memref<?x4x?xbf16>): expects bf16 elements (uint16 or int16 or bfloat16), got float32
# CHECK: rank: ValueError: pre_apply: argument 2 (memref<?x?xbf16>): expects rank 2, got shape (3, 300, 1)
# CHECK: size: ValueError: pre_apply: argument 1 (memref<?x4xf32>): expects size 4 in dim 1, got shape (3, 5)
# CHECK: non-contiguous: ValueError: pre_apply: argument 0 (memref<?x4x?xbf16>): expects row-major contiguous data, got strides (2400, 600, 4) for shape (3, 4, 150)
# Nothing reached the runtime.
# CHECK: launched: 0

# Memref results: device buffers allocated through the runtime (gpu.alloc),
# returned as arrays, handed back to the runtime when collected.
res_src = """
module attributes {gpu.container_module} {
  func.func @fill(%n: index) -> (memref<?xf32>, memref<?x2xi32>) {
    %c2 = arith.constant 2 : index
    %v = arith.constant 2.5 : f32
    %w = arith.constant 7 : i32
    %t0 = gpu.wait async
    %a, %t1 = gpu.alloc async [%t0] (%n) : memref<?xf32>
    %b, %t2 = gpu.alloc async [%t1] (%n) : memref<?x2xi32>
    %t3 = gpu.memset async [%t2] %a, %v : memref<?xf32>, f32
    %t4 = gpu.memset async [%t3] %b, %w : memref<?x2xi32>, i32
    gpu.wait [%t4]
    return %a, %b : memref<?xf32>, memref<?x2xi32>
  }
}
"""
lib2 = Library(compile_gpu(res_src, out / "libfill.so", runtime="mock", pipeline="upstream"))
a, b = lib2.call("fill", np.int64(5), results=[(1, np.float32), (2, np.int32)])
print(a.shape, a.tolist(), b.shape, b[:, 1].tolist())
# CHECK: (5,) [2.5, 2.5, 2.5, 2.5, 2.5] (5, 2) [7, 7, 7, 7, 7]
live = rt.lib.mhcMockLiveBuffers()
del a, b
print("freed:", live - rt.lib.mhcMockLiveBuffers())
# CHECK: freed: 2

# The C caller of examples/aot links the same library and allocates device
# memory through the runtime itself.
import os
import subprocess
from mhc.compiler import clang

exe = out / "caller"
subprocess.run([clang(), "-O2", str(src.parent / "caller.c"), f"-I{src.parents[2] / 'include'}",
                f"-L{out}", "-l:libpre_apply.so", "-l:libmhc_runtime_mock.so", "-lm",
                "-Wl,-rpath,$ORIGIN", "-o", str(exe)], check=True)
env = dict(os.environ)
env.pop("MHC_MOCK_QUIET", None)
run = subprocess.run([str(exe), "3", "300"], capture_output=True, text=True, env=env, check=True)
print(run.stdout)
# CHECK: mhc-mock: mgpuModuleLoad({{[0-9]+}} bytes) -> module0
# CHECK: mhc-mock: mgpuMemAlloc(7200 bytes, stream0) -> buf0
# CHECK: mhc-mock: mgpuMemAlloc(48 bytes, stream0) -> buf1
# CHECK: mhc-mock: mgpuMemAlloc(1800 bytes, stream0) -> buf2
# CHECK: mhc-mock: mgpuMemcpy(buf0 <- host, 7200 bytes, stream0)
# CHECK: mhc-mock: mgpuLaunchKernel(pre_apply, grid (2,3,1), block (256,1,1), smem 0, stream0, 23 params)
# CHECK: mhc-mock: mgpuMemcpy(host <- buf2, 1800 bytes, stream0)
# CHECK: mhc-mock: mgpuMemFree(buf2, stream0)
# CHECK: mock runtime: kernel not executed, result not checked
