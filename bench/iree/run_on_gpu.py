#!/usr/bin/env python3
"""Runs the IREE models of bench/iree/prepare.py on the GPU: logits against mhc's CPU path, and time.

On the GPU machine (Python 3 + numpy, the CUDA driver; no IREE install needed: the runtime
comes from the prepared folder):

  python3 bench/iree/run_on_gpu.py --carry .embed-carry/iree --json $OUT/iree-h200.json

For every model of <carry>/manifest.json: load the .vmfb on IREE's CUDA driver, make the
inputs (bench/iree/weights.py; the checksum must equal the one recorded at preparation),
upload them once, run `forward`, compare the logits with the CPU path's (max |difference|
against atol + rtol * max |reference|), then time the forward pass (warm-up, then the
median of N calls; each call returns when the device is done). Prints one line per model
and the orig/mhc time ratio of each model; exits 1 if any model fails to match.
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ATOL = 1e-4


def ensure_libcuda():
    """IREE's CUDA driver dlopens the unversioned libcuda.so; many machines have only
    libcuda.so.1. Re-run with a symlink on LD_LIBRARY_PATH (the loader reads it at start)."""
    try:
        ctypes.CDLL("libcuda.so")
        return
    except OSError:
        pass
    if os.environ.get("MHC_IREE_LIBCUDA_LINK"):
        raise SystemExit("run_on_gpu: libcuda.so still not loadable through "
                         f"{os.environ['MHC_IREE_LIBCUDA_LINK']}")
    found = ctypes.util.find_library("cuda")  # e.g. "libcuda.so.1"
    if not found:
        raise SystemExit("run_on_gpu: no CUDA driver (libcuda.so.1) on this machine")
    link_dir = Path(tempfile.mkdtemp(prefix="libcuda-link-"))
    (link_dir / "libcuda.so").symlink_to(_resolve_library_path(found))
    env = dict(os.environ, MHC_IREE_LIBCUDA_LINK=str(link_dir),
               LD_LIBRARY_PATH=f"{link_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _resolve_library_path(name):
    """The file the loader would use for `name` (from ldconfig's cache)."""
    if os.path.isabs(name):
        return name
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.strip().startswith(name) and "=>" in line:
            return line.split("=>")[1].strip()
    raise SystemExit(f"run_on_gpu: cannot find the path of {name}")


def gpu_name():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--carry", default=str(HERE.parents[1] / ".embed-carry" / "iree"))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--device", default="cuda",
                    help="IREE driver (local-task: models prepared with --target llvm-cpu)")
    ap.add_argument("--iterations", type=int, default=0, help="timed calls (0: 200 tiny, 20 large)")
    args = ap.parse_args()
    if args.device == "cuda":
        ensure_libcuda()
    carry = Path(args.carry).resolve()
    # The carried runtime is the cp312 abi3 wheel; an older Python uses an installed one.
    if (carry / "runtime").exists() and sys.version_info >= (3, 12):
        sys.path.insert(0, str(carry / "runtime"))
    sys.path.insert(0, str(HERE))
    import numpy as np
    import iree.runtime as ireert
    import weights

    manifest = json.loads((carry / "manifest.json").read_text())
    config = ireert.Config(args.device)
    results, failures = [], 0
    logits_by_variant = {}
    for entry in manifest["models"]:
        if args.only and entry["name"] not in args.only.split(","):
            continue
        record = {"name": entry["name"], "model": entry["model"], "variant": entry["variant"]}
        try:
            inputs = weights.make_inputs(entry["inputs"], manifest["streams"])
            if weights.checksum(inputs) != entry["inputs_checksum"]:
                raise RuntimeError("the inputs made here differ from the prepared ones "
                                   "(weights.py checksum)")
            ctx = ireert.SystemContext(config=config)
            ctx.add_vm_module(ireert.VmModule.mmap(config.vm_instance, str(carry / entry["vmfb"])))
            forward = ctx.modules.module[entry["function"]]
            device_inputs = [ireert.asdevicearray(config.device, a) for a in inputs]
            logits = forward(*device_inputs).to_host()
            record["logits_shape"] = list(logits.shape)
            record["finite"] = bool(np.all(np.isfinite(logits)))
            if "reference" in entry:
                ref = np.load(carry / entry["reference"])
                diff = float(np.max(np.abs(logits.astype(np.float64) - ref)))
                bound = ATOL + entry.get("rtol", 1e-4) * float(np.max(np.abs(ref)))
                record.update(max_abs_diff=diff, bound=bound, max_abs_ref=float(np.max(np.abs(ref))),
                              reference=entry.get("reference_kind", "mhc-cpu-path"),
                              matches_cpu_path=bool(diff <= bound and record["finite"]))
            # IREE's codegen of the mhc ops and mhc's own kernels, on the same inputs.
            logits_by_variant[(entry["model"], entry["variant"])] = logits
            other = logits_by_variant.get((entry["model"], "mhc"))
            if entry["variant"] == "mhc-fast" and other is not None:
                record["max_abs_diff_to_mhc_variant"] = float(np.max(np.abs(logits - other)))
            n = args.iterations or (20 if entry["large"] else 200)
            for _ in range(3 if entry["large"] else 20):
                forward(*device_inputs)
            times = []
            for _ in range(n):
                start = time.perf_counter()
                forward(*device_inputs)
                times.append(time.perf_counter() - start)
            record.update(calls=n, median_ms=1e3 * float(np.median(times)),
                          min_ms=1e3 * float(np.min(times)))
        except Exception as e:  # one model's failure is reported, the others still run
            record["error"] = f"{type(e).__name__}: {e}"
        ok = "error" not in record and record.get("matches_cpu_path", record.get("finite", False))
        failures += not ok
        record["ok"] = bool(ok)
        results.append(record)
        if "error" in record:
            print(f"{entry['name']}: FAIL {record['error']}", flush=True)
        else:
            check = (f"max |logits - {record['reference']}| {record['max_abs_diff']:.2e} "
                     f"(bound {record['bound']:.1e})" if "max_abs_diff" in record else "no reference")
            if "max_abs_diff_to_mhc_variant" in record:
                check += f", to the mhc variant {record['max_abs_diff_to_mhc_variant']:.2e}"
            print(f"{entry['name']}: {'ok' if ok else 'FAIL'} {check}; "
                  f"{record['median_ms']:.3f} ms/forward (median of {n}, min {record['min_ms']:.3f})",
                  flush=True)
    by = {(r["model"], r["variant"]): r for r in results if "median_ms" in r}
    ratios = {}
    for (model, variant), r in by.items():
        if variant != "orig" and (model, "orig") in by:
            base = by[(model, "orig")]["median_ms"]
            ratios[f"{model}-{variant}"] = r["median_ms"] / base
            print(f"{model}: {variant}/orig forward time {r['median_ms'] / base:.2f}x "
                  f"({r['median_ms']:.3f} vs {base:.3f} ms)")
    print(f"{len(results) - failures} of {len(results)} models ok")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu_name(), "streams": manifest["streams"],
                                               "models": results, "time_over_orig": ratios}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
