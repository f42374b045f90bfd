#!/usr/bin/env python3
"""Times the backward kernels under other schedules than the one --mhc-select-schedule picks: the
cols kernel (VARIANTS), the rows kernel (ROWS_VARIANTS) and the token kernel (TOKEN_VARIANTS).

The schedule of every kernel is an attribute in the IR (#mhc.schedule, docs/GPU.md), so a variant
is the same compiler with one attribute edited. Here (needs mhc-opt and the CUDA toolkit):

    PYTHONPATH=python python3 bench/sweep_cols.py build --out .mhc-sweep      # n = 4, C = 4096, bf16

writes one kernel cache per variant (.mhc-sweep/<variant>/, with the runtime library). On the GPU
machine, .mhc-sweep carried along:

    PYTHONPATH=python python3 bench/sweep_cols.py run --out .mhc-sweep --json $OUT/sweep.json

times each with bench/bench_backward.py's method (each kernel of the fused sublayer backward --
rows, tokens where there is one, cols, params; CUDA events, median, three input sets rotated), all
in one process.

`--C` picks another width (both verbs need the same one); `--token-splits 3,6,13` adds the variants
"splits3", "splits6", ... (the cols kernel's token splits alone): how the grid's fill of the 132
SMs (chunks x splits blocks, one per SM) weighs against more partial dfn sums.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

# Field changes of the cols schedule (the second of [rows, cols, params]); "chosen" is what
# --mhc-select-schedule picks today (thirteenth session): tile_tokens 32, chunk_columns 64,
# threads 256, blocks_per_sm 1, token_splits 2 (until then tile_tokens 16: "tile16"). (The
# second session's sweep, of v2, chose blocks_per_sm 2 and token_splits 4.)
VARIANTS = {
    "chosen": {},
    "splits4": {"token_splits": 4},
    "splits8": {"token_splits": 8},
    "blocks2": {"blocks_per_sm": 2},
    "threads512": {"threads": 512},
    "tile16": {"tile_tokens": 16},
    "chunk32": {"chunk_columns": 32, "token_splits": 4},
    "chunk32_splits1": {"chunk_columns": 32, "token_splits": 1},
    "tile32_chunk32": {"tile_tokens": 32, "chunk_columns": 32, "token_splits": 1},
    # Small widths (thirty-first session): at C = 512 the chosen grid is 8 column chunks x 16
    # token splits, 128 blocks of one per SM; these fill the SMs twice over.
    "chunk32_splits16": {"chunk_columns": 32, "token_splits": 16},
    "blocks2_splits33": {"blocks_per_sm": 2, "token_splits": 33},
}
# The same for the rows schedule (the first of the three; the pre_backward group's rows kernel,
# which training runs, has 5 accumulators to the fused kernel's 25, so it may fit more blocks).
ROWS_VARIANTS = {
    "rows_blocks3": {"blocks_per_sm": 3},
    "rows_blocks4": {"blocks_per_sm": 4},
    "rows_tile32": {"tile_tokens": 32, "chunk_columns": 64},
    "rows_tile8": {"tile_tokens": 8, "chunk_columns": 256},
    # Small widths (thirtieth session): at C = 512 the token pass (the Sinkhorn walk, n lanes a
    # token) outlasts the row walk; more tokens a block give an SM more walks at once.
    "rows_tile32_blocks3": {"tile_tokens": 32, "chunk_columns": 64, "blocks_per_sm": 3},
    "rows_tile64": {"tile_tokens": 64, "chunk_columns": 32},
}

# The token kernel (thirty-first session): the backward's token pass (the Sinkhorn walk) in a kernel
# of its own between rows and cols, [rows, tokens, cols, params], which --mhc-select-schedule picks
# for rows of <= 4 KB. Each variant sets the token kernel's (tile_tokens, threads), or removes it
# (None: the token pass back in the rows kernel); the same edit works at any C.
TOKEN_VARIANTS = {
    "tokens_off": None,
    "tokens64": (64, 256),
    "tokens32": (32, 128),
    "tokens128": (128, 512),
}


def edit_backward_schedules(change):
    """An IR edit: `change` (a backward group's schedule strings, [rows, (tokens,) cols, params]
    -> the new list) applied to every backward group with a cols kernel."""
    def edit(ir: str) -> str:
        def one(m):
            schedules = re.findall(r"#mhc\.schedule<[^>]*>", m.group(0))
            if len(schedules) not in (3, 4):
                return m.group(0)
            return "mhc.schedule = [" + ", ".join(change(schedules)) + "]"
        out, count = re.subn(r"mhc\.schedule = \[[^\]]*\]", one, ir)
        if not count:
            raise ValueError("no backward schedule in the IR")
        return out
    return edit


def edit_tokens(wanted):
    """Gives every backward group with cols and params kernels the token kernel `wanted`
    ((tile_tokens, threads)) or none (None)."""
    def change(schedules):
        kept = [schedules[0]] + schedules[-2:]
        if wanted:
            kept.insert(1, f"#mhc.schedule<tile_tokens = {wanted[0]}, chunk_columns = 0, "
                           f"threads = {wanted[1]}, vector_width = 1, blocks_per_sm = 0>")
        return kept
    return edit_backward_schedules(change)


def edit_cols(changes, which=1):
    """Edits schedule `which` (0 rows, 1 cols) of every backward group with a cols kernel."""
    def change(schedules):
        at = 2 if which == 1 and len(schedules) == 4 else which   # cols after a token kernel
        edited = schedules[at]
        for field, value in changes.items():
            edited, count = re.subn(rf"{field} = \d+", f"{field} = {value}", edited)
            if not count:
                raise ValueError(f"no {field} in {edited}")
        return schedules[:at] + [edited] + schedules[at + 1:]
    return edit_backward_schedules(change)


def split_variants(args):
    """{"splitsN": {"token_splits": N}} for each N of --token-splits."""
    counts = [int(v) for v in args.token_splits.split(",")] if args.token_splits else []
    return {f"splits{v}": {"token_splits": v} for v in counts}


def build(args):
    from mhc.torch import kernels, kernel_build
    key = kernels.KernelKey(n=4, C=args.C, dtype="bf16", chip="sm_90")
    runtime = kernels.find_runtime()
    wanted = [(name, edit_cols(changes, 1))
              for name, changes in {**VARIANTS, **split_variants(args)}.items()]
    wanted += [(name, edit_cols(changes, 0)) for name, changes in ROWS_VARIANTS.items()]
    wanted += [(name, edit_tokens(tokens)) for name, tokens in TOKEN_VARIANTS.items()]
    for name, edit in wanted:
        if args.only and name not in args.only.split(","):
            continue
        root = Path(args.out) / name
        folder = key.folder(root)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            kernel_build.compile_kernels(key.as_dict(), folder, edit_schedules=edit)
        except Exception as e:  # noqa: BLE001 - an impossible schedule is a diagnostic; go on
            shutil.rmtree(folder, ignore_errors=True)
            print(f"{name}: not built: {str(e).strip().splitlines()[-1][:200]}", flush=True)
            continue
        shutil.copy(runtime, root / kernels.RUNTIME_NAME)
        print(f"{name}: built {folder}", flush=True)


def run(args):
    results = {}
    variants = {**VARIANTS, **split_variants(args), **ROWS_VARIANTS, **TOKEN_VARIANTS}
    for name in variants:
        root = Path(args.out) / name
        if not root.is_dir():
            continue
        out = Path(args.json).with_suffix(f".{name}.json")
        env = dict(os.environ, MHC_CACHE=str(root))
        proc = subprocess.run([sys.executable, str(HERE / "bench_backward.py"), "--json", str(out),
                               "--Cs", str(args.C), "--peers", "none", "--providers", "",
                               "--iters", "30"],
                              env=env, capture_output=True, text=True, timeout=120)
        print(f"== {name} {variants[name]}\n{proc.stdout[-1500:]}{proc.stderr[-800:]}", flush=True)
        results[name] = {"changes": variants[name],
                         "result": json.loads(out.read_text()) if out.exists() else None,
                         "exit": proc.returncode}
        out.unlink(missing_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("build", "run"))
    p.add_argument("--out", default=".mhc-sweep")
    p.add_argument("--json")
    p.add_argument("--only", help="build only these variants (comma-separated names)")
    p.add_argument("--C", type=int, default=4096, help="stream width (default 4096)")
    p.add_argument("--token-splits", help="also the variants splitsN for these N (comma-separated)")
    args = p.parse_args(argv)
    build(args) if args.what == "build" else run(args)


if __name__ == "__main__":
    main()
