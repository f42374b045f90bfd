#!/usr/bin/env python3
"""Forward + backward of one mHC sublayer on the GPU: mhc's kernels against the public
implementations, PyTorch eager and torch.compile of the same math, and copy bandwidth, all in one
process (T = 16384 tokens unless --T says otherwise, n = 4, bf16; C from --Cs).

  MHC_CACHE=.mhc-cache python3 bench/bench_backward.py --json $OUT/backward.json

* mhc: the forward is the steady-state pair of the forward benchmark (pre from the previous
  sublayer's mix; post_res + the next sublayer's norm_project: op hc_steady_forward), the
  backward the fused sublayer backward (hc_sublayer_backward: rows, cols, params kernels, and
  a token kernel after rows where rows are <= 4 KB),
  launched from the kernel cache of mhc.torch (manifest-driven, on torch's stream). Also timed:
  the backward as training runs it (`backward_split_ms`): mhc.torch's post step's backward
  (hc_post_backward, before the sublayer's backward: dy) and pre step's (hc_pre_backward, after
  it: du), each kernel alone too (its rows read x and dout twice: 28C in all instead of 24C);
  with kernel sets that have it, `backward_folded_ms`: the dy fold's hc_joint_backward_lower (a
  sublayer in the middle of a compiled stack: dy came from above, one rows pass reads dout, x,
  y and du, and the cols kernel also writes the lower sublayer's dy: 25C).
* peers (../shared/peers, carried as .peers): `load.SUBLAYER[provider](x, y, fn, scale, base)`
  -> (u, x_next) with requires_grad inputs, then backward with the same cotangents (du, dx_next).
* floors (elements read + written per token, in units of C; bf16: 2 bytes each): forward 14C
  (x 4C + y in, u out, x 4C in, x_next 4C out: the spec's 28C bytes, section 7); backward rows 11C
  (dout 4C + x 4C + y + du in, dy out), cols 13C (dout 4C + x 4C + du in, dx 4C out), 24C in all;
  the time at the measured copy bandwidth is each floor. (Until the sixth session the forward was
  counted as 28 elements, the spec's byte count, so the forward and forward + backward floors in
  the results recorded before then are twice too high; rows, cols and backward were right.)
Timing: CUDA events around each step, back to back; a step the host takes longer to queue than
the GPU to run is queued behind a sleep kernel, so that the host's launch time does not count
(since the thirtieth session; before, short kernels timed alone read 20-30 µs too long), three
input sets rotated (far over the 60 MB L2), warm-up first, median of --iters.
"""
import argparse, json, os, sys, time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
from mhc.torch import kernels as K  # noqa: E402

N, T = 4, 16384


def median_ms(step, sets, warmup, iters):
    """Median GPU ms of `step` over `iters` calls, timed back to back with CUDA events. Where the
    host takes longer to queue a call than the GPU to run it (a short kernel launched from
    Python), each call is queued behind a sleep kernel 1.5x as long as the host's time, so that
    the host's launch time does not count (it did before the thirtieth session: a kernel of a
    few µs timed alone read 20-37 µs). Steps the GPU takes longer to run than the host to queue
    run back to back as before, with no idle time between them to change the clocks."""
    host_s = gpu_s = 0.0
    for i in range(warmup):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t = time.perf_counter()
        step(sets[i % len(sets)])
        host_s = time.perf_counter() - t
        b.record()
        torch.cuda.synchronize()
        gpu_s = a.elapsed_time(b) * 1e-3
    # In cycles of the 2 GHz boost clock: at lower clocks the sleep only lasts longer.
    queue_ahead = int(1.5 * host_s * 2e9) if host_s > 0.5 * gpu_s else 0
    evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
           for _ in range(iters)]
    for i, (a, b) in enumerate(evs):
        if queue_ahead:
            torch.cuda._sleep(queue_ahead)
        a.record()
        step(sets[i % len(sets)])
        b.record()
    torch.cuda.synchronize()
    times = sorted(a.elapsed_time(b) for a, b in evs)
    return times[len(times) // 2]


def copy_gbps():
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = median_ms(lambda _: dst.copy_(src), [None], 3, 30)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def make_sets(C, count=3):
    M = N * N + 2 * N
    g = torch.Generator(device="cuda").manual_seed(C)
    sets = []
    for _ in range(count):
        r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
        sets.append(dict(
            x=r(T, N, C).bfloat16(), y=r(T, C).bfloat16(), fn=r(M, N * C) / (N * C) ** 0.5,
            scale=torch.rand(3, generator=g, device="cuda") + 0.25, base=r(M) * 0.5,
            mix=r(T, M), du=r(T, C).bfloat16(), dxn=r(T, N, C).bfloat16()))
    return sets


def mhc_times(C, sets, warmup, iters, iterations=20):
    key = K.KernelKey(n=N, C=C, dtype="bf16", iterations=iterations)
    ks = K.KernelSet(key.folder(os.path.abspath(os.environ.get("MHC_CACHE", ".mhc-cache"))))
    stream = lambda: torch.cuda.current_stream().cuda_stream  # noqa: E731

    def fwd(s):
        return ks.run("hc_steady_forward", s["x"], s["mix"], s["scale"], s["base"], s["y"],
                      s["fn"], stream=stream())

    def bwd(s):
        return ks.run("hc_sublayer_backward", s["x"], s["y"], s["fn"], s["scale"], s["base"],
                      s["mix"], s["du"], s["dxn"], stream=stream())

    def both(s):
        fwd(s)
        bwd(s)
    out = dict(forward_ms=median_ms(fwd, sets, warmup, iters),
               backward_ms=median_ms(bwd, sets, warmup, iters),
               forward_backward_ms=median_ms(both, sets, warmup, iters))
    for s in sets:   # the post step's coefficients and gradients the pre step's backward takes
        _, s["post"], s["comb"], _ = ks.run("hc_pre", s["x"], s["fn"], s["scale"], s["base"])
        _, s["dpost"], s["dcomb"] = ks.run("hc_post_backward", *_args(s, "hc_post_backward"))

    def split(s):
        for op in ("hc_post_backward", "hc_pre_backward"):
            ks.run(op, *_args(s, op), stream=stream())
    out["backward_split_ms"] = median_ms(split, sets, warmup, iters)
    ops = ["hc_sublayer_backward", "hc_post_backward", "hc_pre_backward"]
    if "hc_joint_backward_lower" in ks.plans:
        # The dy fold (a sublayer in the middle of a compiled stack): its dy came from the
        # sublayer above; one op computes the rest and the lower sublayer's dy.
        for s in sets:
            s["post_lower"] = s["post"]

        def folded(s):
            ks.run("hc_joint_backward_lower", *_args(s, "hc_joint_backward_lower"),
                   stream=stream())
        out["backward_folded_ms"] = median_ms(folded, sets, warmup, iters)
        ops.append("hc_joint_backward_lower")
    # Each backward kernel alone (same launches as the op, one at a time).
    per = {}
    for op in ops:
        for idx, launch in enumerate(ks.manifest["ops"][op]["launches"]):
            per[launch["kernel"]] = median_ms(lambda s, i=idx: _one_launch(ks, op, i, s), sets,
                                              warmup, iters)
    out["backward_kernels_ms"] = per
    return out


# The op arguments' names in a set (dx_next is "dxn" there).
def _args(s, op):
    return [s["dxn" if name == "dx_next" else name] for name in K.OP_BUFFERS[op][0]]


def _one_launch(ks, op, index, s):
    """Launch `index` of op on set s (its buffers kept per set and op)."""
    plan = ks.plans[op]
    if ("_bufs", op) not in s:
        args = _args(s, op)
        results = K.allocate_results(op, args)
        Tn = s["x"].numel() // (N * s["x"].shape[-1])
        numels, grids = plan._shapes(Tn)
        scratch = [torch.empty(nm, dtype=torch.float32, device="cuda") for nm in numels]
        s["_bufs", op] = (args + results + scratch, Tn, grids)
        for i in range(len(plan.launches)):   # the scratch a later kernel reads
            _one_launch(ks, op, i, s)
    buffers, Tn, grids = s["_bufs", op]
    fn, _, _, gy, gz, block, smem, idx, ptr_t, num_t = plan.launches[index]
    ptrs = [buffers[i].data_ptr() for i in idx]
    nums = [buffers[i].numel() for i in idx]
    rc = ks.runtime.lib.mhcLaunchFlat(fn, grids[index], gy, gz, block[0], block[1], block[2], smem,
                                      torch.cuda.current_stream().cuda_stream, Tn, len(idx),
                                      ptr_t(*ptrs), num_t(*nums))
    if rc:
        raise RuntimeError(ks.runtime.lib.mhcRuntimeGetErrorMessage().decode())


def peer_times(peers, provider, C, sets, warmup, iters):
    fwd_bwd = peers.SUBLAYER[provider]
    prepared = []
    for s in sets:
        x = s["x"].view(1, T, N, C).detach().clone().requires_grad_()
        y = s["y"].view(1, T, C).detach().clone().requires_grad_()
        fn, sc, b = (t.detach().clone().requires_grad_() for t in (s["fn"], s["scale"], s["base"]))
        args = peers.prepare(provider, x, y, fn, sc, b)
        u, xn = fwd_bwd(*args)        # cotangents in the provider's own layout
        prepared.append((args, torch.randn_like(u), torch.randn_like(xn)))

    def step(p):
        args, du, dxn = p
        u, xn = fwd_bwd(*args)
        torch.autograd.backward((u, xn), (du, dxn))

    def fwd(p):   # the training forward (autograd graph built, then dropped)
        fwd_bwd(*p[0])
    return dict(forward_ms=median_ms(fwd, prepared, warmup, iters),
                forward_backward_ms=median_ms(step, prepared, warmup, iters))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--Cs", default="4096,2560")
    ap.add_argument("--peers", default=".peers")
    ap.add_argument("--providers", default="te_triton,torch_eager,liger_triton,torch_compile,tk_tilelang")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--T", type=int, default=T, help="tokens (default 16384)")
    ap.add_argument("--iterations", type=int, default=20,
                    help="Sinkhorn iterations of mhc's kernels (their cost: time at 20 against 1)")
    a = ap.parse_args()
    globals()["T"] = a.T
    peers = None
    try:
        sys.path.insert(0, os.path.abspath(a.peers))
        import load as peers  # noqa: F401
    except Exception as e:  # noqa: BLE001
        print(f"peers not loaded: {e!r}")
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, T=T, n=N,
               commit=os.environ.get("MHC_GIT_COMMIT", ""), copy_gbps=copy_gbps(), widths={})
    bw = out["copy_gbps"] * 1e9
    print(f"copy bandwidth {out['copy_gbps']:.0f} GB/s (read + write)", flush=True)

    def save():
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)

    def report(C, name, r, floors):
        if "error" in r:
            print(f"  C={C} {name:14s} {r['error'][:160]}", flush=True)
            return
        line = f"  C={C} {name:14s} fwd {r['forward_ms']:.3f}  fwd+bwd {r['forward_backward_ms']:.3f} ms"
        if "backward_ms" in r:
            line += (f"  bwd {r['backward_ms']:.3f} ms ({floors['backward'] / r['backward_ms']:.0%} of "
                     f"copy on 24C), as trained {r['backward_split_ms']:.3f} ms" +
                     (f", folded {r['backward_folded_ms']:.3f} ms" if "backward_folded_ms" in r
                      else "") + "; " +
                     ", ".join(f"{k.removeprefix('mhc_')} {v:.3f}" for k, v in
                               r["backward_kernels_ms"].items()))
        print(line, flush=True)

    for C in [int(c) for c in a.Cs.split(",")]:
        sets = make_sets(C)
        floors = {k: v * C * 2 * T / bw * 1e3 for k, v in
                  dict(forward=14, backward=24, rows=11, cols=13, forward_backward=38).items()}
        row = out["widths"][str(C)] = dict(floors_ms=floors)
        print(f"C={C}: floors fwd {floors['forward']:.3f} bwd {floors['backward']:.3f} "
              f"(rows {floors['rows']:.3f}, cols {floors['cols']:.3f}) ms", flush=True)
        try:
            row["mhc"] = mhc_times(C, sets, a.warmup, a.iters, a.iterations)
        except Exception as e:  # noqa: BLE001
            row["mhc"] = dict(error=repr(e)[:500])
        report(C, "mhc", row["mhc"], floors)
        save()
        for provider in a.providers.split(","):
            if peers is None or provider not in getattr(peers, "SUBLAYER", {}):
                row[provider] = dict(error="not loaded")
            else:
                try:
                    row[provider] = peer_times(peers, provider, C, sets, a.warmup, a.iters)
                except Exception as e:  # noqa: BLE001
                    row[provider] = dict(error=repr(e)[:500])
            report(C, provider, row[provider], floors)
            save()
            torch.cuda.empty_cache()
        del sets
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
