#!/usr/bin/env python3
"""Prepares whole models rewritten by mhc for IREE on the H200 (docs/Embedding.md, part d).

Here (a machine with mhc built and `iree-base-compiler` installed, no GPU):

  1. the models: the exported tiny GPT-2 and Llama (weights inlined, test/Transforms/Inputs)
     and a larger random-weight Llama exported with its weights as arguments
     (bench/iree/export_llama.py: 8 layers, C = 1024, T = 1024), each as exported ("orig")
     and rewritten by `--mhc-hyperconnect="streams=4 mode=mhc"` ("mhc", parameters as
     arguments: IREE's GPU codegen cannot take them as constants), and rewritten with mhc's
     own kernels as IREE dispatches ("mhc-fast", fast_route.py);
  2. `--convert-mhc-to-linalg`, then `iree-compile` for CUDA sm_90 (a hand-written
     #iree_gpu.target: IREE 3.13's table stops at sm_80 for CUDA) -> <name>.vmfb;
  3. reference logits from mhc's own CPU path (`--mhc-cpu-pipeline`, compiled to a shared
     library and called with the same inputs) -> <model>-<orig|mhc>.ref.npy; for the large
     model IREE's CPU backend by default (mhc's naive CPU loops would take hours there);
  4. IREE's runtime for the GPU machine's Python 3.12 (wheels unpacked, tools and the tracing
     build left out) -> runtime/.

Inputs are not stored: bench/iree/weights.py makes them on both machines (bit-identical;
manifest.json records a checksum). Output folder: --out (default .embed-carry/iree,
git-ignored; the wheels and the large model's export are cached in .iree-wheels/ and
.iree-export/). run_on_gpu.py uses it.

  .venv/bin/python bench/iree/prepare.py --mhc-opt build/bin/mhc-opt [--out .embed-carry/iree]
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import fast_route  # noqa: E402
import weights  # noqa: E402
from mhc import compiler  # noqa: E402
from mhc.runtime import Library  # noqa: E402

STREAMS = 4
TINY_IDS = [[3, 17, 42, 99, 5, 64, 127, 0]]
# IREE's CUDA target for sm_80 (as iree-compile --iree-cuda-target=sm_80 writes it) with the
# arch, the PTX version and the shared memory of an sm_90 part (H100/H200: 227 KB a block).
SM90_TARGET = (
    '#hal.device.target<"cuda", [#hal.executable.target<"cuda", "cuda-nvptx-fb", '
    '{iree_codegen.target_info = #iree_gpu.target<arch = "sm_90", features = "+ptx80", '
    'wgp = <compute = fp64|fp32|fp16|int64|int32|int16|int8, storage = b64|b32|b16|b8, '
    'subgroup = shuffle|arithmetic, dot = dp4xi8toi32, mma = [<NV_MMA_SYNC_F32_16x8x16_F16>, '
    '<NV_MMA_SYNC_F16_16x8x16_F16>, <NV_MMA_SYNC_F32_16x8x16_BF16>, <NV_WMMA_F32_16x16x16_F16>, '
    '<NV_WMMA_F16_16x16x16_F16>], subgroup_size_choices = [32], '
    'max_workgroup_sizes = [1024, 1024, 1024], max_thread_count_per_workgroup = 1024, '
    'max_workgroup_memory_bytes = 232448, '
    'max_workgroup_counts = [2147483647, 65535, 65535]>>}>]> : !hal.device')
RUNTIME_WHEELS = ["iree-base-runtime==3.13.0", "ml_dtypes==0.7.0"]


def run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"prepare: failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr[-4000:]}")
    return p.stdout


def with_target(module_text, target=SM90_TARGET):
    """The module with `hal.device.targets` set (IREE then needs no target flags)."""
    head = module_text.index("module")
    brace = module_text.index("{", head)
    attrs = f"hal.device.targets = [{target}]"
    between = module_text[head + len("module"):brace]
    if "attributes" in between:  # module attributes {a, b} {
        open_attr = module_text.index("{", head)
        return module_text[:open_attr + 1] + attrs + ", " + module_text[open_attr + 1:]
    return module_text[:brace] + f"attributes {{{attrs}}} " + module_text[brace:]


def digest(*texts):
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


def prepare_fast(calls):
    """The fast route's IREE input: dispatches of mhc's kernels (fast_route.py), sm_90."""
    executable = SM90_TARGET[SM90_TARGET.index("#hal.executable.target"):SM90_TARGET.rindex("]>")]
    module = fast_route.dispatch_module(calls, "mhc_kernels.ptx", executable)
    return with_target(module, '#hal.device.target<"cuda", [#mhc_target]> : !hal.device')


def iree_compile(iree, module_text, vmfb, workdir, target, flags=()):
    src = workdir / (vmfb.stem + ".iree.mlir")
    flags = list(flags)
    if target == "cuda-sm90":
        src.write_text(module_text if "hal.device.targets" in module_text else with_target(module_text))
    else:  # this machine's CPU: to try the scripts without a GPU
        src.write_text(module_text)
        flags += ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
                  "--iree-llvmcpu-target-cpu=host"]
    start = time.time()
    run([iree, src, *flags, "-o", vmfb])
    return time.time() - start


def signature(module_text):
    """(name, shape, dtype) of @forward's arguments, and the mhc.param names."""
    import re
    head = module_text[module_text.index("func.func @forward("):]
    head = head[:head.index("{\n")]
    args = []
    for m in re.finditer(r"%arg\d+: tensor<([0-9x]+)x(f32|i64)>(?: \{mhc\.param = \"([^\"]+)\"\})?", head):
        shape = [int(d) for d in m.group(1).split("x")]
        args.append({"shape": shape, "dtype": "float32" if m.group(2) == "f32" else "int64",
                     "param": m.group(3)})
    return args


def inputs_spec(model, args, weight_names):
    """How run_on_gpu.py makes each argument (see weights.py)."""
    spec = []
    for i, a in enumerate(args):
        if i == 0:
            spec.append({"kind": "ids", **a, "vocab": model["vocab"], "fixed": model.get("ids")})
        elif a["param"]:
            spec.append({"kind": "hc", "index": i, "name": a["param"], **a})
        else:
            spec.append({"kind": "weight", "index": i, "name": weight_names[i - 1], **a})
    return spec


def cpu_reference(mhc_form_text, inputs, logits_rank, workdir, name):
    """Logits from mhc's CPU path: the module (mhc ops or plain) through --mhc-cpu-pipeline."""
    so = compiler.compile_cpu(mhc_form_text, workdir / f"lib{name}-cpu.so")
    start = time.time()
    logits = Library(so).call("forward", *inputs, results=[(logits_rank, np.float32)])
    return np.array(logits), time.time() - start


def iree_cpu_reference(iree, linalg_text, inputs, workdir, name):
    """Logits from IREE's CPU backend (for the large model, where mhc's naive CPU loops take
    hours; on the tiny models the two agree to 1.8e-7)."""
    import iree.runtime as ireert
    vmfb = workdir / f"{name}-cpu.vmfb"
    iree_compile(iree, linalg_text, vmfb, workdir, "llvm-cpu")
    config = ireert.Config("local-task")
    ctx = ireert.SystemContext(config=config)
    ctx.add_vm_module(ireert.VmModule.mmap(config.vm_instance, str(vmfb)))
    start = time.time()
    logits = ctx.modules.module["forward"](*inputs).to_host()
    return np.array(logits), time.time() - start


def unpack_runtime(out, workdir, wheel_dir):
    """IREE's Python runtime (cp312, abi3) + ml_dtypes for the GPU machine, without tools."""
    dest = out / "runtime"
    if (dest / "iree/runtime/__init__.py").exists():
        return
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if not list(wheel_dir.glob("iree_base_runtime-*.whl")):
        run([sys.executable, "-m", "pip", "download", *RUNTIME_WHEELS, "--python-version", "3.12",
             "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--no-deps",
             "-d", wheel_dir])
    for whl in wheel_dir.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            z.extractall(dest)
    shutil.rmtree(dest / "iree/_runtime_libs_tracy", ignore_errors=True)
    for tool in (dest / "iree/_runtime_libs").glob("iree-*"):
        if tool.name != "iree-benchmark-module":
            tool.unlink()


def tiny_models():
    for model in ("gpt2-tiny", "llama-tiny"):
        path = ROOT / "test/Transforms/Inputs" / f"{model}.mlir"
        yield {"model": model, "path": path, "vocab": 128, "ids": TINY_IDS, "names": None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mhc-opt", required=True)
    ap.add_argument("--out", default=str(ROOT / ".embed-carry" / "iree"))
    ap.add_argument("--iree-compile", default=str(Path(sys.executable).parent / "iree-compile"))
    ap.add_argument("--export-python", default=sys.executable,
                    help="a Python with torch, transformers and torch-mlir (for the large model)")
    ap.add_argument("--large", default="8,1024,16,2816,1024,1024",
                    help="layers,hidden,heads,intermediate,vocab,seq of the large Llama; 'none' to skip")
    ap.add_argument("--target", choices=("cuda-sm90", "llvm-cpu"), default="cuda-sm90",
                    help="llvm-cpu: vmfbs for this machine (run_on_gpu.py --device local-task)")
    ap.add_argument("--large-reference", choices=("iree-cpu", "cpu-path", "none"), default="iree-cpu",
                    help="the large model's reference logits: IREE's CPU backend (llvm-cpu, "
                         "multithreaded), mhc's CPU path (naive loops: hours) or none")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    (out / "models").mkdir(parents=True, exist_ok=True)
    os.environ["MHC_OPT"] = str(Path(args.mhc_opt).resolve())
    work = Path(tempfile.mkdtemp(prefix="mhc-iree-"))
    unpack_runtime(out, work, ROOT / ".iree-wheels")

    models = list(tiny_models())
    if args.large != "none":
        layers, hidden, heads, inter, vocab, seq = map(int, args.large.split(","))
        name = f"llama-{layers}l-c{hidden}-t{seq}"
        path = ROOT / ".iree-export" / f"{name}.mlir"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            run([args.export_python, HERE / "export_llama.py", "--out", path, "--layers", layers,
                 "--hidden", hidden, "--heads", heads, "--intermediate", inter, "--vocab", vocab,
                 "--seq", seq])
        meta = json.loads(Path(str(path) + ".json").read_text())
        models.append({"model": name, "path": path, "vocab": vocab, "ids": None,
                       "names": [a["name"] for a in meta["arguments"]], "large": True})

    # Earlier results are reused when their IREE input (or reference input) is unchanged.
    old = {}
    if (out / "manifest.json").exists():
        old = {e["name"]: e for e in json.loads((out / "manifest.json").read_text())["models"]}
    manifest = []
    for m in models:
        orig = m["path"].read_text()
        rewritten_path = work / f"{m['model']}-mhc.mlir"
        rewritten = run([args.mhc_opt, m["path"], f"--mhc-hyperconnect=streams={STREAMS} mode=mhc",
                         "-o", "-"])
        rewritten_path.write_text(rewritten)
        variants = [("orig", orig), ("mhc", rewritten)]
        if args.target == "cuda-sm90":
            variants.append(("mhc-fast", rewritten))
        for variant, mhc_form in variants:
            name = f"{m['model']}-{variant}"
            vmfb = out / "models" / f"{name}.vmfb"
            if variant == "mhc-fast":
                # mhc's kernels as external dispatches (fast_route.py); the PTX beside the vmfb's source.
                calls, ptx = fast_route.outline(args.mhc_opt, rewritten_path)
                (work / "mhc_kernels.ptx").write_text(ptx)
                iree_input = prepare_fast(calls)
                flags = [f"--iree-hal-executable-object-search-path={work}"]
            else:
                iree_input = run([args.mhc_opt, "-", "--convert-mhc-to-linalg"], input=mhc_form)
                ptx, flags = "", []
            key = digest(iree_input, ptx, args.target)
            sig = signature(mhc_form)
            spec = inputs_spec(m, sig, m["names"] or [None] * len(sig))
            entry = {"name": name, "model": m["model"], "variant": variant,
                     "vmfb": f"models/{vmfb.name}", "function": "forward", "inputs": spec,
                     "large": bool(m.get("large")), "iree_input_hash": key,
                     # mhc's kernels compute the projection on bf16 tensor cores (hi/lo split)
                     "rtol": 1e-3 if variant == "mhc-fast" else 1e-4}
            previous = old.get(name, {})
            if previous.get("iree_input_hash") == key and vmfb.exists():
                entry["iree_compile_seconds"] = previous.get("iree_compile_seconds")
            else:
                entry["iree_compile_seconds"] = round(
                    iree_compile(args.iree_compile, iree_input, vmfb, work, args.target, flags), 1)
            inputs = weights.make_inputs(spec, STREAMS)
            entry["inputs_checksum"] = weights.checksum(inputs)
            kind = "mhc-cpu-path" if not m.get("large") else args.large_reference
            if kind != "none":
                # The same math on the CPU (the fast route computes what "mhc" does).
                base = "orig" if variant == "orig" else "mhc"
                ref_path = out / "models" / f"{m['model']}-{base}.ref.npy"
                ref_key = digest(mhc_form, entry["inputs_checksum"], kind)
                stamp = ref_path.with_suffix(".hash")
                if ref_path.exists() and stamp.exists() and stamp.read_text() == ref_key:
                    entry["reference_seconds"] = None  # computed by an earlier run
                else:
                    if kind in ("mhc-cpu-path", "cpu-path"):
                        logits, seconds = cpu_reference(mhc_form, inputs, 3, work, name)
                    else:
                        logits, seconds = iree_cpu_reference(
                            args.iree_compile, run([args.mhc_opt, "-", "--convert-mhc-to-linalg"],
                                                   input=mhc_form), inputs, work, name)
                    np.save(ref_path, logits)
                    stamp.write_text(ref_key)
                    entry["reference_seconds"] = round(seconds, 1)
                entry["reference"] = f"models/{ref_path.name}"
                entry["reference_kind"] = "mhc-cpu-path" if kind == "cpu-path" else kind
            manifest.append(entry)
            print(f"prepared {name}: {vmfb.stat().st_size // 1024} KB vmfb, "
                  f"{len(spec)} inputs, reference {'yes' if 'reference' in entry else 'no'}",
                  flush=True)
    (out / "manifest.json").write_text(json.dumps({"streams": STREAMS, "target": args.target,
                                                   "models": manifest}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
