# --mhc-hyperconnect on the torch-mlir exports of tiny GPT-2 and Llama
# (test/Transforms/Inputs/{gpt2,llama}-tiny.mlir, see docs/ExportingModels.md).
#
# Per model:
#  1. structure: with the defaults (mode=mhc, params=arguments) every residual
#     add (2 per layer, 4 per model) becomes mhc.post_res; the op counts change
#     by exactly the added mhc ops and the exit mean, minus the 4 adds; the
#     signature gains 3 parameters per block, each named by mhc.param.
#  2. identity: @forward and its mode=hc init=identity rewrite run side by
#     side through --mhc-cpu-pipeline + mlir-runner on the reference token ids;
#     the logits' difference is computed in f32 inside the program and must be
#     0 (n = 4: bit-exact, see docs/HyperConnect.md). The original's logits
#     must also match PyTorch's (ref.json, atol 1e-4) so the run is meaningful.
#  3. mode=mhc end to end (init=paper, params=constants): the logits are
#     finite, and every comb matrix (the rewritten function is patched, test
#     only, to also return the mhc.sinkhorn results) is doubly stochastic:
#     entries >= 0, row and column sums within 1e-4 of 1.
#
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils %S/Inputs | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: gpt2-tiny: structure ok
# CHECK: gpt2-tiny: identity ok
# CHECK: gpt2-tiny: mhc ok
# CHECK: llama-tiny: structure ok
# CHECK: llama-tiny: identity ok
# CHECK: llama-tiny: mhc ok
import collections
import json
import math
import os
import re
import subprocess
import sys

from mhc.export_families import module_body
from mhc.export_models import printed_memrefs

MHC_OPT, RUNNER, RUNNER_UTILS, C_RUNNER_UTILS, INPUTS = sys.argv[1:6]
BLOCKS, N = 4, 4


def opt(text, *args):
    r = subprocess.run([MHC_OPT, "-", "--mlir-print-local-scope", *args],
                       input=text, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("mhc-opt %s failed:\n%s" % (" ".join(args), r.stderr[-3000:]))
    return r.stdout


def op_counts(text):
    ops = collections.Counter()
    for line in text.splitlines():
        m = re.match(r'\s*(?:%[^=]*=\s*)?"?([a-z_]+\.[a-z_0-9.]+)\b', line)
        if m:
            ops[m.group(1)] += 1
    return ops


def run(module):
    llvm = opt(module, "--mhc-cpu-pipeline")
    r = subprocess.run([RUNNER, "-e", "main", "-entry-point-result=void",
                        "-shared-libs=%s,%s" % (RUNNER_UTILS, C_RUNNER_UTILS)],
                       input=llvm, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("mlir-runner failed: " + r.stderr[-2000:])
    return printed_memrefs(r.stdout)


def main_func(ref, calls):
    """@main: the reference ids, `calls` (a list of MLIR lines), prints."""
    ids = "dense<%s>" % json.dumps(ref["input_ids"])
    return ("""
  func.func private @printMemrefF32(tensor<*xf32>) attributes {llvm.emit_c_interface}
  func.func @main() {
    %%ids = arith.constant %s : tensor<1x8xi64>
%s
    return
  }""" % (ids, "\n".join("    " + c for c in calls)))


def printing(value, ty):
    return [f"%p{value[1:]} = tensor.cast {value} : {ty} to tensor<*xf32>",
            f"call @printMemrefF32(%p{value[1:]}) : (tensor<*xf32>) -> ()"]


def check_structure(name, text):
    before = op_counts(text)
    out = opt(text, "--mhc-hyperconnect")
    after = op_counts(out)
    delta = {k: after[k] - before[k] for k in set(before) | set(after)
             if after[k] != before[k]}
    # Added: the mhc ops, and the exit mean (one generic: a pairwise sum of
    # the n = 4 streams, 3 addf, times the 1/n constant; its init). Removed:
    # the 4 add generics.
    expected = {"mhc.expand": 1, "mhc.norm_project": BLOCKS, "mhc.split_mixes": BLOCKS,
                "mhc.sinkhorn": BLOCKS, "mhc.pre_apply": BLOCKS, "mhc.post_res": BLOCKS,
                "linalg.generic": 1 - BLOCKS, "linalg.yield": 1 - BLOCKS,
                "arith.addf": (N - 1) - BLOCKS, "arith.mulf": 1, "tensor.empty": 1,
                "arith.constant": 1}
    params = re.findall(r'mhc\.param = "(layer\d+\.\w+)"', out)
    want = ["layer%d.%s" % (l, r) for l in range(BLOCKS) for r in ("fn", "scale", "base")]
    ok = delta == expected and params == want
    print(f"{name}: op count delta {dict(sorted(delta.items()))}")
    print(f"{name}: {len(params)} parameters: {params[:3]} ...")
    print(f"{name}: structure {'ok' if ok else 'FAIL'}")
    if delta != expected:
        print(f"{name}: FAIL: expected delta {dict(sorted(expected.items()))}")
    if params != want:
        print(f"{name}: FAIL: expected parameters {want}")


def check_identity(name, text, ref):
    logits_ty = "tensor<1x8x128xf32>"
    original = opt(text)
    widened = opt(text, "--mhc-hyperconnect=mode=hc init=identity params=constants")
    assert widened.count("mhc.post_res") == BLOCKS
    calls = [f"%a = call @forward(%ids) : (tensor<1x8xi64>) -> {logits_ty}",
             f"%b = call @forward_hc(%ids) : (tensor<1x8xi64>) -> {logits_ty}",
             f"%d = arith.subf %a, %b : {logits_ty}"]
    calls += printing("%a", logits_ty) + printing("%d", logits_ty)
    module = ("module {\n" + module_body(original) +
              module_body(widened).replace("func.func @forward(", "func.func @forward_hc(") +
              main_func(ref, calls) + "\n}\n")
    logits, diff = run(module)
    torch_err = max(abs(a - b) for a, b in zip(logits, ref["logits"]))
    err = max(abs(d) for d in diff)
    scale = max(abs(v) for v in logits)
    ok = (len(logits) == len(ref["logits"]) and torch_err <= ref["atol"] and
          all(math.isfinite(d) for d in diff) and err == 0.0 and scale > 0.1)
    print(f"{name}: original vs PyTorch max|diff| = {torch_err:.3g} (atol {ref['atol']}); "
          f"identity rewrite vs original max|diff| = {err:.3g} (tol 0), max|logits| = {scale:.3g}")
    print(f"{name}: identity {'ok' if ok else 'FAIL'}")


def check_mhc(name, text, ref):
    logits_ty = "tensor<1x8x128xf32>"
    widened = opt(text, "--mhc-hyperconnect=mode=mhc init=paper params=constants")
    # Test-only: also return every comb matrix.
    combs = re.findall(r"(%\S+) = mhc\.sinkhorn .*: (tensor<[^>]*>)", widened)
    assert len(combs) == BLOCKS, combs
    comb_ty = combs[0][1]
    extra_vals = ", ".join(v for v, _ in combs)
    extra_tys = ", ".join(t for _, t in combs)
    widened = re.sub(r"(func\.func @forward\(.*\)) -> (tensor<1x8x128xf32>)",
                     lambda m: f"{m.group(1)} -> ({m.group(2)}, {extra_tys})", widened)
    widened = re.sub(r"return (%\S+) : (tensor<1x8x128xf32>)",
                     lambda m: f"return {m.group(1)}, {extra_vals} : {m.group(2)}, {extra_tys}",
                     widened)
    results = ["%l"] + ["%%comb%d" % i for i in range(BLOCKS)]
    calls = [f"{', '.join(results)} = call @forward(%ids) : (tensor<1x8xi64>) -> "
             f"({logits_ty}, {extra_tys})"]
    calls += printing("%l", logits_ty)
    for r in results[1:]:
        calls += printing(r, comb_ty)
    module = "module {\n" + module_body(widened) + main_func(ref, calls) + "\n}\n"
    printed = run(module)
    logits, comb_lists = printed[0], printed[1:]
    finite = all(math.isfinite(v) for v in logits) and len(logits) == 8 * 128
    worst_row = worst_col = 0.0
    nonneg = True
    for flat in comb_lists:
        assert len(flat) == 8 * N * N
        for t in range(8):
            m = [flat[t * N * N + i * N:t * N * N + (i + 1) * N] for i in range(N)]
            nonneg &= all(v >= 0 for row in m for v in row)
            worst_row = max(worst_row, max(abs(sum(row) - 1) for row in m))
            worst_col = max(worst_col, max(abs(sum(m[i][j] for i in range(N)) - 1)
                                           for j in range(N)))
    ok = finite and nonneg and worst_row <= 1e-4 and worst_col <= 1e-4 and len(comb_lists) == BLOCKS
    moved = max(abs(a - b) for a, b in zip(logits, ref["logits"]))
    print(f"{name}: mode=mhc logits finite={finite}, max|logits - original| = {moved:.3g}; "
          f"{len(comb_lists)} comb tensors, entries >= 0: {nonneg}, "
          f"max|row sum - 1| = {worst_row:.2g}, max|col sum - 1| = {worst_col:.2g} (tol 1e-4)")
    print(f"{name}: mhc {'ok' if ok else 'FAIL'}")


for model in ("gpt2-tiny", "llama-tiny"):
    with open(os.path.join(INPUTS, model + ".mlir")) as f:
        text = f.read()
    with open(os.path.join(INPUTS, model + ".ref.json")) as f:
        ref = json.load(f)
    for check in (check_structure, lambda n, t: check_identity(n, t, ref),
                  lambda n, t: check_mhc(n, t, ref)):
        try:
            check(model, text)
        except Exception as ex:
            print(f"{model}: FAIL: {ex}")
