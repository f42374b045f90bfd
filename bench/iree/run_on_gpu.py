#!/usr/bin/env python3
"""Runs the IREE models of bench/iree/prepare.py on the GPU: logits against mhc's CPU path, and time.

On the GPU machine (Python 3 + numpy, the CUDA driver; no IREE install needed: the runtime
comes from the prepared folder):

  python3 bench/iree/run_on_gpu.py --carry .embed-carry/iree --json $OUT/iree-h200.json

For every model of <carry>/manifest.json, in a process of its own (a kernel fault must not
take the other models with it): load the .vmfb on IREE's CUDA driver, make the inputs
(bench/iree/weights.py; the checksum must equal the one recorded at preparation), upload them
once, run `forward`, compare the logits with the reference's (max |difference| against
atol + rtol * max |reference|), then time the forward pass (warm-up, then the median of N
calls; each call returns when the device is done). Prints one line per model and each
variant's time over the original model's; exits 1 if any model fails to match.
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


def run_model(entry, carry, streams, device, iterations, logits_dir):
    """One model, in this process: the record of its check and timing."""
    import numpy as np
    import iree.runtime as ireert
    import weights

    record = {"name": entry["name"], "model": entry["model"], "variant": entry["variant"]}
    inputs = weights.make_inputs(entry["inputs"], streams)
    if weights.checksum(inputs) != entry["inputs_checksum"]:
        raise RuntimeError("the inputs made here differ from the prepared ones (weights.py checksum)")
    config = ireert.Config(device)
    ctx = ireert.SystemContext(config=config)
    start = time.perf_counter()
    ctx.add_vm_module(ireert.VmModule.mmap(config.vm_instance, str(carry / entry["vmfb"])))
    record["load_seconds"] = time.perf_counter() - start  # includes the driver's PTX JIT
    forward = ctx.modules.module[entry["function"]]
    device_inputs = [ireert.asdevicearray(config.device, a) for a in inputs]
    logits = forward(*device_inputs).to_host()
    np.save(logits_dir / f"{entry['name']}.npy", logits)
    record["logits_shape"] = list(logits.shape)
    record["finite"] = bool(np.all(np.isfinite(logits)))
    if "reference" in entry:
        ref = np.load(carry / entry["reference"])
        diff = float(np.max(np.abs(logits.astype(np.float64) - ref)))
        bound = ATOL + entry.get("rtol", 1e-4) * float(np.max(np.abs(ref)))
        record.update(max_abs_diff=diff, bound=bound, max_abs_ref=float(np.max(np.abs(ref))),
                      reference=entry.get("reference_kind", "mhc-cpu-path"),
                      matches_cpu_path=bool(diff <= bound and record["finite"]))
    # IREE's codegen of the mhc ops against mhc's own kernels, on the same inputs.
    other = logits_dir / f"{entry['model']}-mhc.npy"
    if entry["variant"] == "mhc-fast" and other.exists():
        record["max_abs_diff_to_mhc_variant"] = float(np.max(np.abs(logits - np.load(other))))
    n = iterations or (20 if entry["large"] else 200)
    for _ in range(3 if entry["large"] else 20):
        forward(*device_inputs)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        forward(*device_inputs)
        times.append(time.perf_counter() - start)
    record.update(calls=n, median_ms=1e3 * float(np.median(times)), min_ms=1e3 * float(np.min(times)))
    return record


def report(record):
    ok = "error" not in record and record.get("matches_cpu_path", record.get("finite", False))
    record["ok"] = bool(ok)
    if "error" in record:
        print(f"{record['name']}: FAIL {record['error']}", flush=True)
        return ok
    check = (f"max |logits - {record['reference']}| {record['max_abs_diff']:.2e} "
             f"(bound {record['bound']:.1e})" if "max_abs_diff" in record else "no reference")
    if "max_abs_diff_to_mhc_variant" in record:
        check += f", to the mhc variant {record['max_abs_diff_to_mhc_variant']:.2e}"
    print(f"{record['name']}: {'ok' if ok else 'FAIL'} {check}; {record['median_ms']:.3f} ms/forward "
          f"(median of {record['calls']}, min {record['min_ms']:.3f}; load {record['load_seconds']:.1f} s)",
          flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--carry", default=str(HERE.parents[1] / ".embed-carry" / "iree"))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--device", default="cuda",
                    help="IREE driver (local-task: models prepared with --target llvm-cpu)")
    ap.add_argument("--iterations", type=int, default=0, help="timed calls (0: 200 tiny, 20 large)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per model")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # run one model, write its record there
    args = ap.parse_args()
    if args.device == "cuda":
        ensure_libcuda()
    carry = Path(args.carry).resolve()
    # The carried runtime is the cp312 abi3 wheel; an older Python uses an installed one.
    if (carry / "runtime").exists() and sys.version_info >= (3, 12):
        sys.path.insert(0, str(carry / "runtime"))
    sys.path.insert(0, str(HERE))
    manifest = json.loads((carry / "manifest.json").read_text())
    entries = [e for e in manifest["models"] if not args.only or e["name"] in args.only.split(",")]

    if args.child:
        out = Path(args.child)
        try:
            record = run_model(entries[0], carry, manifest["streams"], args.device, args.iterations,
                               out.parent)
        except Exception as e:
            record = {"name": entries[0]["name"], "model": entries[0]["model"],
                      "variant": entries[0]["variant"], "error": f"{type(e).__name__}: {e}"}
        out.write_text(json.dumps(record))
        return 0

    # Each model in its own process: a kernel fault leaves the CUDA context unusable, and must
    # not take the other models with it.
    results, failures = [], 0
    with tempfile.TemporaryDirectory(prefix="iree-run-") as tmp:
        for entry in entries:
            out = Path(tmp) / f"{entry['name']}.json"
            cmd = [sys.executable, __file__, "--carry", str(carry), "--only", entry["name"],
                   "--device", args.device, "--iterations", str(args.iterations), "--child", str(out)]
            try:
                child = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                record = json.loads(out.read_text()) if out.exists() else {
                    "name": entry["name"], "model": entry["model"], "variant": entry["variant"],
                    "error": f"exit {child.returncode}: {child.stderr.strip()[-800:]}"}
            except subprocess.TimeoutExpired:
                record = {"name": entry["name"], "model": entry["model"], "variant": entry["variant"],
                          "error": f"timed out after {args.timeout:.0f} s"}
            failures += not report(record)
            results.append(record)
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
