"""A forward-only kernel set from today's GPU pipeline (hc_pre and hc_post; no backward yet).

Same contract as the compiler hook the cuda backend expects
(``compile_forward_kernels(key: dict, out_dir)`` writes ``kernels.cubin`` + ``manifest.json``), so
inference can run on mhc's kernels through the torch ops now, and the cache/loader/launcher are
exercised end to end with real mhc-opt output:

    python -m mhc.torch.build_cache --forward-only --n 4 --C 4096 --dtype bf16 --out DIR

The manifest is read off the host IR that ``--mhc-fuse --convert-mhc-to-gpu`` produces (before
bufferization is lowered away): each ``gpu.launch_func``'s arguments are traced back to a function
argument (an op argument) or to an allocation that is returned (an op result) or not (scratch);
the grid is ``max(ceildiv(T, K), 1)`` -> tokens_per_block K; threads from the launch. The cubin is
the gpu.binary of the full ``--mhc-gpu-pipeline`` run on the same module.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

from . import kernels

_TYPES = {"bf16": "bf16", "f16": "f16", "f32": "f32"}


def module_text(key: kernels.KernelKey) -> str:
    n, C, M, dt = key.n, key.C, key.M, _TYPES[key.dtype]
    X, H = f"tensor<?x{n}x{C}x{dt}>", f"tensor<?x{C}x{dt}>"
    P, Q, F, MX = f"tensor<?x{n}xf32>", f"tensor<?x{n}x{n}xf32>", f"tensor<{M}x{n * C}xf32>", f"tensor<?x{M}xf32>"
    f32 = lambda v: f"{float(v):.9e} : f32"   # noqa: E731
    return f"""
func.func @hc_pre(%x: {X}, %fn: {F}, %scale: tensor<3xf32>, %base: tensor<{M}xf32>) -> ({H}, {P}, {Q}, {MX}) {{
  %mix = "mhc.norm_project"(%x, %fn) <{{eps = {f32(key.eps)}}}> : ({X}, {F}) -> {MX}
  %pre, %post, %l = "mhc.split_mixes"(%mix, %scale, %base) <{{post_mult = {f32(key.post_mult)}, pre_eps = {f32(key.pre_eps)}}}> : ({MX}, tensor<3xf32>, tensor<{M}xf32>) -> ({P}, {P}, {Q})
  %comb = "mhc.sinkhorn"(%l) <{{eps = {f32(key.eps)}, iterations = {key.iterations} : i64}}> : ({Q}) -> {Q}
  %u = "mhc.pre_apply"(%x, %pre) : ({X}, {P}) -> {H}
  return %u, %post, %comb, %mix : {H}, {P}, {Q}, {MX}
}}
func.func @hc_post(%y: {H}, %x: {X}, %post: {P}, %comb: {Q}) -> {X} {{
  %xn = "mhc.post_res"(%y, %x, %post, %comb) : ({H}, {X}, {P}, {Q}) -> {X}
  return %xn : {X}
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
            elif op == "bufferization.to_buffer":
                return ("arg", int(src[len("%arg"):]))
            elif op == "memref.alloc":
                return ("alloc", v)
            else:
                raise ValueError(f"cannot trace kernel argument {v} through {op}")

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
        buffers = []
        for a in args[1:]:        # args[0] is T
            kind, what = root(a)
            if kind == "arg":
                buffers.append(arg_names[what])
            elif what in returned:
                buffers.append(returned[what])
            else:
                sname = "scratch_" + what.lstrip("%")
                shape_t = re.search(r"memref<([^>]*)>", defs[what][1]).group(1).split("x")
                scratch[sname] = {"shape": ["T" if d == "?" else int(d) for d in shape_t[:-1]],
                                  "dtype": _DTYPES[shape_t[-1]]}
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


def _decode(s: str) -> bytes:
    """An MLIR string attribute's bytes (\\XX hex escapes, \\\\ for a backslash)."""
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] == "\\":
            if s[i + 1] == "\\":
                out.append(0x5C)
                i += 2
            else:
                out.append(int(s[i + 1:i + 3], 16))
                i += 3
        else:
            out.append(ord(s[i]))
            i += 1
    return bytes(out)


def compile_forward_kernels(key: dict, out_dir) -> None:
    from mhc import compiler
    k = kernels.KernelKey.from_dict(key)
    out_dir = Path(out_dir)
    mhc_opt = compiler.mhc_opt()
    with tempfile.TemporaryDirectory(prefix="mhc-torch-") as tmp:
        src = Path(tmp) / "forward.mlir"
        src.write_text(module_text(k))
        host = compiler._run([mhc_opt, str(src), "--mhc-fuse", f"--convert-mhc-to-gpu=chip={k.chip}"])
        full = compiler._run([mhc_opt, str(src), f"--mhc-gpu-pipeline=chip={k.chip} format=bin"],
                             env=compiler._cuda_env())
    binary = re.search(r'bin = "((?:[^"\\]|\\.)*)"', full)
    if not binary:
        raise compiler.CompileError("no gpu.binary with a cubin in the pipeline's output")
    funcs = _functions(host)
    ops = {"hc_pre": launches_of(funcs["hc_pre"], kernels.OP_BUFFERS["hc_pre"][0],
                                 kernels.OP_BUFFERS["hc_pre"][1], k),
           "hc_post": launches_of(funcs["hc_post"], kernels.OP_BUFFERS["hc_post"][0],
                                  kernels.OP_BUFFERS["hc_post"][1], k)}
    in_binary = set(re.findall(r"@mhc_kernels::@(\w+)", full))
    for spec in ops.values():
        for launch in spec["launches"]:
            if launch["kernel"] not in in_binary:
                raise compiler.CompileError(f"kernel {launch['kernel']} is not in the compiled module")
    (out_dir / kernels.CUBIN_NAME).write_bytes(_decode(binary.group(1)))
    manifest = {"schema": kernels.SCHEMA, "key": k.as_dict(), "cubin": kernels.CUBIN_NAME,
                "provenance": {"builder": "mhc.torch.forward_kernels (forward only)",
                               "mhc_opt": str(mhc_opt)},
                "ops": ops}
    (out_dir / kernels.MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
