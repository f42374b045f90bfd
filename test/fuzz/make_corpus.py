#!/usr/bin/env python3
"""Writes mhc-fuzz's seed corpus from the lit tests: every input of every .mlir test (each
`// -----` chunk) and example, once per mhc pass pipeline its RUN lines use, in the fuzzer's
input format (tools/mhc-fuzz/mhc-fuzz.cpp):

    // pipeline: <textual pass pipeline>
    <MLIR>

    python3 test/fuzz/make_corpus.py OUT_DIR
"""
import hashlib
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What mhc-fuzz registers: mhc's passes and pipelines, canonicalize and cse.
PASSES = {"canonicalize", "cse", "convert-mhc-to-linalg", "convert-mhc-to-gpu", "mhc-fuse",
          "mhc-select-schedule", "mhc-gpu-host-memory", "mhc-gpu-check-target",
          "mhc-hyperconnect", "mhc-generate-backward", "mhc-cpu-pipeline", "mhc-gpu-pipeline"}
GPU = {"mhc-gpu-pipeline", "mhc-gpu-check-target"}
MAX_BYTES = 64 * 1024    # mhc-fuzz skips larger inputs


def pipelines(text: str) -> set:
    """The pass pipelines of the file's `mhc-opt %s ...` RUN lines."""
    runs = " ".join(line.split("RUN:", 1)[1].rstrip("\\").strip()
                    for line in text.splitlines() if "RUN:" in line)
    found = set()
    for command in re.findall(r"mhc-opt %s([^|]*)", runs):
        try:
            words = shlex.split(command)
        except ValueError:
            continue
        parts = []
        for w in words:
            name, _, options = w.lstrip("-").partition("=")
            if name not in PASSES:
                continue
            options = options.strip('"')
            # format=mlir stops before LLVM's serialization (most of a GPU
            # run's time); the tests that check PTX keep their format=isa.
            if name in GPU and "format=" not in options:
                options = (options + " format=mlir").strip()
            if name in GPU and not re.search(r"format=(isa|llvm|mlir)", options):
                parts = None         # would run ptxas
                break
            parts.append(f"{name}{{{options}}}" if options else name)
        if parts:
            found.add(",".join(parts))
    return found


def chunks(text: str) -> list:
    return [c for c in re.split(r"^// -----\s*$", text, flags=re.M) if c.strip()]


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(ROOT.glob("test/**/*.mlir")) + sorted(ROOT.glob("examples/**/*.mlir"))
    count = 0
    for path in files:
        text = path.read_text()
        seeds = pipelines(text) or {"canonicalize", "mhc-cpu-pipeline"}
        for chunk in chunks(text):
            for p in sorted(seeds) + [""]:
                data = (f"// pipeline: {p}\n" if p else "") + chunk
                if len(data.encode()) > MAX_BYTES:
                    continue
                name = hashlib.sha1(data.encode()).hexdigest()
                (out / name).write_text(data)
                count += 1
    print(f"{count} seeds from {len(files)} files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
