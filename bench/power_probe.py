#!/usr/bin/env python3
"""Power and SM clock of the GPU while one workload runs in a loop: each of mhc's kernels (as
mhc.torch launches them) beside a copy and the block's largest matmul, T = 16384, n = 4, bf16.

Why: the transformer block of block_bench.py runs the H200 at its power cap (nvidia-smi: ~690 W,
SM clock 1.5-1.65 GHz instead of 1.98, throttle reason "SW power cap"), so a step's time follows
its energy, and mHC's cost in the block is the energy of its kernels, not their time alone. Here
each workload runs back to back for --seconds while a thread reads NVML (power, SM clock) every
20 ms; the first second is dropped (NVML's power reading averages over about a second).

    MHC_CACHE=.mhc-cache python3 bench/power_probe.py --json $OUT/power.json

Prints and writes per workload: ms per call (CUDA events over the loop), median power (W), median
SM clock (MHz), energy per call (mJ = W x ms).
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import threading
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
from mhc.torch import kernels as K  # noqa: E402
from bench_backward import N, T, make_sets  # noqa: E402


class Nvml:
    """Power (W) and SM clock (MHz) of GPU 0 through libnvidia-ml (ctypes: no Python package)."""

    def __init__(self):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        if self.lib.nvmlInit_v2() != 0:
            raise RuntimeError("nvmlInit_v2 failed")
        self.handle = ctypes.c_void_p()
        index = getattr(torch.cuda, "_get_nvml_device_index", lambda d: d)(0)
        if self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.handle)) != 0:
            raise RuntimeError("nvmlDeviceGetHandleByIndex_v2 failed")

    def sample(self):
        mw, mhz = ctypes.c_uint(), ctypes.c_uint()
        self.lib.nvmlDeviceGetPowerUsage(self.handle, ctypes.byref(mw))
        self.lib.nvmlDeviceGetClockInfo(self.handle, 1, ctypes.byref(mhz))   # 1: NVML_CLOCK_SM
        return mw.value / 1e3, mhz.value


def probe(nvml, step, seconds):
    """Runs `step` back to back for `seconds`; (ms per call, median W, median MHz, samples)."""
    samples, stop = [], threading.Event()

    def watch():
        start = time.perf_counter()
        while not stop.is_set():
            if time.perf_counter() - start > 1.0:
                samples.append(nvml.sample())
            time.sleep(0.02)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    thread = threading.Thread(target=watch)
    thread.start()
    calls, begin = 0, time.perf_counter()
    a.record()
    while time.perf_counter() - begin < seconds:
        for _ in range(10):
            step()
        calls += 10
        torch.cuda.synchronize()         # keeps the queue short so the loop ends on time
    b.record()
    torch.cuda.synchronize()
    stop.set()
    thread.join()
    ms = a.elapsed_time(b) / calls
    watts = statistics.median(w for w, _ in samples) if samples else float("nan")
    mhz = statistics.median(m for _, m in samples) if samples else float("nan")
    return ms, watts, mhz, len(samples)


def workloads(C):
    key = K.KernelKey(n=N, C=C, dtype="bf16")
    ks = K.KernelSet(key.folder(os.path.abspath(os.environ.get("MHC_CACHE", ".mhc-cache"))))
    stream = lambda: torch.cuda.current_stream().cuda_stream  # noqa: E731
    s = make_sets(C, count=1)[0]      # bench_backward.py's inputs; the mix is hc_pre's, below
    x, y, du, dxn = s["x"], s["y"], s["du"], s["dxn"]
    fn, scale, base = s["fn"], s["scale"], s["base"]
    attrs = (20, 1e-6, 1e-6, 2.0)
    u, post, comb, mix = ks.run("hc_pre", x, fn, scale, base, *attrs, stream=stream())
    dy, dpost, dcomb = ks.run("hc_post_backward", y, x, post, comb, dxn, stream=stream())
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    g = torch.Generator(device="cuda").manual_seed(C)
    a = torch.randn(T, C, generator=g, device="cuda").bfloat16()
    w = torch.randn(C, 8 * C, generator=g, device="cuda").bfloat16()
    run = lambda op, *args: (lambda: ks.run(op, *args, stream=stream()))  # noqa: E731
    return {
        "copy 1 GiB": lambda: dst.copy_(src),
        "matmul [T, C] @ [C, 8C]": lambda: a @ w,
        "hc_pre": run("hc_pre", x, fn, scale, base, *attrs),
        "hc_pre_mixed": run("hc_pre_mixed", x, mix, scale, base, *attrs),
        "hc_post": run("hc_post", y, x, post, comb),
        "hc_post_project": run("hc_post_project", y, x, post, comb, fn, *attrs),
        "hc_post_backward": run("hc_post_backward", y, x, post, comb, dxn),
        "hc_pre_backward": run("hc_pre_backward", x, fn, scale, base, mix, du, dpost, dcomb, dxn,
                               *attrs),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--C", type=int, default=4096)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--only", default="", help="comma-separated workloads to run (default: all)")
    args = p.parse_args(argv)
    nvml = Nvml()
    rows = []
    wanted = [w for w in args.only.split(",") if w]
    for name, step in workloads(args.C).items():
        if wanted and name not in wanted:
            continue
        ms, watts, mhz, count = probe(nvml, step, args.seconds)
        rows.append({"workload": name, "ms": ms, "watts": watts, "sm_mhz": mhz,
                     "energy_mj": watts * ms, "samples": count})
        print(f"  {name:26s} {ms:8.3f} ms  {watts:5.0f} W  {mhz:5.0f} MHz  "
              f"{watts * ms:7.1f} mJ per call", flush=True)
    with open(args.json, "w") as fh:
        json.dump({"command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
                   "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "T": T, "n": N, "C": args.C, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
