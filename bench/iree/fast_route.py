"""The IREE fast route: mhc's own fused kernels inside the IREE program.

From a model rewritten by --mhc-hyperconnect:

  1. `--mhc-fuse --mhc-select-schedule --mhc-outline-kernels`: every kernel root becomes a
     private function `@mhc_<kind>_<i>` (arguments = the kernel's inputs, results = its
     outputs, `mhc.tokens` = T) called where the root was;
  2. the same with `kernels-only`, through `--mhc-gpu-pipeline="format=isa fuse=0
     iree-kernels=1"`: one PTX module with every kernel `k` and its IREE entry `k_iree`
     (bindings as pointers, then i32 push constants T and each buffer's element count);
  3. each outlined function's body becomes a `flow.dispatch` of `@mhc_kernels::@k_iree`, an
     external executable (`hal.executable.source` with the PTX as its object, one export per
     kernel: the pipeline layout, the block size and the grid max(ceil(T / tile_tokens), 1)
     from the kernel's #mhc.schedule); IREE inlines the functions and compiles the rest.

Limits: static token counts (`mhc.tokens`), forward kernels (one kernel per group), CUDA.
"""
import os
import re
import subprocess
from pathlib import Path

HEADER = re.compile(r"^  func\.func private @(mhc_[a-z_]+_\d+)\((.*)\) -> (.*?)(?: attributes \{(.*)\})? \{$")
TENSOR = re.compile(r"tensor<([0-9x]*?)x?([a-z0-9]+)>")


def _run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"failed: {' '.join(map(str, cmd))}\n{p.stderr[-3000:]}")
    return p.stdout


def _split_types(text):
    """Top-level comma-separated types ("(a, b)" or "a")."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "<([{"
        depth -= ch in ">)]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _numel(tensor_type):
    dims = tensor_type[len("tensor<"):].split("x")[:-1]
    n = 1
    for d in dims:
        n *= int(d)
    return n


def ptx_of(lowered):
    """The PTX text of the gpu.binary @mhc_kernels (format=isa)."""
    m = re.search(r'gpu\.binary @mhc_kernels .*?assembly = "((?:[^"\\]|\\.)*)"', lowered)
    if not m:
        raise RuntimeError("no gpu.binary @mhc_kernels with PTX in the lowered module")
    return re.sub(r"\\([0-9A-Fa-f]{2})", lambda x: chr(int(x.group(1), 16)), m.group(1))


def outline(mhc_opt, rewritten_path, chip="sm_90"):
    """(module with calls of outlined kernel functions, PTX of the kernels with IREE entries)."""
    # One kernel per group: no fn prepare kernel (its scratch buffer has no binding here).
    schedule = [mhc_opt, rewritten_path, "--mhc-fuse", "--mhc-select-schedule=prepare-fn=false"]
    calls = _run([*schedule, "--mhc-outline-kernels"])
    kernels = _run([*schedule, "--mhc-outline-kernels=kernels-only"])
    lowered = _run([mhc_opt, "-", f"--mhc-gpu-pipeline=chip={chip} format=isa fuse=0 iree-kernels=1"],
                   input=kernels, env=dict(os.environ, CUDA_HOME=os.environ.get("CUDA_HOME", "/usr/local/cuda")))
    return calls, ptx_of(lowered)


def dispatch_module(calls_text, ptx_file, executable_target):
    """`calls_text` with every outlined function dispatching mhc's kernel through IREE."""
    lines = calls_text.split("\n")
    out, exports, i = [], [], 0
    while i < len(lines):
        m = HEADER.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        name, args, results, attrs = m.groups()
        end = lines.index("  }", i)
        body = "\n".join(lines[i + 1:end])
        sched = re.search(r"tile_tokens = (\d+).*?threads = (\d+)", body)
        tokens = re.search(r"mhc\.tokens = (\d+)", attrs or "")
        if not sched or not tokens:
            raise RuntimeError(f"@{name}: needs a #mhc.schedule and a static token count (mhc.tokens)")
        tile, threads, tokens = int(sched.group(1)), int(sched.group(2)), int(tokens.group(1))
        arg_names = re.findall(r"(%arg\d+): ", args)
        arg_types = [t.split(": ", 1)[1] for t in _split_types(args)]
        res_types = _split_types(results)
        counts = [_numel(t) for t in arg_types + res_types]
        if max(counts + [tokens]) >= 2**32:
            raise RuntimeError(f"@{name}: T and the element counts are 32-bit push constants")
        ordinal = len(exports)
        bindings = (["#hal.pipeline.binding<storage_buffer, ReadOnly>"] * len(arg_types)
                    + ["#hal.pipeline.binding<storage_buffer>"] * len(res_types))
        grid = max(-(-tokens // tile), 1)
        exports.append(
            f"    hal.executable.export public @{name}_iree ordinal({ordinal})\n"
            f"        layout(#hal.pipeline.layout<constants = {1 + len(counts)}, bindings = [{', '.join(bindings)}]>)\n"
            f"        count(%device: !hal.device) -> (index, index, index) {{\n"
            f"      %x = arith.constant {grid} : index\n"
            f"      %one = arith.constant 1 : index\n"
            f"      hal.return %x, %one, %one : index, index, index\n"
            f"    }} <workgroup_size = [{threads} : index, 1 : index, 1 : index]>")
        consts = [f"    %tokens = arith.constant {tokens} : i32"]
        consts += [f"    %numel{k} = arith.constant {n} : i32" for k, n in enumerate(counts)]
        operands = ["%tokens"] + [f"%numel{k}" for k in range(len(counts))] + arg_names
        operand_types = ["i32"] * (1 + len(counts)) + arg_types
        result = "%r" if len(res_types) == 1 else f"%r:{len(res_types)}"
        returned = ["%r"] if len(res_types) == 1 else [f"%r#{k}" for k in range(len(res_types))]
        out.append(lines[i])
        out += consts
        out.append(f"    {result} = flow.dispatch @mhc_kernels::@{name}_iree({', '.join(operands)}) : "
                   f"({', '.join(operand_types)}) -> ({', '.join(res_types)})")
        out.append(f"    return {', '.join(returned)} : {', '.join(res_types)}")
        out.append("  }")
        i = end + 1
    text = "\n".join(out)
    source = ("  hal.executable.source private @mhc_kernels <{objects = #hal.executable.objects<{"
              f"#mhc_target = [#hal.executable.object<{{path = \"{ptx_file}\"}}>]}}>}}> {{\n"
              + "\n".join(exports) + "\n  }\n")
    head = text.index("{", text.index("module")) + 1
    return f"#mhc_target = {executable_target}\n" + text[:head] + "\n" + source + text[head:]
