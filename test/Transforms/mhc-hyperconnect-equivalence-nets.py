# Identity-init equivalence of --mhc-hyperconnect on hand-written residual nets.
#
# Each net (3 pre-norm residual blocks, seeded random weights and input) is
# compiled twice into one module: as written (@net) and after
# --mhc-hyperconnect="mode=hc init=identity params=constants" (@net_hc). @main
# runs both on the same input through --mhc-cpu-pipeline + mlir-runner and
# prints the original output and the difference, computed in f32 inside the
# program (so the comparison does not depend on printed digits).
#
# Tolerance: 0 (bit-exact) for n a power of two (2, 4, 8, 16: the exit sums the
# streams pairwise); for other n the exit mean (sum / n) costs roundings, so
# |diff| <= 4 ulp of the output's scale (f32: 4 * 2^-24 * max|out|).
# mode=static-hc init=identity, and exit=learned (whose identity init is the
# mean), are checked the same way. Control cases (mode=mhc and mode=hc with init=paper) must differ, so the comparison can
# fail. Forms: linalg (generic adds and linalg.add), arith (addf on tensors,
# for bf16 with the add done in f32 between extf/truncf), tosa, and a stream
# that goes through reshapes and casts between blocks.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: all [[N:[0-9]+]] of [[N]] equivalence checks passed
import re
import subprocess
import sys
import zlib

import numpy as np

from mhc.export_families import module_body
from mhc.export_models import printed_memrefs

MHC_OPT, RUNNER, RUNNER_UTILS, C_RUNNER_UTILS = sys.argv[1:5]
T, C, H, BLOCKS = 8, 32, 64, 3


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def dense(a):
    def fmt(x):
        if x.ndim == 0:
            return "%.9g" % float(x)
        return "[" + ", ".join(fmt(e) for e in x) + "]"
    return "dense<%s>" % fmt(np.asarray(a, dtype=np.float64))


def opt(text, *args):
    r = subprocess.run([MHC_OPT, "-", "--mlir-print-local-scope", *args],
                       input=text, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("mhc-opt %s failed:\n%s" % (" ".join(args), r.stderr[-3000:]))
    return r.stdout


# --- nets -------------------------------------------------------------------

ID2 = "affine_map<(d0, d1) -> (d0, d1)>"
ID3 = "affine_map<(d0, d1, d2) -> (d0, d1, d2)>"


def rmsnorm(x, e, l):
    """x * rsqrt(mean(x^2) + eps) over C, as two linalg.generics."""
    return f"""
  %sqi{l} = tensor.empty() : tensor<{T}x{e}>
  %sqz{l} = linalg.fill ins(%zero : {e}) outs(%sqi{l} : tensor<{T}x{e}>) -> tensor<{T}x{e}>
  %sq{l} = linalg.generic {{indexing_maps = [{ID2}, affine_map<(d0, d1) -> (d0)>], iterator_types = ["parallel", "reduction"]}}
      ins({x} : tensor<{T}x{C}x{e}>) outs(%sqz{l} : tensor<{T}x{e}>) {{
  ^bb0(%a: {e}, %o: {e}):
    %m = arith.mulf %a, %a : {e}
    %s = arith.addf %o, %m : {e}
    linalg.yield %s : {e}
  }} -> tensor<{T}x{e}>
  %nrmi{l} = tensor.empty() : tensor<{T}x{C}x{e}>
  %nrm{l} = linalg.generic {{indexing_maps = [{ID2}, affine_map<(d0, d1) -> (d0)>, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins({x}, %sq{l} : tensor<{T}x{C}x{e}>, tensor<{T}x{e}>) outs(%nrmi{l} : tensor<{T}x{C}x{e}>) {{
  ^bb0(%a: {e}, %s: {e}, %o: {e}):
    %ms = arith.mulf %s, %invc : {e}
    %ep = arith.addf %ms, %eps : {e}
    %r = math.rsqrt %ep : {e}
    %v = arith.mulf %a, %r : {e}
    linalg.yield %v : {e}
  }} -> tensor<{T}x{C}x{e}>"""


def mlp(u, e, l, w1, w2, tensor_tanh):
    """matmul -> tanh -> matmul (the branch's body after its norm)."""
    tanh = (f"  %g{l} = math.tanh %hid{l} : tensor<{T}x{H}x{e}>" if tensor_tanh else f"""
  %gi{l} = tensor.empty() : tensor<{T}x{H}x{e}>
  %g{l} = linalg.generic {{indexing_maps = [{ID2}, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins(%hid{l} : tensor<{T}x{H}x{e}>) outs(%gi{l} : tensor<{T}x{H}x{e}>) {{
  ^bb0(%a: {e}, %o: {e}):
    %t = math.tanh %a : {e}
    linalg.yield %t : {e}
  }} -> tensor<{T}x{H}x{e}>""")
    return f"""
  %w1_{l} = arith.constant {dense(w1)} : tensor<{C}x{H}x{e}>
  %w2_{l} = arith.constant {dense(w2)} : tensor<{H}x{C}x{e}>
  %hz{l} = linalg.fill ins(%zero : {e}) outs(%eTH : tensor<{T}x{H}x{e}>) -> tensor<{T}x{H}x{e}>
  %hid{l} = linalg.matmul ins({u}, %w1_{l} : tensor<{T}x{C}x{e}>, tensor<{C}x{H}x{e}>) outs(%hz{l} : tensor<{T}x{H}x{e}>) -> tensor<{T}x{H}x{e}>
{tanh}
  %yz{l} = linalg.fill ins(%zero : {e}) outs(%eTC : tensor<{T}x{C}x{e}>) -> tensor<{T}x{C}x{e}>
  %y{l} = linalg.matmul ins(%g{l}, %w2_{l} : tensor<{T}x{H}x{e}>, tensor<{H}x{C}x{e}>) outs(%yz{l} : tensor<{T}x{C}x{e}>) -> tensor<{T}x{C}x{e}>"""


def net(form, e, name):
    rng = rng_for(name)
    ty = f"tensor<{T}x{C}x{e}>"
    lines = [f"func.func @net(%x0: {ty}) -> {ty} {{",
             f"  %zero = arith.constant 0.0 : {e}",
             f"  %invc = arith.constant {1.0 / C} : {e}",
             f"  %eps = arith.constant 1.0e-5 : {e}",
             f"  %eTH = tensor.empty() : tensor<{T}x{H}x{e}>",
             f"  %eTC = tensor.empty() : {ty}"]
    for l in range(BLOCKS):
        x = f"%x{l}"
        w1 = rng.standard_normal((C, H)) / np.sqrt(C)
        w2 = rng.standard_normal((H, C)) / np.sqrt(H)
        lines.append(rmsnorm(x, e, l))
        lines.append(mlp(f"%nrm{l}", e, l, w1, w2, tensor_tanh=(form == "arith")))
        a, b = (x, f"%y{l}") if l % 2 == 0 else (f"%y{l}", x)
        if form == "reshape" and l + 1 < BLOCKS:
            # The stream goes through a reshape round trip and casts between
            # blocks (replayed on the widened stream).
            lines.append(f"""  %r{l+1} = arith.addf {a}, {b} : {ty}
  %v{l+1} = tensor.expand_shape %r{l+1} [[0, 1], [2]] output_shape [1, {T}, {C}] : {ty} into tensor<1x{T}x{C}x{e}>
  %d{l+1} = tensor.cast %v{l+1} : tensor<1x{T}x{C}x{e}> to tensor<1x?x{C}x{e}>
  %q{l+1} = tensor.collapse_shape %d{l+1} [[0, 1], [2]] : tensor<1x?x{C}x{e}> into tensor<?x{C}x{e}>
  %x{l+1} = tensor.cast %q{l+1} : tensor<?x{C}x{e}> to {ty}""")
        elif form == "linalg" and l == 1:
            lines.append(f"  %x{l+1} = linalg.add ins({a}, {b} : {ty}, {ty}) outs(%eTC : {ty}) -> {ty}")
        elif form == "linalg":
            lines.append(f"""  %x{l+1} = linalg.generic {{indexing_maps = [{ID2}, {ID2}, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins({a}, {b} : {ty}, {ty}) outs(%eTC : {ty}) {{
  ^bb0(%p: {e}, %q: {e}, %o: {e}):
    %s = arith.addf %p, %q : {e}
    linalg.yield %s : {e}
  }} -> {ty}""")
        elif e == "bf16":
            # Mixed precision: the residual add runs in f32.
            f32 = f"tensor<{T}x{C}xf32>"
            lines.append(f"""  %af{l} = arith.extf {a} : {ty} to {f32}
  %bf{l} = arith.extf {b} : {ty} to {f32}
  %sf{l} = arith.addf %af{l}, %bf{l} : {f32}
  %x{l+1} = arith.truncf %sf{l} : {f32} to {ty}""")
        else:
            lines.append(f"  %x{l+1} = arith.addf {a}, {b} : {ty}")
    lines.append(f"  return %x{BLOCKS} : {ty}\n}}")
    return "\n".join(lines)


def tosa_net(name):
    rng = rng_for(name)
    ty = f"tensor<1x{T}x{C}xf32>"
    w = f"tensor<1x{C}x{C}xf32>"
    lines = [f"func.func @net(%x0: {ty}) -> {ty} {{",
             '  %zp = "tosa.const"() <{values = dense<0.0> : tensor<1xf32>}> : () -> tensor<1xf32>']
    for l in range(BLOCKS):
        wv = rng.standard_normal((1, C, C)) / np.sqrt(C)
        a, b = (f"%x{l}", f"%y{l}") if l % 2 == 0 else (f"%y{l}", f"%x{l}")
        lines.append(f"""  %w{l} = "tosa.const"() <{{values = {dense(wv)} : {w}}}> : () -> {w}
  %s{l} = tosa.sigmoid %x{l} : ({ty}) -> {ty}
  %m{l} = tosa.matmul %s{l}, %w{l}, %zp, %zp : ({ty}, {w}, tensor<1xf32>, tensor<1xf32>) -> {ty}
  %y{l} = tosa.tanh %m{l} : ({ty}) -> {ty}
  %x{l+1} = tosa.add {a}, {b} : ({ty}, {ty}) -> {ty}""")
    lines.append(f"  return %x{BLOCKS} : {ty}\n}}")
    return "\n".join(lines)


# --- the check ----------------------------------------------------------------

TOSA_TO_LINALG = ("--pass-pipeline=builtin.module(func.func(tosa-to-linalg-named,"
                  "tosa-to-linalg,tosa-to-arith,tosa-to-tensor))")


def check(name, text, shape, elem, options, tol_ulps, tosa=False, control=False):
    ty = "tensor<%sx%s>" % ("x".join(map(str, shape)), elem)
    ty32 = "tensor<%sxf32>" % "x".join(map(str, shape))
    original = opt(text)
    widened = opt(text, "--mhc-hyperconnect=" + options)
    blocks = widened.count("mhc.post_res")
    if blocks != BLOCKS or re.search(r"tosa\.add|arith\.addf %\S+, %\S+ : tensor|linalg\.add", widened):
        print(f"{name}: FAIL: expected {BLOCKS} post_res and no residual add left, got {blocks}")
        return False
    x = rng_for(name + "/input").standard_normal(shape)
    conv = (lambda v, o: f"  {o} = arith.extf {v} : {ty} to {ty32}") if elem != "f32" else \
           (lambda v, o: f"  {o} = tensor.cast {v} : {ty} to {ty32}")
    main = f"""
  func.func private @printMemrefF32(tensor<*xf32>) attributes {{llvm.emit_c_interface}}
  func.func @main() {{
    %x = arith.constant {dense(x)} : {ty}
    %a = call @net(%x) : ({ty}) -> {ty}
    %b = call @net_hc(%x) : ({ty}) -> {ty}
  {conv('%a', '%a32')}
  {conv('%b', '%b32')}
    %d = arith.subf %a32, %b32 : {ty32}
    %pa = tensor.cast %a32 : {ty32} to tensor<*xf32>
    %pd = tensor.cast %d : {ty32} to tensor<*xf32>
    call @printMemrefF32(%pa) : (tensor<*xf32>) -> ()
    call @printMemrefF32(%pd) : (tensor<*xf32>) -> ()
    return
  }}"""
    module = ("module {\n" + module_body(original) +
              module_body(widened).replace("func.func @net(", "func.func @net_hc(") +
              main + "\n}\n")
    if tosa:
        module = opt(module, TOSA_TO_LINALG)
    llvm = opt(module, "--mhc-cpu-pipeline")
    r = subprocess.run([RUNNER, "-e", "main", "-entry-point-result=void",
                        "-shared-libs=%s,%s" % (RUNNER_UTILS, C_RUNNER_UTILS)],
                       input=llvm, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: FAIL: mlir-runner: {r.stderr[-2000:]}")
        return False
    out, diff = map(np.array, printed_memrefs(r.stdout))
    scale = np.max(np.abs(out))
    ulp = {"f32": 2.0 ** -24, "bf16": 2.0 ** -8}[elem]
    tol = tol_ulps * ulp * scale
    err = np.max(np.abs(diff))
    ok = (out.size == np.prod(shape) and np.all(np.isfinite(out)) and scale > 0.1
          and np.all(np.isfinite(diff)) and (err > tol if control else err <= tol))
    print(f"{name} [{options}]: max|out| = {scale:.4g}, max|diff| = {err:.3g}, "
          f"{'must exceed' if control else 'tol'} = {tol:.3g}: {'ok' if ok else 'FAIL'}")
    return ok


cases = []
for form in ("linalg", "arith"):
    for elem in ("f32", "bf16"):
        for n in (4, 2):
            name = f"{form}-{elem}-n{n}"
            cases.append((name, net(form, elem, name), (T, C), elem,
                          f"mode=hc init=identity params=constants streams={n}", 0, False))
name = "linalg-f32-n3"
cases.append((name, net("linalg", "f32", name), (T, C), "f32",
              "mode=hc init=identity params=constants streams=3", 4, False))
# n >= 8: the exit's pairwise sum keeps the mean exact (a stream-by-stream
# sum rounds from the fifth stream on).
for n in (8, 16):
    name = f"linalg-f32-n{n}"
    cases.append((name, net("linalg", "f32", name), (T, C), "f32",
                  f"mode=hc init=identity params=constants streams={n}", 0, False))
# The learned exit (DeepSeek-V4's head mix) starts as the mean: exact too.
for n in (4, 8):
    name = f"arith-f32-learned-exit-n{n}"
    cases.append((name, net("arith", "f32", name), (T, C), "f32",
                  f"mode=hc init=identity params=constants exit=learned streams={n}",
                  0, False))
name = "linalg-bf16-static-learned-exit"
cases.append((name, net("linalg", "bf16", name), (T, C), "bf16",
              "mode=static-hc init=identity params=constants exit=learned", 0, False))
for elem in ("f32", "bf16"):
    name = f"reshape-{elem}-n4"
    cases.append((name, net("reshape", elem, name), (T, C), elem,
                  "mode=hc init=identity params=constants", 0, False))
name = "arith-f32-static"
cases.append((name, net("arith", "f32", name), (T, C), "f32",
              "mode=static-hc init=identity params=constants", 0, False))
name = "tosa-f32-n4"
cases.append((name, tosa_net(name), (1, T, C), "f32",
              "mode=hc init=identity params=constants", 0, True))
# Control: the paper init is *not* the identity, and the check must see it.
name = "linalg-f32-paper-control"
cases.append((name, net("linalg", "f32", name), (T, C), "f32",
              "mode=mhc init=paper params=constants", 0, False, True))
name = "arith-bf16-hc-paper-control"
cases.append((name, net("arith", "bf16", name), (T, C), "bf16",
              "mode=hc init=paper params=constants", 0, False, True))
name = "arith-f32-mhc-learned-exit-control"
cases.append((name, net("arith", "f32", name), (T, C), "f32",
              "mode=mhc init=paper params=constants exit=learned", 0, False, True))

passed = 0
for case in cases:
    try:
        passed += check(*case)
    except Exception as ex:  # a crash is a failed check, not a stopped run
        print(f"{case[0]}: FAIL: {ex}")
if passed == len(cases):
    print(f"all {passed} of {len(cases)} equivalence checks passed")
else:
    print(f"FAIL: {len(cases) - passed} of {len(cases)} equivalence checks failed")
