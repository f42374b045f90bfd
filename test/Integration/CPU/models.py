# The torch-mlir exports of tiny GPT-2 and Llama (linalg-on-tensors: tensor.pad-free gathers,
# linalg.matmul/batch_matmul, generics with math ops, expand/collapse_shape, dense weights,
# cf.assert) lower through --mhc-cpu-pipeline, run, and reproduce PyTorch's logits from
# <model>.ref.json within the atol stored there (1e-4; printed with printMemrefF32's 6 digits).
#
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils %mhc_src_root/test/Transforms/Inputs | FileCheck %s
# CHECK: gpt2-tiny: OK
# CHECK: llama-tiny: OK
import json
import os
import subprocess
import sys

from mhc.export_models import emit_runner_module, parse_printed_memref

mhc_opt, runner, utils, c_utils, inputs = sys.argv[1:6]
failed = False
for name in ("gpt2-tiny", "llama-tiny"):
    with open(os.path.join(inputs, f"{name}.mlir")) as f:
        text = f.read()
    with open(os.path.join(inputs, f"{name}.ref.json")) as f:
        ref = json.load(f)
    lowered = subprocess.run([mhc_opt, "-", "--mhc-cpu-pipeline"], input=emit_runner_module(text, ref),
                             capture_output=True, text=True)
    if lowered.returncode:
        print(f"{name}: FAIL: mhc-opt --mhc-cpu-pipeline:\n{lowered.stderr[-3000:]}")
        failed = True
        continue
    ran = subprocess.run([runner, "-e", "main", "--entry-point-result=void",
                          f"--shared-libs={utils},{c_utils}"], input=lowered.stdout,
                         capture_output=True, text=True)
    got = parse_printed_memref(ran.stdout) if ran.returncode == 0 else []
    want = ref["logits"]
    if len(got) != len(want):
        print(f"{name}: FAIL: printed {len(got)} logits, expected {len(want)}: {ran.stderr[-2000:]}")
        failed = True
        continue
    err = max(abs(a - b) for a, b in zip(got, want))
    ok = err <= ref["atol"]
    failed |= not ok
    print(f"{name}: {'OK' if ok else 'FAIL'}: max |logits - PyTorch| = {err:.2e} (atol {ref['atol']})")
sys.exit(1 if failed else 0)
