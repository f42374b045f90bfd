#!/usr/bin/env python3
"""What a kernel set's machine code does per loop trip, without a GPU: registers, spills and
shared memory of each kernel (cuobjdump -res-usage) and, for each loop of its SASS (a backward
branch), how many instructions of each kind lie between the loop's head and that branch.

    python3 bench/sass_census.py .mhc-cache/0.1.0/sm_90/n4-C4096-bf16-*/kernels.cubin \
        --kernel mhc_pre_backward_3_cols --json out.json

A loop's count covers every path inside its address range (a uniform branch's guarded and
unguarded sides both count), so it is an upper bound of one trip; `--range LO:HI` (hex
addresses, as cuobjdump prints them) counts one stretch instead. Per-warp numbers: multiply by
the warps of an SM and divide by its four schedulers for the issue cycles of one trip.

Needs cuobjdump and nvdisasm (CUDA's, or `pip install nvidia-cuda-cuobjdump
nvidia-cuda-nvdisasm`); found on PATH, under $CUDA_HOME/bin or /usr/local/cuda/bin, or in those
pip packages.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

# One SASS line: /*0a80*/  [@P0] OPCODE.MODS operands ;
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_BRANCH_TARGET = re.compile(r"\bBRA\b(?:\s+!?U?P\w+,)?\s+(0x[0-9a-f]+)")
_RESOURCES = re.compile(r"(\w+):(\d+)")


def find_tool(name: str) -> str | None:
    """`name` from PATH, CUDA's bin folder, or the nvidia-cuda-* pip packages."""
    found = shutil.which(name)
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    try:
        import nvidia  # the pip packages' namespace
        roots += [str(Path(p) / sub) for p in nvidia.__path__ for sub in ("cu13", "cuda_nvcc", "")]
    except ImportError:
        pass
    for root in filter(None, roots):
        candidate = Path(root) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def parse_sass(text: str) -> dict[str, list[tuple[int, str]]]:
    """cuobjdump -sass output -> {kernel: [(address, instruction text)]}."""
    kernels: dict[str, list[tuple[int, str]]] = {}
    current = None
    for line in text.splitlines():
        m = _FUNCTION.match(line)
        if m:
            current = kernels.setdefault(m.group(1), [])
            continue
        m = _INSTRUCTION.match(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2)))
    return kernels


def parse_resources(text: str) -> dict[str, dict[str, int]]:
    """cuobjdump -res-usage output -> {kernel: {REG, STACK, SHARED, LOCAL, ...}}."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function\s+(\S+?):?\s*$", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            out[current] = {k: int(v) for k, v in _RESOURCES.findall(line)}
            current = None
    return out


def opcode(instruction: str) -> str:
    """The opcode without predicate and modifiers: '@!P3 LDS.128 R8, [R2]' -> 'LDS'."""
    body = re.sub(r"^@!?U?P\w+\s+", "", instruction)
    return body.split()[0].split(".")[0]


def loops(code: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(head, branch) address pairs of the backward branches, outermost (widest) first."""
    found = set()
    for address, text in code:
        m = _BRANCH_TARGET.search(text)
        if m and int(m.group(1), 16) < address:    # not the end-of-kernel `BRA self`
            found.add((int(m.group(1), 16), address))
    return sorted(found, key=lambda lh: (lh[0] - lh[1], lh[0]))


def census(code: list[tuple[int, str]], lo: int, hi: int) -> dict:
    """Instructions with lo <= address <= hi: their number and a histogram of opcodes."""
    counts = collections.Counter(opcode(t) for a, t in code if lo <= a <= hi)
    return {"range": f"{lo:#x}:{hi:#x}", "instructions": sum(counts.values()),
            "opcodes": dict(counts.most_common())}


def report(kernel: str, code, resources: dict | None, ranges: list[tuple[int, int]] | None):
    entry = {"kernel": kernel, "instructions": len(code)}
    if resources:
        entry["resources"] = resources
    stretches = ranges if ranges else loops(code)
    entry["loops" if not ranges else "ranges"] = [census(code, lo, hi) for lo, hi in stretches]
    if ranges and len(ranges) > 1:   # e.g. one path of a loop, given piece by piece
        entry["ranges_total"] = sum(part["instructions"] for part in entry["ranges"])
    return entry


def run_tool(tool: str, args: list[str]) -> str:
    proc = subprocess.run([tool, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sass_census: {Path(tool).name} {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cubin", type=Path)
    ap.add_argument("--kernel", action="append", help="only these kernels (repeatable)")
    ap.add_argument("--range", dest="ranges", action="append", metavar="LO:HI",
                    help="count this address range (hex, both ends included) instead of the "
                         "loops; repeatable (and summed: one path of a loop, piece by piece)")
    ap.add_argument("--top", type=int, default=12, help="opcodes printed per loop")
    ap.add_argument("--json", type=Path, help="write the census here")
    args = ap.parse_args(argv)
    if not args.cubin.is_file():
        ap.error(f"no such file: {args.cubin}")
    ranges = None
    if args.ranges:
        try:
            ranges = [tuple(int(x, 16) for x in r.split(":")) for r in args.ranges]
        except ValueError:
            ap.error("--range takes LO:HI in hex, e.g. 0x4a80:0x9b10")
    cuobjdump = find_tool("cuobjdump")
    nvdisasm = find_tool("nvdisasm")
    if not cuobjdump or not nvdisasm:
        raise SystemExit("sass_census: needs cuobjdump and nvdisasm (CUDA's bin folder, or "
                         "pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    env_path = os.pathsep.join([str(Path(nvdisasm).parent), os.environ.get("PATH", "")])
    os.environ["PATH"] = env_path            # cuobjdump -sass runs nvdisasm
    selection = [a for k in (args.kernel or []) for a in ("-fun", k)]
    kernels = parse_sass(run_tool(cuobjdump, ["-sass", *selection, str(args.cubin)]))
    resources = parse_resources(run_tool(cuobjdump, ["-res-usage", str(args.cubin)]))
    missing = [k for k in (args.kernel or []) if k not in kernels]
    if missing:
        raise SystemExit(f"sass_census: no kernel {', '.join(missing)} in {args.cubin} "
                         f"(it has: {', '.join(sorted(resources))})")
    result = {"cubin": str(args.cubin), "command": " ".join(["sass_census.py", *(argv or sys.argv[1:])]),
              "kernels": [report(k, code, resources.get(k), ranges) for k, code in kernels.items()]}
    for entry in result["kernels"]:
        res = entry.get("resources", {})
        print(f"{entry['kernel']}: {entry['instructions']} instructions, "
              f"{res.get('REG', '?')} registers, stack {res.get('STACK', '?')} B, "
              f"shared {res.get('SHARED', '?')} B")
        for part in entry.get("loops", entry.get("ranges", [])):
            top = list(part["opcodes"].items())[:args.top]
            print(f"  {part['range']}: {part['instructions']:5d}  "
                  + " ".join(f"{k}:{v}" for k, v in top))
        if "ranges_total" in entry:
            print(f"  all ranges: {entry['ranges_total']:5d}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # `| head` ends the output quietly
    sys.exit(main())
