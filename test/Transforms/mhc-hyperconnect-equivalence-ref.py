# The rewritten network against the numpy golden model (python/mhc/reference.py)
# with non-trivial parameters: a 2-block net (F = tanh) is rewritten with
# params=arguments; @main passes seeded random fn/theta, scale and base (large
# enough that every coefficient matters) and the output is compared with
#   x = expand(h); per block: coefficients, u = pre_apply, y = tanh(u),
#   x = post_res(y, x, post, comb); out = collapse(x) / n
# built from the reference ops (mode=mhc: norm_project/split_mixes/sinkhorn;
# mode=hc: hc_coefficients, spec 5b). Two blocks, so that the streams differ
# in the second one and the orientation of comb and theta_res matters.
# With exit=learned the end is the learned head mix instead of the mean:
# mode=mhc ref.head_mix (DeepSeek-V4: sigmoid(alpha * norm_project(x, fn) +
# base) + eps), mode=hc alpha * tanh(x~[i] . theta) + base[i].
# Tolerance (f32): |diff| <= 2e-5 + 2e-5 * |ref|.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: mode=mhc n=4: {{.*}}: ok
# CHECK: mode=hc n=4: {{.*}}: ok
# CHECK: mode=mhc n=2: {{.*}}: ok
# CHECK: mode=hc n=3: {{.*}}: ok
# CHECK: mode=mhc n=4 exit=learned: {{.*}}: ok
# CHECK: mode=hc n=4 exit=learned: {{.*}}: ok
import re
import subprocess
import sys
import zlib

import numpy as np

from mhc import reference as ref

MHC_OPT, RUNNER, RUNNER_UTILS, C_RUNNER_UTILS = sys.argv[1:5]
T, C = 4, 16

NET = f"""
func.func @net(%h: tensor<{T}x{C}xf32>) -> tensor<{T}x{C}xf32> {{
  %y1 = math.tanh %h : tensor<{T}x{C}xf32>
  %h1 = arith.addf %h, %y1 : tensor<{T}x{C}xf32>
  %y2 = math.tanh %h1 : tensor<{T}x{C}xf32>
  %h2 = arith.addf %y2, %h1 : tensor<{T}x{C}xf32>
  return %h2 : tensor<{T}x{C}xf32>
}}"""


def dense(a):
    def fmt(x):
        return "%.9g" % float(x) if x.ndim == 0 else "[" + ", ".join(fmt(e) for e in x) + "]"
    return "dense<%s>" % fmt(np.asarray(a, dtype=np.float64))


def ttype(a):
    return "tensor<%sxf32>" % "x".join(map(str, a.shape))


def opt(text, *args):
    r = subprocess.run([MHC_OPT, "-", *args], input=text, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return r.stdout


def check(mode, n, exit="mean"):
    rng = np.random.default_rng(zlib.crc32(f"{mode}-{n}-{exit}".encode()))
    m = n * n + 2 * n
    h = rng.standard_normal((T, C)).astype(np.float32)
    params = []
    for _ in range(2):
        if mode == "mhc":
            first = (0.1 * rng.standard_normal((m, n * C))).astype(np.float32)        # fn
        else:
            first = (0.3 * rng.standard_normal((n + 2, C))).astype(np.float32)        # theta
        scale = rng.uniform(0.5, 1.5, 3).astype(np.float32)
        base = (0.5 + 0.5 * rng.standard_normal(m)).astype(np.float32)
        params.append((first, scale, base))
    if exit == "learned":
        exit_first = (0.3 * rng.standard_normal((n, n * C) if mode == "mhc" else (1, C))
                      ).astype(np.float32)
        exit_scale = rng.uniform(0.5, 1.5, 1).astype(np.float32)
        exit_base = (0.3 * rng.standard_normal(n)).astype(np.float32)

    widened = opt(NET, f"--mhc-hyperconnect=mode={mode} streams={n} min-blocks=2 exit={exit}")
    roles = re.findall(r'mhc\.param = "(\w+\.\w+)"', widened)
    first_role = "fn" if mode == "mhc" else "theta"
    want_roles = [f"layer{l}.{r}" for l in range(2) for r in (first_role, "scale", "base")]
    flat = [p for block in params for p in block]
    if exit == "learned":
        # The head's parameters come after the chain's.
        want_roles += [f"exit0.{r}" for r in (first_role, "scale", "base")]
        flat += [exit_first, exit_scale, exit_base]
    assert roles == want_roles, roles
    consts = "\n".join(f"    %p{i} = arith.constant {dense(p)} : {ttype(p)}"
                       for i, p in enumerate(flat))
    args = ", ".join(f"%p{i}" for i in range(len(flat)))
    arg_types = ", ".join(ttype(p) for p in flat)
    ty = f"tensor<{T}x{C}xf32>"
    main = f"""
  func.func private @printMemrefF32(tensor<*xf32>) attributes {{llvm.emit_c_interface}}
  func.func @main() {{
    %h = arith.constant {dense(h)} : {ty}
{consts}
    %r = call @net(%h, {args}) : ({ty}, {arg_types}) -> {ty}
    %u = tensor.cast %r : {ty} to tensor<*xf32>
    call @printMemrefF32(%u) : (tensor<*xf32>) -> ()
    return
  }}"""
    module = widened[:widened.rindex("}")] + main + "\n}\n"
    llvm = opt(module, "--mhc-cpu-pipeline")
    r = subprocess.run([RUNNER, "-e", "main", "-entry-point-result=void",
                        "-shared-libs=%s,%s" % (RUNNER_UTILS, C_RUNNER_UTILS)],
                       input=llvm, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    num = re.compile(r"[-+]?(?:nan|inf|\d+\.?\d*(?:[eE][-+]?\d+)?)")
    got = np.array([float(v) for v in num.findall(r.stdout.split("data =", 1)[1])])

    # The golden model, op by op.
    x = ref.expand(h.astype(np.float64), n)
    for first, scale, base in params:
        if mode == "mhc":
            mix = ref.norm_project(x, first.astype(np.float64))
            pre, post, logits = ref.split_mixes(mix, scale.astype(np.float64), base.astype(np.float64))
            comb = ref.sinkhorn(logits)
        else:
            b = base.astype(np.float64)
            # base holds res in comb orientation (row = source); the reference
            # takes b_res in the paper's (row = destination).
            pre, post, comb = ref.hc_coefficients(
                x, first[0].astype(np.float64), first[1].astype(np.float64),
                first[2:].astype(np.float64), scale.astype(np.float64),
                b[:n], b[n:2 * n], b[2 * n:].reshape(n, n).T)
        u = ref.pre_apply(x, pre)
        x = ref.post_res(np.tanh(u), x, post, comb)
    if exit == "mean":
        want = ref.collapse(x) / n
    elif mode == "mhc":
        want = ref.head_mix(x, exit_first.astype(np.float64), exit_scale.astype(np.float64),
                            exit_base.astype(np.float64))
    else:
        xt = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        w = exit_scale[0] * np.tanh(xt @ exit_first[0].astype(np.float64)) + exit_base
        want = ref.pre_apply(x, w)
    want = want.reshape(-1)
    err = np.abs(got - want)
    ok = got.shape == want.shape and np.all(err <= 2e-5 + 2e-5 * np.abs(want))
    label = f"mode={mode} n={n}" + (f" exit={exit}" if exit != "mean" else "")
    print(f"{label}: max|got - ref| = {err.max():.3g}, max|ref| = "
          f"{np.abs(want).max():.3g}: {'ok' if ok else 'FAIL'}")


for mode, n, exit in (("mhc", 4, "mean"), ("hc", 4, "mean"), ("mhc", 2, "mean"),
                      ("hc", 3, "mean"), ("mhc", 4, "learned"), ("hc", 4, "learned")):
    try:
        check(mode, n, exit)
    except Exception as ex:
        print(f"mode={mode} n={n} exit={exit}: FAIL: {ex}")
