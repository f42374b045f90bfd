"""Checks and times one mHC sublayer's forward on the GPU: mhc's generated kernels (through their
AOT .so), PyTorch eager, torch.compile, and a device-to-device copy as the bandwidth ceiling, all in
one run. Writes one JSON file with the command, git commit, device and byte/FLOP floors.

    python bench/bench_sublayer.py --aot-dir .rt-carry/aot --out bench/results/sublayer-h200.json

Kernels timed (spec section 7; n = 4 streams, bf16 storage, b = 2 bytes):
  norm_project  mix = rsqrt-normalised x @ fn^T            floor: reads x            = n*C*b
  pre           split + sinkhorn + pre_apply from mix      floor: reads x, writes u  = (n+1)*C*b
  post          post_res + next layer's norm_project       floor: reads y, x, writes x_next = (2n+1)*C*b
  sublayer      steady state = pre + post                  floor: (3n+2)*C*b = 28C bytes for n = 4
The torch "sublayer" is norm_project + split + sinkhorn + pre_apply + post_res from x (same work, same
floor). Fraction of copy bandwidth = floor bytes / time / measured copy bandwidth.

mhc AOT libraries (in --aot-dir):
  libsublayer_C<C>.so  compiled from examples/aot/sublayer.mlir for width C (functions norm_project,
                       pre, post; see docs/Runtime.md)
  libpre_apply.so      examples/aot/pre_apply_gpu.mlir, a hand-written upstream-gpu kernel: the
                       runtime's end-to-end check (--check-runtime)
A library that is missing or fails is reported in the JSON ("error") and the run goes on.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "python"))

import torch_reference as tr  # noqa: E402
from mhc.testing import relative_error  # noqa: E402

# an all-zero reference fails anything but an exact zero
rel_err = functools.partial(relative_error, zero_ref_norm=1e-300)

# Datasheet rates for the H200 SXM (leads, not measurements): used only for the FLOP floor.
FP32_TFLOPS = 67.0
TF32_DENSE_TFLOPS = 494.7

TOL_BF16 = 1e-2   # relative error of bf16 outputs (u, x_next)
TOL_F32 = 1e-4    # relative error of f32 coefficients (mix, post, comb), TF32 products allowed


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------

def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_fn(fn, sets, warmup, iters):
    """Median milliseconds of fn(inputs), rotating over the input sets so L2 cannot hold them."""
    for i in range(warmup):
        fn(sets[i % len(sets)])
    sync()
    times = []
    if torch.cuda.is_available():
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)]
        for i, (s, e) in enumerate(events):
            s.record()
            fn(sets[i % len(sets)])
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in events]
    else:
        for i in range(iters):
            t0 = time.perf_counter()
            fn(sets[i % len(sets)])
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "iters": iters, "warmup": warmup}


def measure_copy(nbytes, warmup, iters, device):
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dsts = [torch.empty_like(src) for _ in range(2)]
    t = time_fn(lambda d: d.copy_(src), dsts, warmup, iters)
    moved = 2 * nbytes  # bytes read + written
    t["bytes_moved"] = moved
    t["GBps"] = moved / (t["median_ms"] * 1e-3) / 1e9
    return t


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------

def reference64(inp):
    """float64 reference of every intermediate (the inputs are the bf16/f32 stored values)."""
    x, n = inp["x"], inp["x"].shape[1]
    mix = tr.norm_project(x, inp["fn"], compute=torch.float64)
    pre, post, logits = tr.split_mixes(mix, inp["scale"].double(), inp["base"].double(), n)
    comb = tr.sinkhorn(logits)
    u = torch.einsum("ti,tic->tc", pre, x.double())
    xn = post[:, :, None] * inp["y"].double()[:, None, :] + torch.einsum("tij,tic->tjc", comb,
                                                                          x.double())
    return dict(mix=mix, pre=pre, post=post, comb=comb, u=u, x_next=xn)


# ---------------------------------------------------------------------------------------------
# mhc AOT libraries
# ---------------------------------------------------------------------------------------------

def load_library(path):
    from mhc.runtime import Library
    return Library(path)


def runtime_check(aot_dir, device, warmup, iters, copy_gbps):
    """The hand-written pre_apply kernel through libmhc_runtime: correctness on several shapes
    (outputs poisoned with NaN first) and one timing at the largest."""
    path = Path(aot_dir) / "libpre_apply.so"
    res = {"library": str(path), "checks": []}
    try:
        lib = load_library(path)
        ok = True
        for T, C in [(1, 100), (1000, 2560), (16384, 4096), (1000, 7168), (16384, 1280)]:
            g = torch.Generator(device=device).manual_seed(T * 7 + C)
            x = torch.randn(T, 4, C, generator=g, device=device).to(torch.bfloat16)
            pre = torch.rand(T, 4, generator=g, device=device) + 0.1
            u = torch.full((T, C), float("nan"), device=device, dtype=torch.bfloat16)
            lib.call("pre_apply", x, pre, u)
            ref = torch.einsum("ti,tic->tc", pre.double(), x.double())
            err = rel_err(u, ref)
            passed = err <= TOL_BF16
            ok &= passed
            res["checks"].append({"T": T, "C": C, "rel_err": err, "pass": passed})
        T, C = 16384, 4096
        sets = []
        for s in range(3):
            x = torch.randn(T, 4, C, device=device).to(torch.bfloat16)
            sets.append((x, torch.rand(T, 4, device=device), torch.empty(T, C, device=device,
                                                                         dtype=torch.bfloat16)))
        t = time_fn(lambda a: lib.call("pre_apply", *a), sets, warmup, iters)
        floor = T * 5 * C * 2
        t.update(floor_bytes=floor, fraction_of_copy=floor / (t["median_ms"] * 1e-3) / 1e9 / copy_gbps)
        t_eager = time_fn(lambda a: tr.pre_apply(a[0], a[1]), sets, warmup, iters)
        res.update(timing_T16384_C4096=t, torch_eager_pre_apply=t_eager)

        # Host cost of one call (descriptors + ctypes + launch), no synchronization.
        sync()
        t0 = time.perf_counter()
        for i in range(200):
            lib.call("pre_apply", *sets[0])
        res["host_us_per_call"] = (time.perf_counter() - t0) / 200 * 1e6
        sync()

        # The call must run on torch's current stream: on a side stream, after a long kernel
        # queued there, the result is only right if our launch was ordered behind it.
        side = torch.cuda.Stream()
        x, pre, u = sets[1]
        with torch.cuda.stream(side):
            torch.cuda._sleep(50_000_000)           # ~25+ ms of GPU time on the side stream
            x2 = x * 1                              # written on the side stream before the call
            u.fill_(float("nan"))
            lib.call("pre_apply", x2, pre, u)
        side.synchronize()
        err = rel_err(u, torch.einsum("ti,tic->tc", pre.double(), x.double()))
        res["caller_stream"] = {"rel_err": err, "pass": err <= TOL_BF16}
        ok &= err <= TOL_BF16

        # Errors: a failing driver call raises with the call and the CUDA error name.
        import ctypes
        rt = lib.runtime
        rt.lib.mgpuMemAlloc.restype = ctypes.c_void_p
        rt.lib.mgpuMemAlloc(ctypes.c_uint64(1 << 50), None, ctypes.c_bool(False))
        try:
            rt.check()
            res["error_report"] = {"message": None, "pass": False}
            ok = False
        except RuntimeError as e:
            res["error_report"] = {"message": str(e), "pass": "CUDA_ERROR_OUT_OF_MEMORY" in str(e)}
            ok &= res["error_report"]["pass"]
        # ... and the runtime works again afterwards.
        lib.call("pre_apply", *sets[0])
        sync()

        # Launch paths the pre_apply kernel does not take: > 48 KiB of dynamic shared memory, and
        # thread-block clusters (bench/runtime_check.mlir).
        extra = load_library(Path(aot_dir) / "libruntime_check.so")
        xs = torch.randn(4 * 16384, device=device)
        ys = torch.full_like(xs, float("nan"))
        extra.call("reverse_blocks", xs, ys)
        expect = xs.view(4, 16384).flip(1).reshape(-1)
        res["dynamic_smem_64KiB"] = {"pass": bool(torch.equal(ys, expect))}
        ranks = torch.full((64,), -1, device=device, dtype=torch.int32)
        extra.call("cluster_rank", ranks)
        want = torch.arange(64, device=device, dtype=torch.int32) % 2
        res["cluster_launch"] = {"pass": bool(torch.equal(ranks, want)),
                                 "ranks_head": ranks[:8].tolist()}
        ok &= res["dynamic_smem_64KiB"]["pass"] and res["cluster_launch"]["pass"]
        res["all_pass"] = ok
    except Exception as e:  # reported, not fatal: the rest of the benchmark still runs
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()
    return res


def mhc_path(aot_dir, C, sets, fn_next, warmup, iters, copy_gbps, floors):
    """Checks and times the generated kernels in libsublayer_C<C>.so."""
    path = Path(aot_dir) / f"libsublayer_C{C}.so"
    res = {"library": str(path)}
    if not path.exists():
        res["error"] = "library not built (the --mhc-gpu-pipeline did not produce it)"
        return res
    try:
        lib = load_library(path)
        inp = sets[0]
        x = inp["x"]
        T, n, _ = x.shape

        bf16, f32 = torch.bfloat16, torch.float32

        # Tensor results come back as runtime-allocated device buffers (docs/Runtime.md).
        def run_norm_project(a):
            return lib.call("norm_project", a["x"], a["fn"], results=[(2, f32)])

        def run_pre(a, mix):
            return lib.call("pre", a["x"], mix, a["scale"], a["base"],
                            results=[(2, bf16), (2, f32), (3, f32)])

        def run_post(a, post, comb):
            return lib.call("post", a["y"], a["x"], post, comb, fn_next, results=[(3, bf16), (2, f32)])

        mix = run_norm_project(inp)
        u, post, comb = run_pre(inp, mix)
        xn, mix_next = run_post(inp, post, comb)
        torch.cuda.synchronize()
        ref = reference64(inp)
        # The next layer's mix is checked on the x_next the kernel stored (bf16), so that a
        # last-bit rounding difference in x_next (checked above) does not count twice.
        ref["mix_next"] = tr.norm_project(xn, fn_next, compute=torch.float64)
        errs = {"mix": rel_err(mix, ref["mix"]), "post": rel_err(post, ref["post"]),
                "comb": rel_err(comb, ref["comb"]), "u": rel_err(u, ref["u"]),
                "x_next": rel_err(xn, ref["x_next"]), "mix_next": rel_err(mix_next, ref["mix_next"])}
        del ref
        tol = {k: (TOL_BF16 if k in ("u", "x_next") else TOL_F32) for k in errs}
        res["check"] = {k: {"rel_err": v, "tol": tol[k], "pass": v <= tol[k]} for k, v in errs.items()}
        res["all_pass"] = all(c["pass"] for c in res["check"].values())

        # Per input set: its mix and coefficients, computed once, so each kernel is timed alone.
        pairs = []
        for a in sets:
            m = run_norm_project(a)
            _, p_, c_ = run_pre(a, m)
            pairs.append((a, m, p_, c_))
        timings = {
            "norm_project": time_fn(lambda p: run_norm_project(p[0]), pairs, warmup, iters),
            "pre": time_fn(lambda p: run_pre(p[0], p[1]), pairs, warmup, iters),
            "post": time_fn(lambda p: run_post(p[0], p[2], p[3]), pairs, warmup, iters),
        }

        def both(p):
            _, p_, c_ = run_pre(p[0], p[1])
            return run_post(p[0], p_, c_)

        timings["sublayer"] = time_fn(both, pairs, warmup, iters)
        # Host time per pre+post pair (ctypes, descriptors, result wrapping): while it stays well
        # under the GPU time, the host runs ahead and the event timings hold no launch gaps.
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(20):
            both(pairs[i % len(pairs)])
        res["host_us_per_sublayer_call"] = (time.perf_counter() - t0) / 20 * 1e6
        torch.cuda.synchronize()
        for k, t in timings.items():
            annotate(t, floors[k], copy_gbps)
        res["timings"] = timings
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()
    return res


def annotate(t, floor_bytes, copy_gbps):
    gbps = floor_bytes / (t["median_ms"] * 1e-3) / 1e9
    t.update(floor_bytes=floor_bytes, floor_GBps=gbps, fraction_of_copy=gbps / copy_gbps,
             floor_ms_at_copy=floor_bytes / (copy_gbps * 1e9) * 1e3)


# ---------------------------------------------------------------------------------------------
# one width
# ---------------------------------------------------------------------------------------------

def bench_width(args, C, copy_gbps, device):
    T, n = args.T, args.n
    M = n * n + 2 * n
    b = 2  # bf16
    floors = {"norm_project": T * n * C * b, "pre": T * (n + 1) * C * b,
              "post": T * (2 * n + 1) * C * b, "sublayer": T * (3 * n + 2) * C * b}
    flops_np = T * (2 * M * n * C + 2 * n * C)
    out = {"C": C, "T": T, "n": n, "dtype": "bf16",
           "floors": {"bytes": floors, "bytes_per_token_sublayer": (3 * n + 2) * C * b,
                      "norm_project_flops": flops_np,
                      "norm_project_ms_at_fp32_datasheet": flops_np / (FP32_TFLOPS * 1e12) * 1e3,
                      "norm_project_ms_at_tf32_datasheet": flops_np / (TF32_DENSE_TFLOPS * 1e12) * 1e3,
                      "sublayer_ms_at_copy": floors["sublayer"] / (copy_gbps * 1e9) * 1e3}}
    sets = [tr.make_inputs(T, n, C, device=device, seed=100 * C + s) for s in range(args.rotate)]
    g = torch.Generator(device=device).manual_seed(C)
    fn_next = torch.randn(M, n * C, generator=g, device=device) / (n * C) ** 0.5

    # torch eager, checked against float64.
    inp = sets[0]
    ref = reference64(inp)
    u, xn = tr.sublayer(inp["x"], inp["y"], inp["fn"], inp["scale"], inp["base"])
    out["torch_eager_check"] = {"u": rel_err(u, ref["u"]), "x_next": rel_err(xn, ref["x_next"])}
    del ref

    def eager_sublayer(a):
        return tr.sublayer(a["x"], a["y"], a["fn"], a["scale"], a["base"])

    mixes = [tr.norm_project(a["x"], a["fn"]) for a in sets]
    coeffs = [tr.pre_kernel(a["x"], m, a["scale"], a["base"])[1:] for a, m in zip(sets, mixes)]
    pieces = list(zip(sets, mixes, coeffs))
    eager = {
        "sublayer": time_fn(eager_sublayer, sets, args.warmup, args.iters),
        "norm_project": time_fn(lambda a: tr.norm_project(a["x"], a["fn"]), sets, args.warmup, args.iters),
        "pre": time_fn(lambda p: tr.pre_kernel(p[0]["x"], p[1], p[0]["scale"], p[0]["base"]), pieces,
                       args.warmup, args.iters),
        "post": time_fn(lambda p: tr.post_kernel(p[0]["y"], p[0]["x"], p[2][0], p[2][1], fn_next), pieces,
                        args.warmup, args.iters),
    }
    for k, t in eager.items():
        annotate(t, floors[k], copy_gbps)
    out["torch_eager"] = eager

    if args.compile:
        try:
            t0 = time.time()
            compiled = torch.compile(tr.sublayer)
            cu, cxn = compiled(inp["x"], inp["y"], inp["fn"], inp["scale"], inp["base"])
            sync()
            compile_s = time.time() - t0
            ref = reference64(inp)
            check = {"u": rel_err(cu, ref["u"]), "x_next": rel_err(cxn, ref["x_next"])}
            del ref
            t = time_fn(lambda a: compiled(a["x"], a["y"], a["fn"], a["scale"], a["base"]), sets,
                        args.warmup, args.iters)
            annotate(t, floors["sublayer"], copy_gbps)
            out["torch_compile"] = {"sublayer": t, "compile_s": compile_s, "check": check}
        except Exception as e:
            out["torch_compile"] = {"error": f"{type(e).__name__}: {e}"}
        # The same with TF32 products allowed (the precision the mhc kernels may use, spec section 4).
        try:
            torch._dynamo.reset()
            torch.backends.cuda.matmul.allow_tf32 = True
            compiled = torch.compile(tr.sublayer)
            compiled(inp["x"], inp["y"], inp["fn"], inp["scale"], inp["base"])
            t = time_fn(lambda a: compiled(a["x"], a["y"], a["fn"], a["scale"], a["base"]), sets,
                        args.warmup, args.iters)
            annotate(t, floors["sublayer"], copy_gbps)
            out["torch_compile_tf32"] = {"sublayer": t}
        except Exception as e:
            out["torch_compile_tf32"] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch._dynamo.reset()

    if args.aot_dir:
        out["mhc"] = mhc_path(args.aot_dir, C, sets, fn_next, args.warmup, args.iters, copy_gbps, floors)
    return out


def git_commit():
    if os.environ.get("MHC_GIT_COMMIT"):
        return os.environ["MHC_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def summary_rows(results):
    rows = []
    for w in results["widths"]:
        C = w["C"]
        for name, block in (("eager", w.get("torch_eager", {})),
                            ("compile", w.get("torch_compile", {})),
                            ("comp-tf32", w.get("torch_compile_tf32", {})),
                            ("mhc", w.get("mhc", {}).get("timings", {}))):
            for k, t in block.items():
                if isinstance(t, dict) and "median_ms" in t:
                    rows.append(f"C={C:5d} {name:8s} {k:13s} {t['median_ms']:9.3f} ms "
                                f"{100 * t['fraction_of_copy']:6.1f}% of copy")
        if "error" in w.get("mhc", {}):
            rows.append(f"C={C:5d} mhc      error: {w['mhc']['error'].splitlines()[0][:100]}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, default=16384)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--C", type=int, nargs="+", default=[4096, 2560])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rotate", type=int, default=3, help="input sets cycled through while timing")
    p.add_argument("--copy-bytes", type=int, default=1 << 30)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--aot-dir", default=None, help="folder with the mhc AOT libraries")
    p.add_argument("--check-runtime", action="store_true",
                   help="check and time the hand-written kernel through libmhc_runtime")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "wrapper_command": os.environ.get("MHC_BENCH_WRAPPER"),
        "git_commit": git_commit(),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tolerances": {"bf16_outputs_rel": TOL_BF16, "f32_coefficients_rel": TOL_F32},
        "flop_rates_datasheet_tflops": {"fp32": FP32_TFLOPS, "tf32_dense": TF32_DENSE_TFLOPS},
    }
    results["copy"] = measure_copy(args.copy_bytes, args.warmup, args.iters, device)
    copy_gbps = results["copy"]["GBps"]
    results["torch_matches_numpy_reference"] = tr.check_against_numpy()
    if args.check_runtime and args.aot_dir:
        results["runtime_check"] = runtime_check(args.aot_dir, device, args.warmup, args.iters, copy_gbps)
    results["widths"] = []
    for C in args.C:
        results["widths"].append(bench_width(args, C, copy_gbps, device))
        torch.cuda.empty_cache() if device == "cuda" else None

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"device {results['device']}  copy {copy_gbps:.0f} GB/s (read+write)")
    rc = results.get("runtime_check")
    if rc:
        if "error" in rc:
            print("runtime check: ERROR", rc["error"])
        else:
            t = rc["timing_T16384_C4096"]
            print(f"runtime check: {'PASS' if rc['all_pass'] else 'FAIL'} "
                  f"{[round(c['rel_err'], 6) for c in rc['checks']]}; hand-written pre_apply "
                  f"{t['median_ms']:.3f} ms = {100 * t['fraction_of_copy']:.1f}% of copy "
                  f"(torch eager {rc['torch_eager_pre_apply']['median_ms']:.3f} ms)")
    for row in summary_rows(results):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
