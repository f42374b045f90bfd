"""The kernel sets of the torch ``cuda`` backend, compiled by mhc (``mhc.compiler.compile_torch_kernels``).

For one key (n, C, activation dtype, chip, attributes) it writes one MLIR module with a function
per op and compiles it with ``--mhc-gpu-pipeline`` (``kernels.cubin``); the manifest is read off
the host IR that ``--mhc-fuse --convert-mhc-to-gpu`` produces from the same module: each
``gpu.launch_func``'s arguments are traced back to a function argument (an op argument), to an
allocation that is returned (an op result) or not (scratch, with its size in the symbols of the
manifest schema); grids are constants or ``max(ceildiv(T, K), 1)`` (tokens_per_block K).

The ops (kernels.OP_BUFFERS):

* ``hc_pre``, ``hc_post``: the forward of one HyperConnection (pre with its own norm_project,
  post_res alone);
* ``hc_post_backward``: post_res_grad's dy, dpost, dcomb (the "post_backward" kernel group);
* ``hc_pre_backward``: the rest of the sublayer's gradients after the sublayer's own backward
  ("pre_backward": rows, cols and params kernels; dx includes post_res's part);
* ``hc_sublayer_backward``: the whole standalone sublayer backward in one group ("backward":
  the fused kernels the benchmarks time);
* ``hc_steady_forward``: the steady-state forward of the benchmarks (pre from the previous
  mix; post_res + the next sublayer's norm_project);
* ``hc_joint_backward``: the sublayer backward after its sublayer's VJP when dy came from the
  sublayer above (the dy fold, mhc.torch.chain_pass): one rows pass reads dout, x, y and du;
* ``hc_joint_backward_lower``, ``hc_pre_backward_lower``: hc_joint_backward and hc_pre_backward
  that also compute the lower sublayer's dy from their dx (post_lower: its post), in the cols
  kernel while dx is on chip;
* ``hc_pre_mixed``, ``hc_post_project``: the two halves of that steady state, for chained
  HyperConnections (mhc.torch.modules): pre from a mix computed by the previous sublayer's post,
  and post_res fused with the next sublayer's norm_project.

The forward ops (hc_pre, hc_post, hc_pre_mixed, hc_post_project, hc_steady_forward) are compiled twice: as
they are, and as ``<op>__few_tokens`` marked ``mhc.max_tokens = FEW_TOKENS``, whose kernels take
16 tokens per block (more blocks at small T; docs/GPU.md, "Schedule"). The manifest holds the
second as the op's ``few_tokens`` variant, which the launchers use for T <= FEW_TOKENS.

    python -m mhc.torch.build_cache --n 4 --C 4096 --dtype bf16 --out DIR
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from . import kernels

_TYPES = {"bf16": "bf16", "f16": "f16", "f32": "f32"}
FORWARD_OPS = ("hc_pre", "hc_post", "hc_pre_mixed", "hc_post_project", "hc_steady_forward",
               "hc_pre_norm", "hc_pre_mixed_norm")
FEW_TOKENS = 4096      # the compiler's threshold for 16-token tiles (ForwardKernel.cpp, kFewTokens)
_FEW = "__few_tokens"


def _with_few_token_variants(text: str) -> str:
    """`text` plus, for each forward op in it, a copy named <op>__few_tokens marked
    mhc.max_tokens = FEW_TOKENS (the same body: only the schedule selection differs)."""
    extra = []
    for op in FORWARD_OPS:
        start = text.find(f"func.func @{op}(")
        if start < 0:
            continue
        end = text.index("\n}\n", start) + 3
        body = text[start:end].replace(f"@{op}(", f"@{op}{_FEW}(", 1)
        head, rest = body.split(" {\n", 1)          # the signature ends at its first " {"
        extra.append(f"{head} attributes {{mhc.max_tokens = {FEW_TOKENS} : i64}} {{\n{rest}")
    return text + "".join(extra)


def module_text(key: kernels.KernelKey, forward_only: bool = False) -> str:
    n, C, M, dt = key.n, key.C, key.M, _TYPES[key.dtype]
    X, H = f"tensor<?x{n}x{C}x{dt}>", f"tensor<?x{C}x{dt}>"
    P, Q, F, MX = f"tensor<?x{n}xf32>", f"tensor<?x{n}x{n}xf32>", f"tensor<{M}x{n * C}xf32>", f"tensor<?x{M}xf32>"
    S, B = "tensor<3xf32>", f"tensor<{M}xf32>"
    f32 = lambda v: f"{float(v):.9e} : f32"   # noqa: E731
    split_attrs = f"<{{post_mult = {f32(key.post_mult)}, pre_eps = {f32(key.pre_eps)}}}>"
    sink_attrs = f"<{{eps = {f32(key.eps)}, iterations = {key.iterations} : i64}}>"
    norm_attrs = f"<{{eps = {f32(key.eps)}}}>"
    split = (f'"mhc.split_mixes"(%mix, %scale, %base) {split_attrs} : ({MX}, {S}, {B}) '
             f'-> ({P}, {P}, {Q})')
    sinkhorn = f'"mhc.sinkhorn"(%l) {sink_attrs} : ({Q}) -> {Q}'
    text = f"""
func.func @hc_pre(%x: {X}, %fn: {F}, %scale: {S}, %base: {B}) -> ({H}, {P}, {Q}, {MX}) {{
  %mix = "mhc.norm_project"(%x, %fn) {norm_attrs} : ({X}, {F}) -> {MX}
  %pre, %post, %l = {split}
  %comb = {sinkhorn}
  %u = "mhc.pre_apply"(%x, %pre) : ({X}, {P}) -> {H}
  return %u, %post, %comb, %mix : {H}, {P}, {Q}, {MX}
}}
func.func @hc_post(%y: {H}, %x: {X}, %post: {P}, %comb: {Q}) -> {X} {{
  %xn = "mhc.post_res"(%y, %x, %post, %comb) : ({H}, {X}, {P}, {Q}) -> {X}
  return %xn : {X}
}}
"""
    if forward_only:
        return _with_few_token_variants(text)
    # The backward in the shapes --mhc-fuse groups (docs/GPU.md, "Backward kernels"); mix is
    # the forward's saved norm_project(x, fn) (mhc.saved).
    saved = '{mhc.saved = "mix"}'
    tail = f"""
  %dxb, %dpre = "mhc.pre_apply_grad"(%x, %pre, %du) : ({X}, {P}, {H}) -> ({X}, {P})
  %dl = "mhc.sinkhorn_grad"(%l, %dcomb) {sink_attrs} : ({Q}, {Q}) -> {Q}
  %dmix, %dscale, %dbase = "mhc.split_mixes_grad"(%mix, %scale, %base, %dpre, %dpost, %dl) {split_attrs} : ({MX}, {S}, {B}, {P}, {P}, {Q}) -> ({MX}, {S}, {B})
  %dxc, %dfn = "mhc.norm_project_grad"(%x, %fn, %dmix) {norm_attrs} : ({X}, {F}, {MX}) -> ({X}, {F})
  %dxab = arith.addf %dxa, %dxb : {X}
  %dx = arith.addf %dxab, %dxc : {X}"""
    # The dy fold: the lower sublayer's post_res_grad for its dy only, from this dx (its y, x
    # and comb are not read: stand-ins of the right shapes).
    lower = f"""
  %c0_lower = arith.constant 0 : index
  %T_lower = tensor.dim %x, %c0_lower : {X}
  %comb_lower = tensor.empty(%T_lower) : {Q}
  %dy_lower, %dxl_, %dpl_, %dcl_ = "mhc.post_res_grad"(%du, %x, %post_lower, %comb_lower, %dx) : ({H}, {X}, {P}, {Q}, {X}) -> ({H}, {X}, {P}, {Q})"""
    # The two shapes of the rest of a sublayer's backward: after hc_post_backward (dpost, dcomb
    # given; post_res_grad kept for its dx, which does not read y) or whole (y given).
    pre_side = f"""
  %pre, %post, %l = {split}
  %comb = {sinkhorn}
  // post_res_grad for its dx only: that part does not read y.
  %c0 = arith.constant 0 : index
  %T = tensor.dim %x, %c0 : {X}
  %y = tensor.empty(%T) : {H}
  %dy_, %dxa, %dpost_, %dcomb_ = "mhc.post_res_grad"(%y, %x, %post, %comb, %dxn) : ({H}, {X}, {P}, {Q}, {X}) -> ({H}, {X}, {P}, {Q}){tail}"""
    whole = f"""
  %pre, %post, %l = {split}
  %comb = {sinkhorn}
  %dy, %dxa, %dpost, %dcomb = "mhc.post_res_grad"(%y, %x, %post, %comb, %dxn) : ({H}, {X}, {P}, {Q}, {X}) -> ({H}, {X}, {P}, {Q}){tail}"""
    text += f"""
func.func @hc_post_backward(%y: {H}, %x: {X}, %post: {P}, %comb: {Q}, %dxn: {X}) -> ({H}, {P}, {Q}) {{
  %dy, %dx, %dpost, %dcomb = "mhc.post_res_grad"(%y, %x, %post, %comb, %dxn) : ({H}, {X}, {P}, {Q}, {X}) -> ({H}, {X}, {P}, {Q})
  return %dy, %dpost, %dcomb : {H}, {P}, {Q}
}}
func.func @hc_pre_backward(%x: {X}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved}, %du: {H},
                           %dpost: {P}, %dcomb: {Q}, %dxn: {X}) -> ({X}, {F}, {S}, {B}) {{{pre_side}
  return %dx, %dfn, %dscale, %dbase : {X}, {F}, {S}, {B}
}}
func.func @hc_sublayer_backward(%x: {X}, %y: {H}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved},
                                %du: {H}, %dxn: {X}) -> ({X}, {H}, {F}, {S}, {B}) {{{whole}
  return %dx, %dy, %dfn, %dscale, %dbase : {X}, {H}, {F}, {S}, {B}
}}
func.func @hc_joint_backward(%x: {X}, %y: {H}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved},
                             %du: {H}, %dxn: {X}) -> ({X}, {F}, {S}, {B}) {{{whole}
  return %dx, %dfn, %dscale, %dbase : {X}, {F}, {S}, {B}
}}
func.func @hc_joint_backward_lower(%x: {X}, %y: {H}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved},
                                   %du: {H}, %dxn: {X}, %post_lower: {P}) -> ({X}, {F}, {S}, {B}, {H}) {{{whole}{lower}
  return %dx, %dfn, %dscale, %dbase, %dy_lower : {X}, {F}, {S}, {B}, {H}
}}
func.func @hc_pre_backward_lower(%x: {X}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved}, %du: {H},
                                 %dpost: {P}, %dcomb: {Q}, %dxn: {X}, %post_lower: {P}) -> ({X}, {F}, {S}, {B}, {H}) {{{pre_side}{lower}
  return %dx, %dfn, %dscale, %dbase, %dy_lower : {X}, {F}, {S}, {B}, {H}
}}
func.func @hc_pre_mixed(%x: {X}, %mix: {MX}, %scale: {S}, %base: {B}) -> ({H}, {P}, {Q}) {{
  %pre, %post, %l = {split}
  %comb = {sinkhorn}
  %u = "mhc.pre_apply"(%x, %pre) : ({X}, {P}) -> {H}
  return %u, %post, %comb : {H}, {P}, {Q}
}}
func.func @hc_post_project(%y: {H}, %x: {X}, %post: {P}, %comb: {Q}, %fn: {F}) -> ({X}, {MX}) {{
  %xn = "mhc.post_res"(%y, %x, %post, %comb) : ({H}, {X}, {P}, {Q}) -> {X}
  %mix2 = "mhc.norm_project"(%xn, %fn) {norm_attrs} : ({X}, {F}) -> {MX}
  return %xn, %mix2 : {X}, {MX}
}}
func.func @hc_steady_forward(%x: {X}, %mix: {MX}, %scale: {S}, %base: {B}, %y: {H}, %fn: {F}) -> ({H}, {X}, {MX}) {{
  %pre, %post, %l = {split}
  %comb = {sinkhorn}
  %u = "mhc.pre_apply"(%x, %pre) : ({X}, {P}) -> {H}
  %xn = "mhc.post_res"(%y, %x, %post, %comb) : ({H}, {X}, {P}, {Q}) -> {X}
  %mix2 = "mhc.norm_project"(%xn, %fn) {norm_attrs} : ({X}, {F}) -> {MX}
  return %u, %xn, %mix2 : {H}, {X}, {MX}
}}
"""
    if key.norm_eps is not None:
        text += _norm_ops(key, X, H, P, Q, F, MX, S, B, split, sinkhorn, tail, lower, pre_side, whole)
    return _with_few_token_variants(text)


def _norm_ops(key, X, H, P, Q, F, MX, S, B, split, sinkhorn, tail, lower, pre_side, whole) -> str:
    """The *_norm ops (docs/PreNorm.md): the sublayer's pre-norm o = rms_norm(u, weight) in the pre
    kernel, and in the backward groups its gradient from o's cotangent g, u made again from x and
    the recomputed pre (as --mhc-generate-backward writes it under save=mixes)."""
    W = f"tensor<{key.C}x{_TYPES[key.dtype]}>"
    rms = f"<{{eps = {float(key.norm_eps):.9e} : f32}}>"
    norm = f"""
  %o = "mhc.rms_norm"(%u, %w) {rms} : ({H}, {W}) -> {H}"""
    grad = f"""
  %u = "mhc.pre_apply"(%x, %pre) : ({X}, {P}) -> {H}
  %du, %dw = "mhc.rms_norm_grad"(%u, %w, %g) {rms} : ({H}, {W}, {H}) -> ({H}, {W})"""
    # The lower sublayer's post_res_grad takes a stand-in y of [T, C]: g (du is made in the group).
    lower_g = lower.replace('"mhc.post_res_grad"(%du,', '"mhc.post_res_grad"(%g,')
    pre_side_g = pre_side.replace(tail, grad + tail)
    whole_g = whole.replace(tail, grad + tail)
    grads = f"%dx, %dfn, %dscale, %dbase, %dw : {X}, {F}, {S}, {B}, {W}"
    grads_lower = f"%dx, %dfn, %dscale, %dbase, %dw, %dy_lower : {X}, {F}, {S}, {B}, {W}, {H}"
    saved = '{mhc.saved = "mix"}'
    project = f'"mhc.norm_project"(%x, %fn) <{{eps = {float(key.eps):.9e} : f32}}>'
    return f"""
func.func @hc_pre_norm(%x: {X}, %fn: {F}, %scale: {S}, %base: {B}, %w: {W}) -> ({H}, {P}, {Q}, {MX}) {{
  %mix = {project} : ({X}, {F}) -> {MX}
  %pre, %post, %l = {split}
  %comb = {sinkhorn}
  %u = "mhc.pre_apply"(%x, %pre) : ({X}, {P}) -> {H}{norm}
  return %o, %post, %comb, %mix : {H}, {P}, {Q}, {MX}
}}
func.func @hc_pre_mixed_norm(%x: {X}, %mix: {MX}, %scale: {S}, %base: {B}, %w: {W}) -> ({H}, {P}, {Q}) {{
  %pre, %post, %l = {split}
  %comb = {sinkhorn}
  %u = "mhc.pre_apply"(%x, %pre) : ({X}, {P}) -> {H}{norm}
  return %o, %post, %comb : {H}, {P}, {Q}
}}
func.func @hc_pre_backward_norm(%x: {X}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved}, %w: {W},
                                %g: {H}, %dpost: {P}, %dcomb: {Q}, %dxn: {X}) -> ({X}, {F}, {S}, {B}, {W}) {{{pre_side_g}
  return {grads}
}}
func.func @hc_pre_backward_lower_norm(%x: {X}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved}, %w: {W},
                                      %g: {H}, %dpost: {P}, %dcomb: {Q}, %dxn: {X}, %post_lower: {P}) -> ({X}, {F}, {S}, {B}, {W}, {H}) {{{pre_side_g}{lower_g}
  return {grads_lower}
}}
func.func @hc_joint_backward_norm(%x: {X}, %y: {H}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved},
                                  %w: {W}, %g: {H}, %dxn: {X}) -> ({X}, {F}, {S}, {B}, {W}) {{{whole_g}
  return {grads}
}}
func.func @hc_joint_backward_lower_norm(%x: {X}, %y: {H}, %fn: {F}, %scale: {S}, %base: {B}, %mix: {MX} {saved},
                                        %w: {W}, %g: {H}, %dxn: {X}, %post_lower: {P}) -> ({X}, {F}, {S}, {B}, {W}, {H}) {{{whole_g}{lower_g}
  return {grads_lower}
}}
"""


_DEF = re.compile(r"^\s*(%[\w.]+)(?::\d+)? = ([\w.]+)\s*(.*)$")
_LAUNCH = re.compile(r"gpu\.launch_func\s+@mhc_kernels::@(\w+) blocks in \((\S+), (\S+), (\S+)\) "
                     r"threads in \((\S+), (\S+), (\S+)\)\s+args\((.*)\)")
_DTYPES = {"bf16": "bf16", "f16": "f16", "f32": "f32", "f64": "f64", "i32": "i32", "i64": "i64"}


def _functions(ir: str):
    """{name: body lines} of the func.funcs in the host IR."""
    out, name = {}, None
    for line in ir.splitlines():
        m = re.match(r"\s*func\.func @(\w+)\(", line)
        if m:
            name = m.group(1)
            out[name] = [line]
        elif name:
            out[name].append(line)
            if line.strip() == "}" and line.startswith("  }"):
                name = None
    return out


def launches_of(lines, arg_names, result_names, key: kernels.KernelKey):
    """The manifest entry of one function: launches with their buffers, plus scratch."""
    defs, consts, returns = {}, {}, []
    for line in lines:
        m = _DEF.match(line)
        if m:
            defs[m.group(1)] = (m.group(2), m.group(3).strip())
            if m.group(2) == "arith.constant":
                c = re.match(r"(-?\d+) : index", m.group(3))
                if c:
                    consts[m.group(1)] = int(c.group(1))
        r = re.match(r"\s*return (.*?) :", line)
        if r:
            returns = [v.strip() for v in r.group(1).split(",")]
    returned = {}   # alloc -> result name
    for i, v in enumerate(returns):
        op, rest = defs[v]
        if op != "bufferization.to_tensor":
            raise ValueError(f"result {i} is not a to_tensor of an allocation: {op}")
        returned[rest.split()[0]] = result_names[i]

    def root(v):
        while True:
            op, rest = defs[v]
            src = rest.split()[0] if rest.split() else ""
            if op in ("memref.collapse_shape", "memref.cast", "memref.expand_shape"):
                v = src
            elif op == "bufferization.to_buffer" and src.startswith("%arg"):
                return ("arg", int(src[len("%arg"):]))
            elif op in ("bufferization.to_buffer", "bufferization.to_tensor"):
                v = src   # a kernel's output read by a later kernel of the function
            elif op == "memref.alloc":
                return ("alloc", v)
            else:
                raise ValueError(f"cannot trace kernel argument {v} through {op}")

    # Every launch's first argument is the token count T = 1 * (the token dim).
    token_values = set()
    for line in lines:
        m = _LAUNCH.search(line)
        if m:
            t = m.group(8).split(", ")[0].split(":")[0].strip()
            token_values.add(t)
            op, rest = defs[t]
            operands = [a.strip() for a in rest.split(":")[0].split(",")]
            if op == "arith.muli" and consts.get(operands[0]) == 1:
                token_values.add(operands[1])

    def factors(v, T):
        """A size value as a product of manifest symbols ("T", "blocks:K", integers)."""
        if v in token_values:
            return ["T"]
        if v in consts:
            return [consts[v]]
        op, rest = defs[v]
        operands = [a.strip() for a in rest.split(":")[0].split(",")]
        if op == "arith.muli":
            return factors(operands[0], T) + factors(operands[1], T)
        if op == "arith.maxui":
            op2, rest2 = defs[operands[0]]
            inner = [a.strip() for a in rest2.split(":")[0].split(",")]
            if op2 == "arith.ceildivui" and inner[0] in token_values and operands[1] in consts:
                return [f"blocks:{consts[inner[1]]}"]
        raise ValueError(f"cannot express the size {v} ({op}) in manifest symbols")

    def scratch_shape(alloc, T):
        """The shape of a scratch allocation: static dims as integers, dynamic ones as symbols."""
        op, rest = defs[alloc]
        sizes = re.match(r"\(([^)]*)\)", rest)
        dyn = [a.strip() for a in sizes.group(1).split(",")] if sizes and sizes.group(1) else []
        dims = re.search(r"memref<([^>]*)>", rest).group(1).split("x")
        shape = []
        for d in dims[:-1]:
            shape += factors(dyn.pop(0), T) if d == "?" else [int(d)]
        return shape, _DTYPES[dims[-1]]

    def dim_of(v):
        if v in consts:
            return ("x", consts[v])
        op, rest = defs[v]
        if op == "arith.maxui":
            inner = rest.split(",")[0].strip()
            op2, rest2 = defs[inner]
            if op2 == "arith.ceildivui":
                return ("tokens_per_block", consts[rest2.split(",")[1].split(":")[0].strip()])
        raise ValueError(f"grid dimension {v} is neither a constant nor max(ceildiv(T, K), 1)")

    scratch, launches = {}, []
    for line in lines:
        m = _LAUNCH.search(line)
        if not m:
            continue
        name = m.group(1)
        gx, gy, gz = (dim_of(v) for v in m.group(2, 3, 4))
        block = [consts[v] for v in m.group(5, 6, 7)]
        args = [a.split(":")[0].strip() for a in m.group(8).split(", ")]
        T = args[0]
        buffers = []
        for a in args[1:]:        # args[0] is T
            kind, what = root(a)
            if kind == "arg":
                buffers.append(arg_names[what])
            elif what in returned:
                buffers.append(returned[what])
            else:
                sname = "scratch_" + what.lstrip("%")
                shape, dtype = scratch_shape(what, T)
                scratch[sname] = {"shape": shape, "dtype": dtype}
                buffers.append(sname)
        grid = {gx[0]: gx[1]}
        for axis, d in (("y", gy), ("z", gz)):
            if d[0] != "x":
                raise ValueError(f"{name}: grid {axis} depends on T")
            grid[axis] = d[1]
        launches.append({"kernel": name, "block": block, "grid": grid, "smem": 0, "buffers": buffers})
    spec = {"launches": launches}
    if scratch:
        spec["scratch"] = scratch
    return spec


def compile_kernels(key: dict, out_dir, forward_only: bool = False, edit_schedules=None) -> None:
    """Writes kernels.cubin and manifest.json of `key` into out_dir (the contract of
    ``mhc.compiler.compile_torch_kernels``); ``forward_only``: hc_pre and hc_post alone.
    ``edit_schedules``: a function from the fused IR with its chosen ``#mhc.schedule``s (after
    ``--mhc-fuse --mhc-select-schedule``) to the IR to compile, e.g. another schedule to time."""
    from mhc import compiler
    k = kernels.KernelKey.from_dict(key)
    out_dir = Path(out_dir)
    mhc_opt = compiler.mhc_opt()
    with tempfile.TemporaryDirectory(prefix="mhc-torch-") as tmp:
        src = Path(tmp) / "kernels.mlir"
        src.write_text(module_text(k, forward_only))
        fuse, pipeline = ["--mhc-fuse"], f"--mhc-gpu-pipeline=chip={k.chip} format=bin"
        if edit_schedules:
            fused = compiler._run([mhc_opt, str(src), "--mhc-fuse",
                                   f"--mhc-select-schedule=chip={k.chip}"])
            src.write_text(edit_schedules(fused))
            fuse, pipeline = [], pipeline + " fuse=0"     # already fused (a second --mhc-fuse would be a no-op)
        host = compiler._run([mhc_opt, str(src), *fuse, f"--convert-mhc-to-gpu=chip={k.chip}"])
        full = compiler._run([mhc_opt, str(src), pipeline], env=compiler._cuda_env())
    binary = re.search(r'bin = "((?:[^"\\]|\\.)*)"', full)
    if not binary:
        raise compiler.CompileError("no gpu.binary with a cubin in the pipeline's output")
    funcs = _functions(host)
    names = ["hc_pre", "hc_post"] + ([] if forward_only else [
        "hc_post_backward", "hc_pre_backward", "hc_sublayer_backward", "hc_steady_forward",
        "hc_pre_mixed", "hc_post_project", "hc_joint_backward", "hc_joint_backward_lower",
        "hc_pre_backward_lower"])
    if k.norm_eps is not None and not forward_only:
        names += kernels.NORM_OPS
    ops = {op: launches_of(funcs[op], *kernels.OP_BUFFERS[op], k) for op in names}
    for op in FORWARD_OPS:
        if op in ops:
            few = launches_of(funcs[op + _FEW], *kernels.OP_BUFFERS[op], k)
            ops[op]["few_tokens"] = {"max_T": FEW_TOKENS, **few}
    in_binary = set(re.findall(r"@mhc_kernels::@(\w+)", full))
    for spec in ops.values():
        for launch in kernels.all_launches(spec):
            if launch["kernel"] not in in_binary:
                raise compiler.CompileError(f"kernel {launch['kernel']} is not in the compiled module")
    (out_dir / kernels.CUBIN_NAME).write_bytes(compiler.decode_mlir_string(binary.group(1)))
    manifest = {"schema": kernels.SCHEMA, "key": k.as_dict(), "cubin": kernels.CUBIN_NAME,
                "provenance": {"builder": "mhc.torch.kernel_build" + (" (forward only)" if forward_only else ""),
                               "mhc_opt": str(mhc_opt)},
                "ops": ops}
    (out_dir / kernels.MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))


def compile_forward_kernels(key: dict, out_dir) -> None:
    """hc_pre and hc_post only (inference)."""
    compile_kernels(key, out_dir, forward_only=True)
