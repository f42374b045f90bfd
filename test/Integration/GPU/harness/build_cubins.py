#!/usr/bin/env python3
"""Builds the cubins that test/Integration/GPU/harness/check_kernels.py loads on the GPU.

For every (n, C, dtype) it writes one mhc program that uses every op, compiles
it with `mhc-opt --mhc-gpu-pipeline="format=bin"` twice (fused and fuse=0:
every op its own kernel) and extracts the cubin bytes from the gpu.binary.
Also builds the steady-state sublayer (pre without norm_project + post with the
next norm_project) that is timed. Output: <out>/<name>.cubin + manifest.json,
which records each kernel's schedule as the compiler wrote it into the IR
(#mhc.schedule: tokens per block, threads, ...), so that check_kernels.py
launches every kernel with the compiler's own geometry. One kernel per group
(prepare-fn=false): the projection kernels read fn themselves, the path of
hand-written single schedules and the IREE fast route; the fn prepare
kernel's path (every mhc.torch kernel set, few-token variants included) is
checked through those sets (check_backward.py, bench/check_torch_backend.py).

  python3 test/Integration/GPU/harness/build_cubins.py --mhc-opt build-gpu/bin/mhc-opt --out .gpu-carry
"""
import argparse, json, os, re, subprocess, sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..",
                                "python"))
from mhc.compiler import decode_mlir_string  # noqa: E402

DT = {"bf16": "bf16", "f16": "f16", "f32": "f32"}


def every_op_program(n, C, dt):
    M = n * n + 2 * n
    K = n * C
    X = f"tensor<?x{n}x{C}x{dt}>"
    H = f"tensor<?x{C}x{dt}>"
    return f"""
func.func @every_op(%x: {X}, %fn: tensor<{M}x{K}xf32>, %scale: tensor<3xf32>, %base: tensor<{M}xf32>,
                    %y: {H}, %h: {H})
    -> (tensor<?x{M}xf32>, tensor<?x{n}xf32>, tensor<?x{n}xf32>, tensor<?x{n}x{n}xf32>, tensor<?x{n}x{n}xf32>,
        {H}, {X}, tensor<?x{M}xf32>, {X}, {H}) {{
  %mix = mhc.norm_project %x, %fn : {X}, tensor<{M}x{K}xf32> -> tensor<?x{M}xf32>
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x{M}xf32>, tensor<3xf32>, tensor<{M}xf32> -> tensor<?x{n}xf32>, tensor<?x{n}xf32>, tensor<?x{n}x{n}xf32>
  %c = mhc.sinkhorn %l : tensor<?x{n}x{n}xf32>
  %u = mhc.pre_apply %x, %pre : {X}, tensor<?x{n}xf32> -> {H}
  %xn = mhc.post_res %y, %x, %post, %c : {H}, {X}, tensor<?x{n}xf32>, tensor<?x{n}x{n}xf32> -> {X}
  %mix2 = mhc.norm_project %xn, %fn : {X}, tensor<{M}x{K}xf32> -> tensor<?x{M}xf32>
  %xe = mhc.expand %h, streams = {n} : {H} -> {X}
  %hc = mhc.collapse %x : {X} -> {H}
  return %mix, %pre, %post, %l, %c, %u, %xn, %mix2, %xe, %hc
    : tensor<?x{M}xf32>, tensor<?x{n}xf32>, tensor<?x{n}xf32>, tensor<?x{n}x{n}xf32>, tensor<?x{n}x{n}xf32>,
      {H}, {X}, tensor<?x{M}xf32>, {X}, {H}
}}
"""


def steady_program(n, C, dt):
    """One sublayer in steady state: pre(l) from the mix the previous post
    kernel produced, then post(l) + norm_project for sublayer l+1."""
    M = n * n + 2 * n
    K = n * C
    X = f"tensor<?x{n}x{C}x{dt}>"
    H = f"tensor<?x{C}x{dt}>"
    return f"""
func.func @steady(%x: {X}, %mix: tensor<?x{M}xf32>, %scale: tensor<3xf32>, %base: tensor<{M}xf32>,
                  %y: {H}, %fn: tensor<{M}x{K}xf32>) -> ({H}, {X}, tensor<?x{M}xf32>) {{
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x{M}xf32>, tensor<3xf32>, tensor<{M}xf32> -> tensor<?x{n}xf32>, tensor<?x{n}xf32>, tensor<?x{n}x{n}xf32>
  %c = mhc.sinkhorn %l : tensor<?x{n}x{n}xf32>
  %u = mhc.pre_apply %x, %pre : {X}, tensor<?x{n}xf32> -> {H}
  %xn = mhc.post_res %y, %x, %post, %c : {H}, {X}, tensor<?x{n}xf32>, tensor<?x{n}x{n}xf32> -> {X}
  %mix2 = mhc.norm_project %xn, %fn : {X}, tensor<{M}x{K}xf32> -> tensor<?x{M}xf32>
  return %u, %xn, %mix2 : {H}, {X}, tensor<?x{M}xf32>
}}
"""


def prenorm_program(n, C, dt, wdt):
    """The sublayer's pre-norm (mhc.rms_norm, docs/PreNorm.md): in the pre group with u on chip
    (@prenorm), with u also returned (@prenorm_u: pass 1 writes it), alone on an input u
    (@norm_alone), and the pre kernel without it (@pre_only: the baseline of the timing); the
    same from a given mix (the steady state's kernel: @mixed_norm, @mixed_only)."""
    M = n * n + 2 * n
    K = n * C
    X = f"tensor<?x{n}x{C}x{dt}>"
    H = f"tensor<?x{C}x{dt}>"
    W = f"tensor<{C}x{wdt}>"
    head = f"""%mix = mhc.norm_project %x, %fn : {X}, tensor<{M}x{K}xf32> -> tensor<?x{M}xf32>
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x{M}xf32>, tensor<3xf32>, tensor<{M}xf32> -> tensor<?x{n}xf32>, tensor<?x{n}xf32>, tensor<?x{n}x{n}xf32>
  %c = mhc.sinkhorn %l : tensor<?x{n}x{n}xf32>
  %u = mhc.pre_apply %x, %pre : {X}, tensor<?x{n}xf32> -> {H}"""
    norm = f"%o = mhc.rms_norm %u, %w : {H}, {W} -> {H}"
    args = f"%x: {X}, %fn: tensor<{M}x{K}xf32>, %scale: tensor<3xf32>, %base: tensor<{M}xf32>, %w: {W}"
    # The steady state's pre kernel: coefficients from the mix the previous post kernel made.
    mixed_args = f"%mix: tensor<?x{M}xf32>, %scale: tensor<3xf32>, %base: tensor<{M}xf32>, %x: {X}, %w: {W}"
    mixed = "\n  ".join(head.split("\n  ")[1:])
    return f"""
func.func @prenorm({args}) -> (tensor<?x{n}xf32>, {H}) {{
  {head}
  {norm}
  return %pre, %o : tensor<?x{n}xf32>, {H}
}}
func.func @prenorm_u({args}) -> (tensor<?x{n}xf32>, {H}, {H}) {{
  {head}
  {norm}
  return %pre, %u, %o : tensor<?x{n}xf32>, {H}, {H}
}}
func.func @norm_alone(%u: {H}, %w: {W}) -> {H} {{
  %o = mhc.rms_norm %u, %w {{eps = 1.0e-03 : f32}} : {H}, {W} -> {H}
  return %o : {H}
}}
func.func @pre_only({args}) -> (tensor<?x{n}xf32>, {H}) {{
  {head}
  return %pre, %u : tensor<?x{n}xf32>, {H}
}}
func.func @mixed_norm({mixed_args}) -> (tensor<?x{n}xf32>, {H}) {{
  {mixed}
  {norm}
  return %pre, %o : tensor<?x{n}xf32>, {H}
}}
func.func @mixed_only({mixed_args}) -> (tensor<?x{n}xf32>, {H}) {{
  {mixed}
  return %pre, %u : tensor<?x{n}xf32>, {H}
}}
"""


SCHEDULE = re.compile(r"#mhc\.schedule<tile_tokens = (\d+), chunk_columns = (\d+), threads = (\d+), "
                      r"vector_width = (\d+), blocks_per_sm = (\d+)>")
FIELDS = ("tile_tokens", "chunk_columns", "threads", "vector_width", "blocks_per_sm")


def schedules(mhc_opt, path_mlir, fuse, tt=0):
    """The schedule of every kernel root, in kernel order, as
    --mhc-select-schedule writes it into the IR (the harness launches each
    kernel with the tile and block size the compiler chose)."""
    passes = (["--mhc-fuse"] if fuse else []) + [
        "--mhc-select-schedule=prepare-fn=false" + (f" tile-tokens={tt}" if tt else "")]
    r = subprocess.run([mhc_opt, path_mlir, *passes], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{path_mlir}: {r.stderr[:2000]}")
    return [dict(zip(FIELDS, map(int, m))) for m in SCHEDULE.findall(r.stdout)]


def compile_one(mhc_opt, src, path_mlir, fuse, fmt="bin", tt=0):
    """(binary, kernel names in launch order, {kernel name: schedule})."""
    with open(path_mlir, "w") as f:
        f.write(src)
    opts = f"format={fmt} prepare-fn=false" + ("" if fuse else " fuse=0") + (f" tile-tokens={tt}" if tt else "")
    r = subprocess.run([mhc_opt, path_mlir, f"--mhc-gpu-pipeline={opts}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{path_mlir}: {r.stderr[:2000]}")
    m = re.search(r'(?:bin|assembly) = "((?:[^"\\]|\\.)*)"', r.stdout)
    names = re.findall(r"@mhc_kernels::@(\w+)", r.stdout)
    scheds = schedules(mhc_opt, path_mlir, fuse, tt)
    if len(scheds) != len(names):
        raise RuntimeError(f"{path_mlir}: {len(names)} kernels but {len(scheds)} schedules")
    return decode_mlir_string(m.group(1)), names, dict(zip(names, scheds))


def jobs(quick=False):
    """(name, program, fuse, meta) of every cubin the kernel check loads."""
    configs = []
    Cs = [100, 1280, 2560, 4096, 7168]
    ns = [1, 2, 4, 8]
    for dt in ["bf16", "f32"]:
        for n in ns:
            for C in Cs:
                configs.append((n, C, dt))
    configs += [(4, 4096, "f16"), (4, 100, "f16"), (3, 520, "bf16")]
    if quick:
        configs = [(4, 4096, "bf16"), (4, 100, "f32"), (1, 1280, "bf16"), (8, 2560, "f32")]
    out = []
    for (n, C, dt) in configs:
        for fuse in (1, 0):
            name = f"every_n{n}_c{C}_{dt}_{'fused' if fuse else 'single'}"
            out.append((name, every_op_program(n, C, dt), fuse, dict(kind="every", n=n, C=C, dt=dt, fused=fuse)))
    for (n, C, dt) in [(4, 4096, "bf16"), (4, 2560, "bf16"), (4, 7168, "bf16"), (4, 4096, "f32")]:
        out.append((f"steady_n{n}_c{C}_{dt}", steady_program(n, C, dt), 1, dict(kind="steady", n=n, C=C, dt=dt, fused=1)))
    prenorm = [(4, 4096, "bf16", "bf16"), (4, 100, "f32", "f32"), (2, 100, "bf16", "f32")]
    if not quick:
        prenorm += [(2, 1000, "bf16", "f32"), (4, 7168, "bf16", "bf16"), (4, 2560, "bf16", "bf16"), (4, 4096, "f16", "f16"),
                    (3, 520, "f32", "f32")]
    for (n, C, dt, wdt) in prenorm:
        out.append((f"prenorm_n{n}_c{C}_{dt}_w{wdt}", prenorm_program(n, C, dt, wdt), 1,
                    dict(kind="prenorm", n=n, C=C, dt=dt, wdt=wdt, fused=1)))
    # The tile-size knob, for the record (default is 32 for n = 4).
    for tt in (16,):  # the tile-tokens knob (64 no longer fits the 48 KB tile)
        out.append((f"steady_n4_c4096_bf16_tt{tt}", steady_program(4, 4096, "bf16"), 1,
                    dict(kind="steady", n=4, C=4096, dt="bf16", fused=1, tt=tt)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mhc-opt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kinds", default="", help="only these kinds (comma-separated: every, "
                                                "steady, prenorm); default all")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    todo = jobs(a.quick)
    if a.kinds:
        todo = [j for j in todo if j[3]["kind"] in a.kinds.split(",")]
    manifest = {}

    def run(job):
        name, src, fuse, meta = job
        blob, names, scheds = compile_one(a.mhc_opt, src, os.path.join(a.out, name + ".mlir"), fuse,
                                          tt=meta.get("tt", 0))
        with open(os.path.join(a.out, name + ".cubin"), "wb") as f:
            f.write(blob)
        os.remove(os.path.join(a.out, name + ".mlir"))
        meta["kernels"] = names
        meta["schedules"] = scheds
        return name, meta

    with ThreadPoolExecutor(max_workers=2) as ex:
        for name, meta in ex.map(run, todo):
            manifest[name] = meta
            print(name, meta["kernels"], flush=True)
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
