# The torch-mlir exports of tiny GPT-2 and Llama (linalg-on-tensors: embedding gathers with
# cf.assert, linalg.matmul/batch_matmul/transpose, generics with math ops including fpowi,
# expand/collapse_shape, dense weights) lower through --mhc-cpu-pipeline, run, and reproduce
# PyTorch's logits from <model>.ref.json within the atol stored there (1e-4; printMemrefF32 prints
# 6 digits). The same after --mhc-hyperconnect: with the identity initialisation the widened
# network still reproduces the logits; with mHC and the paper's initialisation it must lower, run
# and give finite logits.
#
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils %mhc_src_root/test/Transforms/Inputs | FileCheck %s
# CHECK: gpt2-tiny: OK
# CHECK: gpt2-tiny hyperconnected static-hc identity: OK
# CHECK: gpt2-tiny hyperconnected mhc paper: OK
# CHECK: llama-tiny: OK
# CHECK: llama-tiny hyperconnected static-hc identity: OK
# CHECK: llama-tiny hyperconnected mhc paper: OK
import json
import os
import subprocess
import sys

from mhc.export_models import emit_runner_module, parse_printed_memref

mhc_opt, runner, utils, c_utils, inputs = sys.argv[1:6]
# (label, passes before the pipeline, whether the logits must match PyTorch's)
VARIANTS = [
    ("", [], True),
    # The widened network with the identity initialisation computes what the original did.
    (" hyperconnected static-hc identity",
     ["--mhc-hyperconnect=streams=4 params=constants mode=static-hc init=identity"], True),
    # The mHC form with the paper's initialisation: a different network; it must lower, run and
    # give finite logits.
    (" hyperconnected mhc paper", ["--mhc-hyperconnect=streams=4 params=constants"], False),
]
failed = False
for model, (variant, passes, matches) in ((m, v) for m in ("gpt2-tiny", "llama-tiny")
                                           for v in VARIANTS):
    name = model + variant
    with open(os.path.join(inputs, f"{model}.mlir")) as f:
        text = f.read()
    with open(os.path.join(inputs, f"{model}.ref.json")) as f:
        ref = json.load(f)
    lowered = subprocess.run([mhc_opt, "-", *passes, "--mhc-cpu-pipeline"],
                             input=emit_runner_module(text, ref), capture_output=True, text=True)
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
    finite = all(abs(v) < float("inf") for v in got)
    ok = finite and (err <= ref["atol"] or not matches)
    failed |= not ok
    print(f"{name}: {'OK' if ok else 'FAIL'}: max |logits - PyTorch| = {err:.2e} "
          f"({'atol ' + str(ref['atol']) if matches else 'finite logits required'})")
sys.exit(1 if failed else 0)
