# The bundled example runs with the README's command and its printed x_next matches
# mhc.reference.mhc_sublayer(storage='bf16') on the same constants; the committed
# examples/sublayer.mlir is exactly what examples/sublayer_gen.py writes.
#
# Bound: x_next is bf16 and printed with 6 significant digits (exact for bf16); end to end it may
# differ from the reference by a flipped rounding of u or y, so the check is normwise
# max|got - ref| <= 2 bf16 ulps (2^-6) of max|ref|; the measured error is printed.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils %mhc_src_root/examples | FileCheck %s
# CHECK: generator output matches examples/sublayer.mlir
# CHECK: PASS: example x_next
import contextlib
import io
import os
import subprocess
import sys

import numpy as np

from mhc import reference as ref
from mhc.testing import Checker, check_f32, round_to_dtype

mhc_opt, runner, utils, c_utils, examples = sys.argv[1:6]
sys.path.insert(0, examples)
import sublayer_gen  # noqa: E402

generated = io.StringIO()
with contextlib.redirect_stdout(generated):
    sublayer_gen.main()
path = os.path.join(examples, "sublayer.mlir")
with open(path) as f:
    committed = f.read()
if committed != generated.getvalue():
    print("FAIL: examples/sublayer.mlir differs from examples/sublayer_gen.py's output")
    sys.exit(1)
print("generator output matches examples/sublayer.mlir")

lowered = subprocess.run([mhc_opt, path, "--canonicalize", "--mhc-cpu-pipeline"],
                         capture_output=True, text=True, check=True)
ran = subprocess.run([runner, "-e", "main", "--entry-point-result=void",
                      f"--shared-libs={utils},{c_utils}"], input=lowered.stdout,
                     capture_output=True, text=True, check=True)
printed = ran.stdout.split("data =", 1)[1]
values = [float(t) for t in printed.replace("[", " ").replace("]", " ").replace(",", " ").split()]

x, fn, scale, base = sublayer_gen.data()
x = round_to_dtype(x, "bf16")                      # what the bf16 constant holds
fn, scale, base = (round_to_dtype(a, "f32") for a in (fn, scale, base))
want = ref.mhc_sublayer(x, fn, scale, base, np.tanh, storage="bf16", dtype=np.float64)
printed = np.array(values).reshape(want.shape)
got = round_to_dtype(printed, "bf16")          # undo printMemrefF32's 6-digit rounding
check = Checker()
ok, msg = check_f32(printed, got, rtol=1e-5)
check.record("example printed bf16 values", ok, "printed values are bf16 values to 6 digits: " + msg)
ok, msg = check_f32(got, want, rtol=2.0 ** -6)
check.record("example x_next", ok, msg + f", {np.mean(got == want) * 100:.1f}% equal")
check.finish()
