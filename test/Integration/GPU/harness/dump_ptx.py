#!/usr/bin/env python3
"""Writes the PTX that an mhc-opt generates for every GPU input, one file each.

For restructurings of the GPU lowering that must not change behaviour: run it
with the mhc-opt before and after the change and compare the two folders
(`diff -r`); identical PTX means identical kernels. Inputs: every program the
H200 kernel check builds (build_cubins.py: every op fused and one kernel per
op, n in {1,2,4,8} x C in {100..7168} x bf16/f32, f16 and n = 3 samples, the
steady-state sublayer and its tile-tokens variant), and every mhc program among
examples/aot, bench and the GPU tests (default pipeline options; inputs that
the pipeline rejects, the error tests, are listed as errors in both runs).

  python3 test/Integration/GPU/harness/dump_ptx.py --mhc-opt build/bin/mhc-opt --out /tmp/ptx-after
"""
import argparse, os, re, subprocess, sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))
sys.path.insert(0, HERE)
import build_cubins as B  # noqa: E402


def cubin_check_programs():
    for name, src, fuse, meta in B.jobs(quick=False):
        opts = ("" if fuse else " fuse=0") + (f" tile-tokens={meta['tt']}" if meta.get("tt") else "")
        yield name, src, opts


def repo_programs():
    """Every mhc program among the GPU tests and examples; files with
    `// -----` are split into their pieces."""
    dirs = ["examples/aot", "bench", "test/Conversion/MHCToGPU", "test/Integration/GPU"]
    for d in dirs:
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if not f.endswith(".mlir"):
                continue
            pieces = open(os.path.join(ROOT, d, f)).read().split("// -----")
            for k, piece in enumerate(pieces):
                if "mhc." in piece and "gpu.module" not in piece:
                    yield f"{d}/{f}:{k}".replace("/", "_"), piece, ""


def dump(mhc_opt, name, src, opts, out):
    r = subprocess.run([mhc_opt, "-", f"--mhc-gpu-pipeline=format=isa{opts}"], input=src,
                       capture_output=True, text=True)
    if r.returncode != 0:
        return name, "error: " + r.stderr.strip().splitlines()[-1][:300]
    blobs = re.findall(r'assembly = "((?:[^"\\]|\\.)*)"', r.stdout)
    with open(os.path.join(out, name + ".ptx"), "wb") as f:
        for blob in blobs:
            f.write(B.decode_mlir_string(blob))
    return name, f"{len(blobs)} module(s)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mhc-opt", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    programs = list(cubin_check_programs()) + list(repo_programs())
    with ThreadPoolExecutor(max_workers=2) as ex:
        for name, what in ex.map(lambda p: dump(a.mhc_opt, *p, a.out), programs):
            print(f"{name}: {what}", flush=True)
    print(f"{len(programs)} programs")


if __name__ == "__main__":
    sys.exit(main())
