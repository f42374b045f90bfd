# --mhc-generate-backward on the CPU path: the generated @f_forward / @f_backward of
#  (a) the standalone sublayer (inputs x, y, fn, scale, base; outputs u = pre_apply,
#      x_next = post_res), what the benchmarks time, and
#  (b) a chain of two sublayers through opaque calls of F = tanh (f32 inside, stored like u),
#      one VJP found by name (@F_vjp), the other through the callee's mhc.vjp attribute,
# run under mlir-runner for each save mode (mixes, all, inputs) on seeded random data:
# n in {1, 2, 4, 8}, C in {13, 100}, f32/bf16 activations, dynamic T, T = 0, static token dims
# (every case with save=mixes, the default; three of them with all three modes).
#
# Checks, on the data the program ran on:
#  * the float64 reference (a: the reference backward of the five ops composed as the pass
#    composes them; b: mhc.reference.mhc_sublayer_backward chained through both sublayers)
#    against central differences of the float64 reference forward (|ref - fd| <= 1e-6 max|fd| +
#    1e-9 at 24 sampled elements per gradient);
#  * every printed gradient against that reference, normwise: f32 activations within 1e-5 of
#    max|ref| (measured <= 1.1e-6); bf16 (a) dx within 2^-6 of max|ref|: it is the sum of three
#    bf16-rounded terms, rounded twice by arith.addf (measured <= 4.6e-3); bf16 (b) every gradient
#    within 2^-5: the forward rounds u, y and x1 to bf16 and the backward dy, F's VJP, each dx term
#    and their sums, and the rounded cotangents feed the parameter gradients; the reference rounds
#    nothing (measured <= 5.8e-3, and 1.4e-2 for dscale, a 3-vector summed with cancellation);
#  * in (a), the f32 parameter gradients of bf16 cases come from exact inputs through f32 sums:
#    1e-5; dy is one rounded f32 sum: within one bf16 ulp of the rounded reference;
#  * the three save modes recompute exactly what the others read: their gradients must be
#    bit-identical; so must the chains' after --mhc-fuse (its dy fold splits the lower
#    sublayer's dy off and moves the rest after the VJP; the CPU path inlines the groups).
# The controls at the end show that the checks reject spoiled data.
#
# REQUIRES: numpy
# RUN: %python %s mhc-opt mlir-runner %runner_utils %c_runner_utils | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] checks passed
import subprocess

import numpy as np

from mhc import reference as ref
from mhc.testing import (Checker, Program, Tools, call_backward, chain_text, check_f32, check_fd,
                         check_rounded, declare_module, fd_gradient, round_to_dtype, spoil,
                         sublayer_text, tanh_functions, tensor_type, vjp_loss)

SAVE_MODES = ("mixes", "all", "inputs")
BF16_NORMWISE = {"standalone": 2.0 ** -6, "chain": 2.0 ** -5}
rng = np.random.default_rng(53)
tools = Tools.from_argv()


def standalone_text(name, n, c, elem, lead):
    m = n * n + 2 * n
    xt, ut = tensor_type(lead + [n, c], elem), tensor_type(lead + [c], elem)
    return (f"  func.func @{name}(%x: {xt}, %y: {ut}, %fn: tensor<{m}x{n * c}xf32>, "
            f"%scale: tensor<3xf32>, %base: tensor<{m}xf32>) -> ({ut}, {xt}) {{\n"
            + sublayer_text(0, "%x", "%fn", "%scale", "%base", "%y", n, c, lead, elem)
            + f"    return %u0, %x1 : {ut}, {xt}\n  }}\n")


# -- references (float64) ---------------------------------------------------------------------

def standalone_forward(x, y, fn, scale, base):
    mix = ref.norm_project(x, fn, dtype=np.float64)
    pre, post, logits = ref.split_mixes(mix, scale, base, dtype=np.float64)
    comb = ref.sinkhorn(logits, dtype=np.float64)
    return ref.pre_apply(x, pre, dtype=np.float64), ref.post_res(y, x, post, comb, dtype=np.float64)


def standalone_backward(x, y, fn, scale, base, du, dxn):
    """The reference backward of each op, composed as the generated backward composes them."""
    f64 = dict(dtype=np.float64)
    mix = ref.norm_project(x, fn, **f64)
    pre, post, logits = ref.split_mixes(mix, scale, base, **f64)
    comb = ref.sinkhorn(logits, **f64)
    dy, dx_res, dpost, dcomb = ref.post_res_backward(y, x, post, comb, dxn, **f64)
    dx_pre, dpre = ref.pre_apply_backward(x, pre, du, **f64)
    dlogits = ref.sinkhorn_backward(logits, dcomb, **f64)
    dmix, dscale, dbase = ref.split_mixes_backward(mix, scale, base, dpre, dpost, dlogits, **f64)
    dx_np, dfn = ref.norm_project_backward(x, fn, dmix, **f64)
    return [dx_res + dx_pre + dx_np, dy, dfn, dscale, dbase]


def tanh_vjp(u, dy):
    return dy * (1.0 - np.tanh(u) ** 2)


def chain_forward(x0, fn0, s0, b0, fn1, s1, b1):
    x1 = ref.mhc_sublayer(x0, fn0, s0, b0, np.tanh, dtype=np.float64)
    return ref.mhc_sublayer(x1, fn1, s1, b1, np.tanh, dtype=np.float64)


def chain_backward(x0, fn0, s0, b0, fn1, s1, b1, dx2):
    x1 = ref.mhc_sublayer(x0, fn0, s0, b0, np.tanh, dtype=np.float64)
    g1 = ref.mhc_sublayer_backward(x1, fn1, s1, b1, np.tanh, tanh_vjp, dx2, dtype=np.float64)
    g0 = ref.mhc_sublayer_backward(x0, fn0, s0, b0, np.tanh, tanh_vjp, g1["dx"],
                                   dtype=np.float64)
    return [g0["dx"], g0["dfn"], g0["dscale"], g0["dbase"], g1["dfn"], g1["dscale"], g1["dbase"]]


# -- the cases --------------------------------------------------------------------------------

def make_case(kind, n, c, elem, lead, dynamic):
    """Random inputs (never zeros) and cotangents, and the MLIR functions of one case."""
    m = n * n + 2 * n
    sig = [None] * len(lead) if dynamic else list(lead)
    name = f"{kind}_n{n}_c{c}_{elem}_{'dyn' if dynamic else 'x'.join(map(str, lead)) or 'none'}"

    def act(shape):
        return round_to_dtype(rng.standard_normal(shape), elem)

    def param(shape, scale):
        return round_to_dtype(rng.standard_normal(shape) * scale, "f32")

    def coeffs():
        return [param((m, n * c), 1.2 / np.sqrt(n * c)),
                rng.uniform(0.5, 2.0, 3).astype(np.float32), param((m,), 0.5)]

    if kind == "standalone":
        inputs = [act(lead + (n, c)), act(lead + (c,))] + coeffs()
        in_elems = [elem, elem, "f32", "f32", "f32"]
        per_token = [True, True, False, False, False]
        cotangents = [act(lead + (c,)), act(lead + (n, c))]
        text = standalone_text(name, n, c, elem, sig)
        f_shapes = [lead + (n, c), lead + (c,)]
    else:
        inputs = [act(lead + (n, c))] + coeffs() + coeffs()
        in_elems = [elem] + ["f32"] * 6
        per_token = [True] + [False] * 6
        cotangents = [act(lead + (n, c))]
        callees = (f"F_{name}", f"G_{name}")
        text = (chain_text(name, n, c, elem, sig, callees)
                + tanh_functions(callees[0], sig + [c], elem)
                + tanh_functions(callees[1], sig + [c], elem, vjp_attr=f"G_{name}_grad"))
        f_shapes = [lead + (n, c)]
    return dict(kind=kind, name=name, n=n, c=c, elem=elem, lead=lead, dynamic=dynamic,
                inputs=inputs, in_elems=in_elems, per_token=per_token, cotangents=cotangents,
                text=text, f_shapes=f_shapes)


# (kind, n, C, element type, token dims, dynamic?, run under every save mode?)
cases = [make_case(*spec[:6]) | dict(every_mode=spec[6]) for spec in (
    ("standalone", 4, 13, "f32", (5,), True, False),
    ("standalone", 4, 13, "bf16", (5,), True, True),
    ("standalone", 2, 100, "bf16", (3,), True, False),
    ("standalone", 1, 13, "f32", (2, 3), False, False),
    ("standalone", 8, 13, "bf16", (4,), True, False),
    ("standalone", 4, 13, "bf16", (0,), False, False),
    ("chain", 4, 13, "f32", (6,), True, True),
    ("chain", 4, 13, "bf16", (2, 3), False, True),
    ("chain", 2, 100, "f32", (3,), True, False),
    ("chain", 8, 13, "bf16", (4,), True, False),
    ("chain", 1, 13, "bf16", (0,), True, False),
)]


def run_mode(save, cases, fuse=False):
    """Generates the backward of every case's function with `save` (then groups it with
    --mhc-fuse if `fuse`: the CPU path inlines the groups), calls it from @main and returns the
    printed gradients per case and the generated module."""
    functions = "module {\n" + "".join(c["text"] for c in cases) + "}\n"
    generated = subprocess.run([tools.mhc_opt, "-", f"--mhc-generate-backward=save={save}"]
                               + (["--mhc-fuse"] if fuse else []),
                               input=functions, capture_output=True, text=True)
    if generated.returncode != 0:
        raise RuntimeError(f"--mhc-generate-backward failed:\n{generated.stderr}")
    p = Program()
    declare_module(p, generated.stdout)
    for case in cases:
        call_backward(p, generated.stdout, case["name"], case["inputs"], case["in_elems"],
                      case["cotangents"], case["elem"], case["per_token"], len(case["lead"]),
                      case["dynamic"], len(case["f_shapes"]))
    printed = iter(p.run(Tools(tools.mhc_opt, tools.runner, *tools.libs.split(","))))
    return [[next(printed) for _ in case["inputs"]] for case in cases], generated.stdout


# Every case with the default save=mixes; the other modes on a few cases (compile time).
results = run_mode("mixes", cases)[0]
check = Checker()
some = [k for k, case in enumerate(cases) if case["every_mode"]]
for save in SAVE_MODES[1:]:
    other = run_mode(save, [cases[k] for k in some])[0]
    same = all(np.array_equal(a, b) for k, c in zip(some, other)
               for a, b in zip(results[k], c))
    check.record(f"save={save} gives bit-identical gradients to save=mixes", same,
                 f"{sum(len(c) for c in other)} gradients of {len(some)} functions compared")

# --mhc-fuse's dy fold on a chain (docs/GPU.md, "The dy fold"): the lower sublayer's dy moves
# to a post_res_grad of its own in the upper sublayer's group, and the lower sublayer becomes one
# "backward" group after its VJP. The same ops compute the same values: on the CPU path, which
# inlines the groups, the gradients must be bit-identical to the ungrouped backward's.
chains = [k for k, case in enumerate(cases) if case["kind"] == "chain"]
fused, fused_text = run_mode("mixes", [cases[k] for k in chains], fuse=True)
same = all(np.array_equal(a, b) for k, c in zip(chains, fused) for a, b in zip(results[k], c))
check.record("--mhc-fuse (with the dy fold) gives bit-identical gradients on the CPU path", same,
             f"{sum(len(c) for c in fused)} gradients of {len(chains)} chains compared")
folded = fused_text.count('mhc.fused "backward"')
check.record("each chain's lower sublayer is one backward group (its dy folded above)",
             folded == len(chains), f"{folded} backward groups in {len(chains)} chains")

NAMES = {"standalone": ["dx", "dy", "dfn", "dscale", "dbase"],
         "chain": ["dx", "dfn0", "dscale0", "dbase0", "dfn1", "dscale1", "dbase1"]}
for case, got in zip(cases, results):
    label = f"{case['name']} (T={int(np.prod(case['lead']))})"
    inputs = [np.asarray(a, np.float64) for a in case["inputs"]]
    cots = [np.asarray(a, np.float64) for a in case["cotangents"]]
    if case["kind"] == "standalone":
        forward, expected = standalone_forward, standalone_backward(*inputs, *cots)
    else:
        forward, expected = chain_forward, chain_backward(*inputs, *cots)
    loss = vjp_loss(forward, cots)
    for k, (gname, g, e) in enumerate(zip(NAMES[case["kind"]], got, expected)):
        idx, fd = fd_gradient(loss, inputs, k, rng)
        check.record(f"{label} {gname}: reference", *check_fd(e, idx, fd))
        elem = case["in_elems"][k]
        if case["elem"] == "f32":
            check.record(f"{label} {gname}", *check_f32(g, e))
        elif case["kind"] == "standalone" and gname == "dy":
            check.record(f"{label} {gname}", *check_rounded(g, e, elem))
        elif case["kind"] == "standalone" and gname != "dx":
            check.record(f"{label} {gname}", *check_f32(g, e))
        else:
            check.record(f"{label} {gname}",
                         *check_f32(g, e, rtol=BF16_NORMWISE[case["kind"]]))
    if case["kind"] == "chain" and case["elem"] == "bf16" and np.size(got[0]):
        control = (label, got, expected, loss, inputs)

label, got, expected, loss, inputs = control
check.control(f"{label} dx spoiled by 2^-4", check_f32(spoil(got[0], 2.0 ** -4), expected[0],
                                                       rtol=BF16_NORMWISE["chain"]))
check.control(f"{label} dfn1 spoiled by 2^-4", check_f32(spoil(got[4], 2.0 ** -4), expected[4],
                                                         rtol=BF16_NORMWISE["chain"]))
idx, fd = fd_gradient(loss, inputs, 1, np.random.default_rng(0), points=16)
bad = np.array(expected[1], np.float64)
bad.flat[idx[int(np.argmax(np.abs(fd)))]] += 1e-4 * np.max(np.abs(fd))
check.control(f"{label} reference dfn0 off by 1e-4 of max|fd|", check_fd(bad, idx, fd))
check.finish()
