# bf16 and f16 programs run even when the JIT may not use the CPU's half-precision conversion
# instructions (F16C, AVX512-BF16/FP16, AVX-NE-CONVERT): --mhc-cpu-pipeline expands bf16 <-> f32
# into integer operations (arith-expand{include-bf16}), so no __truncsfbf2 from compiler-rt is
# needed; f16 falls back to libgcc's __extendhfsf2/__truncsfhf2, which mlir-runner loads.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: 6 of 6 checks passed
import numpy as np

from mhc.testing import Checker, Program, Tools

rng = np.random.default_rng(21)
p = Program()
cases = []
for elem in ("bf16", "f16"):
    x = p.random(rng, (3, 4, 13), elem)
    pre = p.constant(rng.uniform(0.1, 1.0, (3, 4)).astype(np.float32), "f32")
    u = p.pre_apply(p.dynamic_leading(x, 1), pre)
    y = p.tanh(u)
    post = p.constant(rng.uniform(0.0, 2.0, (3, 4)).astype(np.float32), "f32")
    comb = p.constant(rng.uniform(0.0, 1.0, (3, 4, 4)).astype(np.float32), "f32")
    xn = p.post_res(y, x, post, comb)
    for name, v in (("u", u), ("y", y), ("x_next", xn)):
        p.output(v)
        cases.append((f"{elem} {name}", v))

no_half_hw = "-f16c,-avx512bf16,-avx512fp16,-avxneconvert,-amx-bf16,-amx-fp16"
got = p.run(Tools.from_argv(runner_flags=[f"--mattr={no_half_hw}"]))
check = Checker()
for (case, v), g in zip(cases, got):
    check.check(case, g, v)
check.finish()
