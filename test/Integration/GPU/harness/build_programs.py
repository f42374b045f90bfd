#!/usr/bin/env python3
"""Builds whole programs for the GPU path and their CPU-path results (docs/Embedding.md, GPU).

Each program is a module with a `@main` that computes and prints, like the CPU integration
tests: mhc ops with tensor math between them (tanh, casts), constants, printing, and whole
models rewritten by --mhc-hyperconnect (the exported GPT-2 and Llama, and GPT-2 without the
rewrite: only the host-math kernels). For each one this script

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
from mhc.testing import Program  # noqa: E402

LLVM = Path("/usr/lib/llvm-22")
# Normwise relative tolerance per printed element type (as check_kernels.py): the GPU's
# projection runs on bf16 tensor cores (hi/lo split), its tanh/exp come from libdevice.
TOLERANCE = {"f32": 1e-4, "bf16": 2e-2, "f16": 2e-2, "logits": 1e-3}


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


def programs(mhc_opt):
    yield "sublayer-example", (ROOT / "examples/sublayer.mlir").read_text(), ["bf16"]
    yield ("sublayer-n4-c64-bf16-dyn", *sublayer_program(4, 64, "bf16", 5, True, 1))
    yield ("sublayer-n4-c1280-bf16", *sublayer_program(4, 1280, "bf16", 37, False, 2))
    yield ("sublayer-n2-c100-f32-dyn", *sublayer_program(2, 100, "f32", 9, True, 3))
    yield ("gpt2-tiny-mhc", *model_program(mhc_opt, "gpt2-tiny", True))
    yield ("llama-tiny-mhc", *model_program(mhc_opt, "llama-tiny", True))
    yield ("gpt2-tiny", *model_program(mhc_opt, "gpt2-tiny", False))


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
        manifest.append({"name": name, "library": f"{name}.so", "expected": f"{name}.expected.txt",
                         "printed_as": printed_as,
                         "tolerances": [TOLERANCE[e] for e in elems]})
        print(f"built {name}", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{len(manifest)} programs in {out}")


if __name__ == "__main__":
    main()
