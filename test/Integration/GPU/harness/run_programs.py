#!/usr/bin/env python3
"""Runs the whole programs of build_programs.py on the GPU and compares them with the CPU path.

Each library runs in its own process (a fault ends that program only): its `main` is called
through ctypes and what it prints is compared, array by array, with the CPU path's output
recorded at build time (normwise relative error ||gpu - cpu|| / ||cpu|| against the
manifest's tolerance); a program with "identical_to" must also print exactly what that program
printed. Needs only Python 3 + numpy and the CUDA driver.

  python3 test/Integration/GPU/harness/run_programs.py --dir .gpu-carry/programs --json $OUT/programs.json

Prints one line per program and "N of M programs match the CPU path"; exits 1 if any fails.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CALL_MAIN = "import ctypes, sys; ctypes.CDLL(sys.argv[1]).main()"
NUMBER = re.compile(r"[-+]?(?:nan|inf|\d+\.?\d*(?:e[-+]?\d+)?)", re.IGNORECASE)


def parse_printed(text, printed_as):
    """The arrays printed by printMemref* (MLIR's runner utils or print_memref.c)."""
    arrays = []
    for chunk in text.split("Unranked Memref")[1:]:
        head, _, data = chunk.partition("data =")
        sizes = [int(s) for s in head.split("sizes = [")[1].split("]")[0].split(",") if s.strip()]
        count = int(np.prod(sizes))
        values = NUMBER.findall(data)[:count] if count else []
        if printed_as == "i32":
            a = np.array([int(v) for v in values], np.int64).astype(np.uint32).view(np.float32)
        else:
            a = np.array([float(v) for v in values], np.float64)
        if a.size != count:
            raise ValueError(f"printed {a.size} numbers for sizes {sizes}")
        arrays.append(a.astype(np.float64).reshape(sizes))
    return arrays


def compare(got, expected, tolerances):
    if len(got) != len(expected):
        return False, f"printed {len(got)} arrays, the CPU path {len(expected)}", []
    errors = []
    for g, e in zip(got, expected):
        if g.shape != e.shape:
            return False, f"shape {g.shape} vs {e.shape}", errors
        if not np.all(np.isfinite(g)):
            return False, "non-finite values", errors
        norm = np.linalg.norm(e)
        errors.append(float(np.linalg.norm(g - e) / (norm if norm > 0 else 1.0)))
    tol = (tolerances * len(errors))[:len(errors)] if len(tolerances) == 1 else tolerances
    bad = [i for i, (err, t) in enumerate(zip(errors, tol)) if err > t]
    if bad:
        return False, f"arrays {bad} beyond tolerance", errors
    return True, "", errors


def identical(got, other, other_name):
    """Whether a program printed the same bits as `other_name` (the same program compiled
    another way, e.g. without the dy fold), which ran before it."""
    if other is None:
        return False, f"{other_name} did not run or failed"
    if len(got) != len(other) or not all(np.array_equal(a, b) for a, b in zip(got, other)):
        return False, f"differs from {other_name} (must be bit-identical)"
    return True, ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    folder = Path(args.dir).resolve()
    manifest = json.loads((folder / "manifest.json").read_text())
    results, passed, printed = [], 0, {}
    for entry in manifest:
        expected = parse_printed((folder / entry["expected"]).read_text(), entry["printed_as"])
        start = time.time()
        try:
            run = subprocess.run([sys.executable, "-c", CALL_MAIN, str(folder / entry["library"])],
                                 capture_output=True, text=True, timeout=args.timeout,
                                 env=dict(os.environ, MHC_RUNTIME_SYNC="1"))
            rc, stdout, stderr = run.returncode, run.stdout, run.stderr
        except subprocess.TimeoutExpired:
            rc, stdout, stderr = "timeout", "", ""
        seconds = time.time() - start
        if rc != 0:
            ok, why, errors = False, f"exit {rc}: {stderr.strip()[-600:]}", []
        else:
            try:
                got = printed[entry["name"]] = parse_printed(stdout, entry["printed_as"])
                ok, why, errors = compare(got, expected, entry["tolerances"])
                twin = entry.get("identical_to")
                if ok and twin is not None:
                    ok, why = identical(got, printed.get(twin), twin)
            except ValueError as e:
                ok, why, errors = False, str(e), []
        passed += ok
        worst = max(errors) if errors else None
        print(f"{entry['name']}: {'ok' if ok else 'FAIL ' + why} "
              f"(worst normwise error {worst if worst is None else f'{worst:.2e}'}, {seconds:.1f} s)",
              flush=True)
        results.append({"name": entry["name"], "ok": ok, "why": why, "errors": errors,
                        "tolerances": entry["tolerances"], "seconds": seconds})
    print(f"{passed} of {len(manifest)} programs match the CPU path")
    if args.json:
        Path(args.json).write_text(json.dumps({"programs": results, "passed": passed,
                                               "total": len(manifest)}, indent=1))
    return 0 if passed == len(manifest) else 1


if __name__ == "__main__":
    sys.exit(main())
