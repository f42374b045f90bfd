#!/usr/bin/env python3
"""GPU time of the forward kernels under other schedules (tile sizes, threads, blocks per SM).

Each variant in VARIANTS edits fields of the forward kernels' #mhc.schedule (the same compiler,
one attribute: the grids are ceil(T / tile_tokens) blocks, so at small T most SMs idle; the pre
kernel at C = 512 runs as one wave) and each op is timed at several T. Build (needs mhc-opt and
the CUDA toolkit; n = 4, bf16, C = 4096 unless --C says otherwise, the same for both verbs;
--only picks variants):

    PYTHONPATH=python python3 bench/sweep_forward_tiles.py build --out .mhc-cache-sweep-fwd

and on the GPU machine, .mhc-cache-sweep-fwd carried along (--baseline adds another build's
kernel cache, e.g. main before a change, timed in the same process):

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

def tiles(mapping):
    """Every forward kernel: tile_tokens chosen today -> the variant's."""
    return lambda f: {**f, "tile_tokens": mapping.get(f["tile_tokens"], f["tile_tokens"])}


def where(match, **fields):
    """The kernels whose schedule has every field of `match`: `fields` set, the others left."""
    return lambda f: {**f, **fields} if all(f[k] == v for k, v in match.items()) else f


def pre_kernel(**fields):
    """The pre kernel alone (hc_pre_mixed and hc_steady_forward's first kernel: no chunk
    loop, 64-token tiles at 16384 tokens; the few-token variants' 16-token tiles are left)."""
    return where({"chunk_columns": 0, "tile_tokens": 64}, **fields)


def proj_kernel(**fields):
    """The projection kernels alone (hc_post_project's and hc_pre's main kernel: 32-token
    tiles, 128-column chunks, 128 threads at 16384 tokens)."""
    return where({"tile_tokens": 32, "chunk_columns": 128, "threads": 128}, **fields)


# Each variant edits the fields of every forward schedule it matches (32-token tiles today:
# hc_pre, hc_post_project; 64: hc_post, hc_pre_mixed).
VARIANTS = {"chosen": lambda f: f, "tt16": tiles({32: 16, 64: 16}), "tt16-8": tiles({32: 16, 64: 8}),
            "pre-tt32": pre_kernel(tile_tokens=32), "pre-tt16": pre_kernel(tile_tokens=16),
            "pre-bps3": pre_kernel(blocks_per_sm=3), "pre-bps4": pre_kernel(blocks_per_sm=4),
            "pre-tt32-bps3": pre_kernel(tile_tokens=32, blocks_per_sm=3),
            "pre-tt16-bps4": pre_kernel(tile_tokens=16, blocks_per_sm=4),
            "pre-t128": pre_kernel(threads=128), "pre-tt32-t128": pre_kernel(tile_tokens=32, threads=128),
            "proj-bps3": proj_kernel(blocks_per_sm=3), "proj-bps2": proj_kernel(blocks_per_sm=2),
            "proj-t256-bps2": proj_kernel(threads=256, blocks_per_sm=2),
            "proj-c64": proj_kernel(chunk_columns=64), "proj-c64-bps3": proj_kernel(chunk_columns=64, blocks_per_sm=3),
            "proj-tt16": proj_kernel(tile_tokens=16), "proj-tt16-bps3": proj_kernel(tile_tokens=16, blocks_per_sm=3)}
OPS = ("hc_pre", "hc_post", "hc_pre_mixed", "hc_post_project")
TOKENS = (64, 256, 1024, 4096, 16384)
ATTRS = (20, 1e-6, 1e-6, 2.0)


def edit_schedules(variant):
    """Applies `variant` (fields -> fields) to the forward kernels' schedules: a group's one
    schedule, or the second of [fn prepare kernel, kernel] (the backward's arrays start with
    rows: left alone). ``edit.changed`` says whether it changed any schedule."""
    def edit(ir: str) -> str:
        def one(m):
            old = {k: int(v) for k, v in re.findall(r"(\w+) = (\d+)", m.group(2))}
            fields = variant(old)
            edit.changed |= fields != old
            return m.group(1) + ", ".join(f"{k} = {v}" for k, v in fields.items()) + ">"
        return re.sub(r"(mhc\.schedule = (?:\[#mhc\.schedule<tile_tokens = 0,[^>]*>, )?"
                      r"#mhc\.schedule<)([^>]*)>", one, ir)
    edit.changed = False
    return edit


def key(C):
    from mhc.torch import kernels
    return kernels.KernelKey(n=4, C=C, dtype="bf16", chip="sm_90")


def build(args):
    from mhc.torch import kernels, kernel_build
    runtime = kernels.find_runtime()
    for name, variant in selected(args).items():
        root = Path(args.out) / name
        folder = key(args.C).folder(root)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        edit = edit_schedules(variant)
        kernel_build.compile_kernels(key(args.C).as_dict(), folder, edit_schedules=edit)
        if name != "chosen" and not edit.changed:   # it would time an unedited copy as the variant
            raise SystemExit(f"{name}: matches no forward schedule at C = {args.C}")
        shutil.copy(runtime, root / kernels.RUNTIME_NAME)
        grids = {op: [l["grid"] for l in spec["launches"]] for op, spec in
                 json.loads((folder / kernels.MANIFEST_NAME).read_text())["ops"].items() if op in OPS}
        print(f"{name}: built {folder}: {grids}", flush=True)


def run(args):
    import torch
    from mhc.torch import kernels
    from host_time import gpu_us_per_call as gpu_us
    n, C, M = 4, args.C, 24
    sets = {name: kernels.KernelSet(key(C).folder(Path(args.out) / name)) for name in selected(args)}
    if args.baseline:   # another build's kernels (e.g. main before a change), first: the reference
        sets = {"baseline": kernels.KernelSet(key(C).folder(Path(args.baseline))), **sets}
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "n": n, "C": C,
           "variants": list(sets), "baseline": args.baseline,
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
                if op not in reference:   # the first set's results
                    reference[op] = [t.float().clone() for t in results]
                else:   # same numbers as the first set's (up to summation order)
                    err = max(((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                              for a, b in zip(results, reference[op]))
                    out.setdefault("max_relerr_vs_first", {}).setdefault(name, {})[f"{op}@{T}"] = err
                out["us"].setdefault(name, {}).setdefault(op, {})[str(T)] = gpu_us(call)
        line = "  ".join(f"{name}: " + " ".join(f"{out['us'][name][op][str(T)]:7.1f}" for op in OPS)
                         for name in sets)
        print(f"T={T:6d} ({' '.join(OPS)}) us  {line}", flush=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


def selected(args):
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    return {n: VARIANTS[n] for n in names}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("build", "run"))
    p.add_argument("--out", default=".mhc-cache-sweep-fwd")
    p.add_argument("--json")
    p.add_argument("--C", type=int, default=4096, help="stream width (both verbs the same)")
    p.add_argument("--only", help="comma-separated variants (default: all)")
    p.add_argument("--baseline", help="run: a kernel cache root (build_cache's --out) timed first, "
                   "as 'baseline', and the reference of max_relerr_vs_first")
    args = p.parse_args(argv)
    build(args) if args.what == "build" else run(args)


if __name__ == "__main__":
    main()
