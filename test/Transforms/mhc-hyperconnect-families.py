# --mhc-hyperconnect on twelve transformer families exported by torch-mlir
# (test/Transforms/Inputs/families, python/mhc/export_families.py: 2 layers,
# weights as arguments, regenerated here bit for bit by mhc.hashweights).
#
# Per family:
#  1. converted: with the defaults, the number of residual adds rewritten
#     into mhc.post_res (the summary remark) must be the expected one, and a
#     family with residual adds left alone must (or must not) get the
#     warning. BERT (post-norm) converts nothing by default and warns; with
#     min-blocks=1 each of its adds is a chain of one.
#  2. identity: @forward and its mode=hc init=identity params=constants
#     rewrite run side by side (--mhc-cpu-pipeline, mlir-runner; TOSA first
#     through tosa-to-linalg) on the same weights; the logits' difference,
#     computed in f32 inside the program, must be 0. The original's logits
#     must match PyTorch's (ref.json; atol 1e-4, gemma2 2e-4, + 1e-5 relative
#     for the printed digits), so that the run is meaningful.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils %S/Inputs/families | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: all 13 family checks passed
import math
import re
import subprocess
import sys
from pathlib import Path

from mhc import export_families as ef
from mhc.export_models import printed_memrefs

MHC_OPT, RUNNER, RUNNER_UTILS, C_RUNNER_UTILS, INPUTS = sys.argv[1:6]

# family -> (extra options, converted adds, warned). Parallel blocks written
# residual-first (cohere, stablelm) count two adds per layer, written
# branches-first (gptneox, phi, falcon) one; T5 has 2 x 2 encoder and 2 x 3
# decoder adds; phi's GELU(tanh) inner adds and T5's position-bias adds are
# left alone without a warning (an elementwise branch; another tensor type).
EXPECTED = {
    "gptneox": ("", 2, False),
    "cohere": ("", 4, False),
    "stablelm": ("", 4, False),
    "phi": ("", 2, False),
    "falcon": ("", 2, False),
    "qwen2": ("", 4, False),
    "gemma2": ("", 4, False),
    "bert": ("", 0, True),
    "bert-min-blocks-1": ("min-blocks=1", 4, False),
    "t5": ("", 10, False),
    "mixtral": ("", 4, False),
    "opt-tosa": ("", 4, False),
    "gptneox-dyn": ("", 2, False),
}


def opt(text, *args):
    r = subprocess.run([MHC_OPT, "-", "--mlir-print-local-scope", *args],
                       input=text, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("mhc-opt %s failed:\n%s" % (" ".join(args), r.stderr[-3000:]))
    return r.stdout, r.stderr


def run(module):
    llvm, _ = opt(module, "--mhc-cpu-pipeline")
    r = subprocess.run([RUNNER, "-e", "main", "-entry-point-result=void",
                        "-shared-libs=%s,%s" % (RUNNER_UTILS, C_RUNNER_UTILS)],
                       input=llvm, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("mlir-runner failed: " + r.stderr[-2000:])
    return printed_memrefs(r.stdout)


def check(case):
    family = case.split("-min-blocks")[0]
    extra, want_converted, want_warning = EXPECTED[case]
    text, ref = ef.load(family, Path(INPUTS))
    options = " ".join(o for o in ("remarks=true", extra) if o)
    _, diags = opt(text, f"--mhc-hyperconnect={options}", "-o", "/dev/null",
                   "--mlir-print-op-on-diagnostic=false")
    m = re.search(r"@forward: (\d+) residual add\(s\) found, (\d+) converted", diags)
    warned = "residual add(s) left alone" in diags
    converted = int(m.group(2)) if m else -1
    ok = converted == want_converted and warned == want_warning
    print(f"{case}: {m.group(1) if m else '?'} residual adds found, {converted} converted "
          f"(want {want_converted}), warning {warned} (want {want_warning}): "
          f"{'ok' if ok else 'FAIL'}")
    if want_converted == 0:
        return ok

    original, _ = opt(text)
    widened, _ = opt(text, "--mhc-hyperconnect=mode=hc init=identity params=constants"
                     + (" " + extra if extra else ""))
    ty = ef.logits_type(ref)
    calls = [f"%a = call @forward(%ids, WEIGHTS) : ({ef.ids_type(ref)}, WEIGHT_TYPES) -> {ty}",
             f"%b = call @forward_hc(%ids, WEIGHTS) : ({ef.ids_type(ref)}, WEIGHT_TYPES) -> {ty}",
             f"%d = arith.subf %a, %b : {ty}"]
    calls += ef.printing("%a", ty) + ef.printing("%d", ty)
    module = ("module {\n" + ef.module_body(original) +
              ef.module_body(widened).replace("func.func @forward(", "func.func @forward_hc(") +
              ef.main_func(ref, calls) + "}\n")
    if ref["output"] == "tosa":
        module, _ = opt(module, ef.TOSA_TO_LINALG)
    logits, diff = run(module)
    want = ref["logits"]
    torch_ok = len(logits) == len(want) and all(
        abs(a - b) <= ref["atol"] + ef.RTOL * abs(b) for a, b in zip(logits, want))
    torch_err = max(abs(a - b) for a, b in zip(logits, want))
    err = max(abs(d) for d in diff)
    same = all(math.isfinite(d) for d in diff) and err == 0.0 and len(diff) == len(want)
    print(f"{case}: original vs PyTorch max|diff| = {torch_err:.3g}; identity rewrite vs "
          f"original max|diff| = {err:.3g} (tol 0): {'ok' if torch_ok and same else 'FAIL'}")
    return ok and torch_ok and same


passed = 0
for case in EXPECTED:
    try:
        passed += check(case)
    except Exception as ex:  # a crash is a failed check, not a stopped run
        print(f"{case}: FAIL: {ex}")
print(f"all {passed} family checks passed" if passed == len(EXPECTED)
      else f"FAIL: {len(EXPECTED) - passed} of {len(EXPECTED)} family checks failed")
