#!/usr/bin/env python3
"""GPU time of the forward kernels with fewer tokens per block (small T: docs/GPU.md, Limitations).

The kernels' grids are ceil(T / tile_tokens) blocks, so at small T most SMs idle. Here the forward
kernels' #mhc.schedule tile_tokens is edited (the same compiler, one attribute) and each op is
timed at several T. Build (needs mhc-opt and the CUDA toolkit; n = 4, bf16, C = 4096 unless --C
says otherwise, the same for both verbs):

    PYTHONPATH=python python3 bench/sweep_forward_tiles.py build --out .mhc-cache-sweep-fwd

and on the GPU machine, .mhc-cache-sweep-fwd carried along:

    PYTHONPATH=python python3 bench/sweep_forward_tiles.py run --out .mhc-cache-sweep-fwd --json $OUT/fwd-tiles.json

Each op's GPU time: host_time.gpu_us_per_call (40 calls queued behind a sleeping kernel, then run
back to back, so the host's launch time does not count), one process for all variants. The projection kernels
(hc_pre, hc_post_project) need tile_tokens a multiple of 16 (their tensor-core row tiles).
"""
import argparse
import json
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE))                   # host_time's GPU timer

# tile_tokens chosen today -> the variant's (32: hc_pre, hc_post_project; 64: hc_post, hc_pre_mixed).
VARIANTS = {"chosen": {}, "tt16": {32: 16, 64: 16}, "tt16-8": {32: 16, 64: 8}}
OPS = ("hc_pre", "hc_post", "hc_pre_mixed", "hc_post_project")
TOKENS = (64, 256, 1024, 4096, 16384)
ATTRS = (20, 1e-6, 1e-6, 2.0)


def edit_tiles(mapping):
    """Edits the forward kernels' tile_tokens: a group's one schedule, or the second of
    [fn prepare kernel, kernel] (the backward's arrays start with rows: left alone)."""
    def edit(ir: str) -> str:
        def one(m):
            old = int(m.group(2))
            return f"{m.group(1)}{mapping.get(old, old)},"
        return re.sub(r"(mhc\.schedule = (?:\[#mhc\.schedule<tile_tokens = 0,[^>]*>, )?"
                      r"#mhc\.schedule<tile_tokens = )(\d+),", one, ir)
    return edit


def key(C):
    from mhc.torch import kernels
    return kernels.KernelKey(n=4, C=C, dtype="bf16", chip="sm_90")


def build(args):
    from mhc.torch import kernels, kernel_build
    runtime = kernels.find_runtime()
    for name, mapping in VARIANTS.items():
        root = Path(args.out) / name
        folder = key(args.C).folder(root)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        kernel_build.compile_kernels(key(args.C).as_dict(), folder,
                                      edit_schedules=edit_tiles(mapping))
        shutil.copy(runtime, root / kernels.RUNTIME_NAME)
        grids = {op: [l["grid"] for l in spec["launches"]] for op, spec in
                 json.loads((folder / kernels.MANIFEST_NAME).read_text())["ops"].items() if op in OPS}
        print(f"{name}: built {folder}: {grids}", flush=True)


def run(args):
    import torch
    from mhc.torch import kernels
    from host_time import gpu_us_per_call as gpu_us
    n, C, M = 4, args.C, 24
    sets = {name: kernels.KernelSet(key(C).folder(Path(args.out) / name)) for name in VARIANTS}
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "n": n, "C": C,
           "variants": {name: {str(k): v for k, v in m.items()} for name, m in VARIANTS.items()},
           "us": {}}
    g = torch.Generator(device="cuda").manual_seed(0)
    for T in TOKENS:
        r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
        x, y = r(T, n, C).bfloat16(), r(T, C).bfloat16()
        fn, scale, base = r(M, n * C) / (n * C) ** 0.5, torch.rand(3, device="cuda") + 0.25, r(M) * 0.5
        mix, post, comb = r(T, M), torch.rand(T, n, device="cuda"), torch.rand(T, n, n, device="cuda")
        args_of = {"hc_pre": (x, fn, scale, base, *ATTRS), "hc_post": (y, x, post, comb),
                   "hc_pre_mixed": (x, mix, scale, base, *ATTRS),
                   "hc_post_project": (y, x, post, comb, fn)}
        reference = {}
        for name, ks in sets.items():
            for op in OPS:
                stream = torch.cuda.current_stream().cuda_stream
                call = lambda: ks.run(op, *args_of[op], stream=stream)  # noqa: E731
                results = call()
                if name == "chosen":
                    reference[op] = [t.float().clone() for t in results]
                else:   # same numbers as the chosen schedule (up to summation order)
                    err = max(((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                              for a, b in zip(results, reference[op]))
                    out.setdefault("max_relerr_vs_chosen", {}).setdefault(name, {})[f"{op}@{T}"] = err
                out["us"].setdefault(name, {}).setdefault(op, {})[str(T)] = gpu_us(call)
        line = "  ".join(f"{name}: " + " ".join(f"{out['us'][name][op][str(T)]:7.1f}" for op in OPS)
                         for name in sets)
        print(f"T={T:6d} ({' '.join(OPS)}) us  {line}", flush=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("build", "run"))
    p.add_argument("--out", default=".mhc-cache-sweep-fwd")
    p.add_argument("--json")
    p.add_argument("--C", type=int, default=4096, help="stream width (both verbs the same)")
    args = p.parse_args(argv)
    build(args) if args.what == "build" else run(args)


if __name__ == "__main__":
    main()
