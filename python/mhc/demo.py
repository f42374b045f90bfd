#!/usr/bin/env python3
"""The README's main command: widen a real exported model into mHC form and run it.

Takes the tiny Llama that torch-mlir exported (test/Transforms/Inputs/
llama-tiny.mlir, weights inline, PyTorch's logits beside it) and

1. rewrites it with ``--mhc-hyperconnect`` (mode=mhc, 4 streams, parameters as
   constants with the paper's initialisation) and with ``mode=hc
   init=identity`` (hyper-connections that start as the original network);
2. compiles the original and both rewrites into one program with
   ``--mhc-cpu-pipeline`` and runs it with ``mlir-runner``;
3. prints what was found and converted, the identity rewrite's difference
   from the original (0 means bit-exact), and how far each mHC stream-mixing
   matrix (``comb``, Sinkhorn's output) is from doubly stochastic.

Only the standard library and the MLIR 22 tools are needed.

    python3 -m mhc.demo [--mhc-opt build/bin/mhc-opt] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from mhc.export_families import module_body
from mhc.export_models import printed_memrefs

REPO_ROOT = Path(__file__).resolve().parents[2]
MLIR_BIN = Path(os.environ.get("MLIR_BIN_DIR", "/usr/lib/llvm-22/bin"))
STREAMS = 4


def _opt(mhc_opt, text, *args):
    r = subprocess.run([mhc_opt, "-", "--mlir-print-local-scope", *args],
                       input=text, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"mhc-opt {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r.stdout, r.stderr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mhc-opt", default=str(REPO_ROOT / "build" / "bin" / "mhc-opt"))
    ap.add_argument("--model", type=Path,
                    default=REPO_ROOT / "test" / "Transforms" / "Inputs" / "llama-tiny.mlir")
    args = ap.parse_args(argv)
    start = time.time()
    text = args.model.read_text()
    ref = json.loads(args.model.with_suffix(".ref.json").read_text())
    logits_ty = "tensor<" + "x".join(map(str, ref["logits_shape"])) + "xf32>"
    ids_ty = f"tensor<1x{len(ref['input_ids'][0])}xi64>"

    # 1. The rewrites.
    t = time.time()
    mhc, diags = _opt(args.mhc_opt, text, f"--mhc-hyperconnect=streams={STREAMS} mode=mhc "
                      "params=constants remarks=true", "--mlir-print-op-on-diagnostic=false")
    rewrite_s = time.time() - t
    identity, _ = _opt(args.mhc_opt, text, f"--mhc-hyperconnect=streams={STREAMS} mode=hc "
                       "init=identity params=constants")
    original, _ = _opt(args.mhc_opt, text)
    m = re.search(r"(\d+) residual add\(s\) found, (\d+) converted in (\d+) chain", diags)
    found, converted, chains = (int(g) for g in m.groups())
    warnings = diags.count("warning:")

    # The mHC function also returns every comb (Sinkhorn's output).
    combs = re.findall(r"(%\S+) = mhc\.sinkhorn .*: (tensor<[^>]*>)", mhc)
    comb_ty = combs[0][1]
    extra_vals = ", ".join(v for v, _ in combs)
    extra_tys = ", ".join(t for _, t in combs)
    mhc = re.sub(r"(func\.func @forward\(.*\)) -> (tensor<[^>]*>)",
                 lambda g: f"{g.group(1)} -> ({g.group(2)}, {extra_tys})", mhc)
    mhc = re.sub(r"return (%\S+) : (tensor<[^>]*>)\n",
                 lambda g: f"return {g.group(1)}, {extra_vals} : {g.group(2)}, {extra_tys}\n",
                 mhc)

    # 2. One program: original, identity rewrite, mHC rewrite.
    def show(v, ty):
        return (f"    %p{v[1:]} = tensor.cast {v} : {ty} to tensor<*xf32>\n"
                f"    call @printMemrefF32(%p{v[1:]}) : (tensor<*xf32>) -> ()\n")
    results = ", ".join(["%m"] + [f"%c{i}" for i in range(len(combs))])
    main_fn = (
        "  func.func private @printMemrefF32(tensor<*xf32>) attributes {llvm.emit_c_interface}\n"
        "  func.func @main() {\n"
        f"    %ids = arith.constant dense<{json.dumps(ref['input_ids'])}> : {ids_ty}\n"
        f"    %a = call @forward(%ids) : ({ids_ty}) -> {logits_ty}\n"
        f"    %b = call @forward_identity(%ids) : ({ids_ty}) -> {logits_ty}\n"
        f"    %d = arith.subf %a, %b : {logits_ty}\n"
        f"    {results} = call @forward_mhc(%ids) : ({ids_ty}) -> ({logits_ty}, {extra_tys})\n"
        + show("%a", logits_ty) + show("%d", logits_ty) + show("%m", logits_ty)
        + "".join(show(f"%c{i}", comb_ty) for i in range(len(combs)))
        + "    return\n  }\n")
    module = ("module {\n" + module_body(original)
              + module_body(identity).replace("func.func @forward(", "func.func @forward_identity(")
              + module_body(mhc).replace("func.func @forward(", "func.func @forward_mhc(")
              + main_fn + "}\n")
    t = time.time()
    llvm, _ = _opt(args.mhc_opt, module, "--mhc-cpu-pipeline")
    compile_s = time.time() - t
    lib = MLIR_BIN.parent / "lib"
    t = time.time()
    r = subprocess.run([str(MLIR_BIN / "mlir-runner"), "-e", "main",
                        "-entry-point-result=void",
                        f"-shared-libs={lib / 'libmlir_runner_utils.so'},"
                        f"{lib / 'libmlir_c_runner_utils.so'}"],
                       input=llvm, capture_output=True, text=True)
    run_s = time.time() - t
    if r.returncode != 0:
        sys.exit("mlir-runner failed:\n" + r.stderr[-3000:])
    printed = printed_memrefs(r.stdout)
    logits, diff, mhc_logits, comb_values = printed[0], printed[1], printed[2], printed[3:]

    # 3. The summary.
    torch_err = max(abs(a - b) for a, b in zip(logits, ref["logits"]))
    identity_err = max(abs(v) for v in diff)
    moved = max(abs(a - b) for a, b in zip(mhc_logits, logits))
    finite = all(math.isfinite(v) for v in mhc_logits)
    worst_row = worst_col = 0.0
    smallest = math.inf
    n = STREAMS
    for flat in comb_values:
        for t0 in range(0, len(flat), n * n):
            mat = [flat[t0 + i * n:t0 + (i + 1) * n] for i in range(n)]
            smallest = min(smallest, min(min(row) for row in mat))
            worst_row = max(worst_row, max(abs(sum(row) - 1) for row in mat))
            worst_col = max(worst_col, max(abs(sum(mat[i][j] for i in range(n)) - 1)
                                           for j in range(n)))
    tokens = len(comb_values[0]) // (n * n) if comb_values else 0
    print(f"mhc: {args.model.relative_to(REPO_ROOT) if args.model.is_relative_to(REPO_ROOT) else args.model}"
          f" ({ref['model']}, {ref['config'].get('num_hidden_layers', ref['config'].get('n_layer'))}"
          " layers, exported by torch-mlir)")
    print(f"  residual adds found / converted  {found} / {converted}, in {chains} chain(s)"
          f"{'' if not warnings else f', {warnings} warning(s)'}")
    print(f"  streams                          {n} (mode=mhc: norm_project, split_mixes, "
          "Sinkhorn 20 iterations)")
    print(f"  original vs PyTorch              max |logits difference| = {torch_err:.2g}")
    print(f"  identity init vs original        max |logits difference| = {identity_err:.2g}"
          f"{' (bit-exact)' if identity_err == 0 else ''}  [mode=hc init=identity]")
    print(f"  mHC run                          logits {'finite' if finite else 'NOT FINITE'}, "
          f"max |logits - original| = {moved:.2g}  [mode=mhc init=paper]")
    print(f"  comb doubly-stochastic error     max |row sum - 1| = {worst_row:.2g}, "
          f"max |column sum - 1| = {worst_col:.2g}, min entry {smallest:.3g} "
          f"({len(comb_values)} matrices x {tokens} tokens, from 6 printed digits)")
    print(f"  time                             rewrite {rewrite_s:.2f} s, compile "
          f"{compile_s:.1f} s, run {run_s:.1f} s, total {time.time() - start:.1f} s")
    ok = (converted == found and identity_err == 0 and finite and worst_row < 1e-4
          and worst_col < 1e-4 and smallest >= 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
