# The AOT route for the backward, without a GPU: examples/aot/sublayer_backward.mlir (at C = 64)
# through mhc.compiler.compile_gpu into a .so linked against libmhc_runtime_mock.so, called
# through mhc.runtime like a user would. The mock records the launches: one backward group,
# four kernels (rows, tokens, cols, params: at C = 64 the token pass is a kernel of its own), and
# the results come back with the right shapes.
# REQUIRES: numpy
# RUN: env MHC_OPT=%mhc_lib_dir/../bin/mhc-opt MHC_RUNTIME_DIR=%mhc_lib_dir MHC_MOCK_QUIET=1 \
# RUN:   %python %s %t | FileCheck %s

import sys
from pathlib import Path

import numpy as np

from mhc.compiler import compile_gpu
from mhc.runtime import Library

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
example = Path(__file__).resolve().parents[3] / "examples" / "aot" / "sublayer_backward.mlir"
src = out / "sublayer_backward_C64.mlir"
src.write_text(example.read_text().replace("16384", "256").replace("4096", "64"))
lib = Library(compile_gpu(src, out / "libsublayer_backward.so", runtime="mock", pipeline="mhc"))
rt = lib.runtime
print(sorted(lib.signatures))
# CHECK: ['hc_sublayer_backward']

rng = np.random.default_rng(3)


def bf16(*shape):   # bf16 bit patterns of values in [1, 2)
    return rng.integers(0x3F80, 0x4000, size=shape, dtype=np.uint16)


for T in (40, 0):
    args = (bf16(T, 4, 64), bf16(T, 64), rng.standard_normal((24, 256)).astype(np.float32),
            rng.random(3).astype(np.float32), rng.standard_normal(24).astype(np.float32),
            rng.standard_normal((T, 24)).astype(np.float32), bf16(T, 64), bf16(T, 4, 64))
    rt.mock_clear_log()
    results = lib.call("hc_sublayer_backward", *args)
    print(T, [(r.shape, str(r.dtype)) for r in results])
    for line in rt.mock_log().splitlines():
        if "Launch" in line:
            print(line)
# CHECK: 40 [((40, 4, 64), 'uint16'), ((40, 64), 'uint16'), ((24, 256), 'float32'), ((3,), 'float32'), ((24,), 'float32')]
# CHECK-NEXT: mgpuLaunchKernel(mhc_backward_0_rows, grid (3,1,1), block (256,1,1)
# CHECK-NEXT: mgpuLaunchKernel(mhc_backward_0_tokens, grid (1,1,1), block (256,1,1)
# CHECK-NEXT: mgpuLaunchKernel(mhc_backward_0_cols, grid (1,{{[0-9]+}},1), block (256,1,1)
# CHECK-NEXT: mgpuLaunchKernel(mhc_backward_0_params,
# Zero tokens: dx and dy are empty; all four kernels still launch (one block of tokens, whose
# tokens are all masked, writes the zero partial sums the params kernel reduces). The mock runs
# no kernels: T = 0 values are checked on the CPU path and on the GPU by
# test/Integration/GPU/harness/check_backward.py (T = 0 among its token counts).
# CHECK: 0 [((0, 4, 64), 'uint16'), ((0, 64), 'uint16'), ((24, 256), 'float32'), ((3,), 'float32'), ((24,), 'float32')]
# CHECK-NEXT: mgpuLaunchKernel(mhc_backward_0_rows, grid (1,1,1)
# CHECK-NEXT: mgpuLaunchKernel(mhc_backward_0_tokens, grid (1,1,1)
# CHECK-NEXT: mgpuLaunchKernel(mhc_backward_0_cols,
# CHECK-NEXT: mgpuLaunchKernel(mhc_backward_0_params,
