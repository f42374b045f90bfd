#!/usr/bin/env python3
"""Builds whole programs for the GPU path and their CPU-path results (docs/Embedding.md, GPU).

Each program is a module with a `@main` that computes and prints, like the CPU integration
tests: mhc ops with tensor math between them (tanh, casts), constants, printing, whole
models rewritten by --mhc-hyperconnect (the exported GPT-2 and Llama, and GPT-2 without the
rewrite: only the host-math kernels), and a whole-model backward (--mhc-generate-backward of
two chained sublayers, with and without the dy fold). For each one this script

  * runs it on the CPU path here (--mhc-cpu-pipeline + mlir-runner): <name>.expected.txt;
  * compiles it with --mhc-gpu-pipeline (sm_90 cubins) into <name>.so, linked against
    libmhc_runtime.so and libmhc_print.so (harness/print_memref.c: the printMemref entry
    points without libMLIR), both copied beside it;

and writes manifest.json. run_programs.py runs the libraries on the GPU and compares.

  python3 test/Integration/GPU/harness/build_programs.py --mhc-opt build/bin/mhc-opt --out .gpu-carry/programs
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
sys.path.insert(0, str(ROOT / "python"))

import numpy as np  # noqa: E402

from mhc import compiler  # noqa: E402
from mhc.testing import Program, call_backward, chain_text, declare_module  # noqa: E402
from mhc.testing import round_to_dtype, tanh_functions  # noqa: E402

LLVM = Path("/usr/lib/llvm-22")
# Normwise relative tolerance per printed element type (as check_kernels.py): the GPU's
# projection runs on bf16 tensor cores (hi/lo split), its tanh/exp come from libdevice.
TOLERANCE = {"f32": 1e-4, "bf16": 2e-2, "f16": 2e-2, "logits": 1e-3,
             # gradients of an f32 program: parameter gradients are sums over tokens that cancel
             # (dscale: three numbers), summed in other orders than on the CPU path
             "backward_f32": 1e-3}


def sublayer_program(n, c, elem, tokens, dynamic, seed):
    """One mHC sublayer with F = tanh between pre_apply and post_res, every value printed."""
    rng = np.random.default_rng(seed)
    p = Program()
    m = n * n + 2 * n
    x = p.random(rng, (tokens, n, c), elem)
    fn = p.random(rng, (m, n * c), "f32", scale=0.3)
    scale = p.constant(rng.uniform(0.5, 2.0, 3).astype(np.float32), "f32")
    base = p.random(rng, (m,), "f32", scale=0.5)
    xd = p.dynamic_leading(x, 1) if dynamic else x
    mix = p.norm_project(xd, fn)
    pre, post, logits = p.split_mixes(mix, scale, base)
    comb = p.sinkhorn(logits)
    u = p.pre_apply(xd, pre)
    y = p.tanh(u)
    xn = p.post_res(y, xd, post, comb)
    h = p.collapse(xn)
    elems = []
    for v, e in ((mix, "f32"), (comb, "f32"), (u, elem), (xn, elem), (h, elem)):
        p.output(v)
        elems.append(e)
    return p.text(), elems


def model_program(mhc_opt, model, rewrite):
    """An exported model (optionally rewritten to 4 mHC streams) with the @main of
    docs/ExportingModels.md that prints its logits."""
    src = ROOT / "test/Transforms/Inputs" / f"{model}.mlir"
    text = src.read_text()
    if rewrite:
        text = subprocess.run([mhc_opt, str(src), "--mhc-hyperconnect=streams=4 mode=mhc params=constants"],
                              check=True, capture_output=True, text=True).stdout
    main = subprocess.run([sys.executable, str(ROOT / "python/mhc/export_models.py"), "--emit-runner-main",
                           "--model", model.split("-")[0], "-o", "/dev/stdout"],
                          check=True, capture_output=True, text=True).stdout
    # The emitted module is the committed model plus @main: keep only @main and the printer.
    main_fn = main[main.index("  func.func private @printMemrefF32"):main.rindex("}")]
    return text[:text.rindex("}")] + main_fn + "}\n", ["logits"]


def chain_backward_program(mhc_opt, n, c, elem, tokens, fold, seed):
    """Two sublayers chained through an opaque F = tanh (f32 inside, stored like u) and its VJP,
    run through --mhc-generate-backward: @main calls @chain_forward and @chain_backward on seeded
    data and prints the gradients of x0 and of both sublayers' fn, scale and base. fold=False
    groups the backward with --mhc-fuse="fold-dy=false" first (the pipeline's --mhc-fuse then
    leaves the groups as they are); fold=True leaves it to the pipeline, which folds the lower
    sublayer's dy into the upper sublayer's kernels (docs/GPU.md, "The dy fold")."""
    rng = np.random.default_rng(seed)
    m = n * n + 2 * n
    lead = [tokens]

    def coefficients():
        return [round_to_dtype(rng.standard_normal((m, n * c)) * 1.2 / np.sqrt(n * c), "f32"),
                rng.uniform(0.5, 2.0, 3).astype(np.float32),
                round_to_dtype(rng.standard_normal(m) * 0.5, "f32")]

    inputs = [round_to_dtype(rng.standard_normal((tokens, n, c)), elem)] + coefficients() \
        + coefficients()
    cotangent = round_to_dtype(rng.standard_normal((tokens, n, c)), elem)
    functions = ("module {\n" + chain_text("chain", n, c, elem, [None], ("F", "G"))
                 + tanh_functions("F", [None, c], elem)
                 + tanh_functions("G", [None, c], elem, vjp_attr="G_grad") + "}\n")
    passes = ["--mhc-generate-backward"] + ([] if fold else ['--mhc-fuse=fold-dy=false'])
    generated = subprocess.run([mhc_opt, "-", *passes], input=functions, check=True,
                               capture_output=True, text=True).stdout
    p = Program()
    declare_module(p, generated)
    call_backward(p, generated, "chain", inputs, [elem] + ["f32"] * 6, [cotangent], elem,
                  [True] + [False] * 6, len(lead), True, 1)
    # The kernels sum in other orders than the CPU path and round dx once (the CPU path twice);
    # bf16 programs also round dy, F's VJP and each dx term: the bf16 bar for every gradient.
    return p.text(), [elem if elem != "f32" else "backward_f32"] * 7


def programs(mhc_opt):
    yield "sublayer-example", (ROOT / "examples/sublayer.mlir").read_text(), ["bf16"]
    yield ("sublayer-n4-c64-bf16-dyn", *sublayer_program(4, 64, "bf16", 5, True, 1))
    yield ("sublayer-n4-c1280-bf16", *sublayer_program(4, 1280, "bf16", 37, False, 2))
    yield ("sublayer-n2-c100-f32-dyn", *sublayer_program(2, 100, "f32", 9, True, 3))
    yield ("gpt2-tiny-mhc", *model_program(mhc_opt, "gpt2-tiny", True))
    yield ("llama-tiny-mhc", *model_program(mhc_opt, "llama-tiny", True))
    yield ("gpt2-tiny", *model_program(mhc_opt, "gpt2-tiny", False))
    # A whole-model backward, with the dy fold and without it (the two must agree bit for bit:
    # run_programs.py's "identical_to").
    for fold in (True, False):
        suffix = "" if fold else "-nofold"
        yield (f"chain-backward-n4-c1280-bf16{suffix}",
               *chain_backward_program(mhc_opt, 4, 1280, "bf16", 37, fold, 4))
        yield (f"chain-backward-n2-c100-f32{suffix}",
               *chain_backward_program(mhc_opt, 2, 100, "f32", 9, fold, 5))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mhc-opt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--chip", default="sm_90")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MHC_OPT"] = str(Path(args.mhc_opt).resolve())
    printer = out / "libmhc_print.so"
    subprocess.run(["clang-22", "-shared", "-fPIC", "-O2", str(HERE / "print_memref.c"), "-o", str(printer)],
                   check=True)
    manifest = []
    for name, text, elems in programs(args.mhc_opt):
        expected = compiler.run_cpu(text)
        (out / f"{name}.expected.txt").write_text(expected)
        compiler.compile_gpu(text, out / f"{name}.so", chip=args.chip, fmt="bin", extra_libs=(printer,))
        printed_as = "i32" if "printMemrefI32" in text else "f32"
        entry = {"name": name, "library": f"{name}.so", "expected": f"{name}.expected.txt",
                 "printed_as": printed_as, "tolerances": [TOLERANCE[e] for e in elems]}
        if name.endswith("-nofold"):    # the same program with the dy fold: the same bits
            entry["identical_to"] = name[:-len("-nofold")]
        manifest.append(entry)
        print(f"built {name}", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{len(manifest)} programs in {out}")


if __name__ == "__main__":
    main()
