#!/usr/bin/env python3
"""Training overhead of mHC on a transformer block: forward + backward of a pre-norm attention +
SwiGLU block with a plain residual, with mHC (n = 4) through mhc.torch, and with the public mHC
implementations (TransformerEngine, Liger, DeepSeek's reference and TileKernels), each eager and
under torch.compile. Reports time (median), overhead over the plain block of the same mode, and
peak memory; writes JSON and prints a table last.

On the H200 (the peers copied to .peers, the kernel cache built elsewhere and carried, see
docs/Torch.md):

    MHC_CACHE=.mhc-cache python3 bench/block_bench.py --json out/block.json

CPU smoke run (tiny sizes, reference backend, eager only; what CI runs):

    python3 bench/block_bench.py --smoke --json /tmp/block.json

Block: h + attn(rmsnorm(h)) then h + swiglu(rmsnorm(h)); attention with
scaled_dot_product_attention (causal), head dim 128, SwiGLU hidden 4C; bf16; T = B*S = 4*4096.
In the mHC variants each sublayer (with its own pre-norm) is the F of one hyper-connection, and x is
[B, S, 4, C] (TE's layout is its own: [S, B, C, 4]). --blocks K times K such blocks in a row, each
with its own weights, as in a model: mhc.torch then chains each sublayer's projection into the
previous sublayer's post kernel, which a single block does only between its two sublayers. Times are do_bench medians when triton is
available (CUDA events otherwise), over --reps steps after --warmup steps (before 2026-12-02's
third session: over reps x 10 ms, i.e. 2-5 steps of a 20-50 ms block); memory is
torch.cuda.max_memory_allocated over one step minus what was allocated before it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import mhc.torch as mt  # noqa: E402

N, R, EPS, POST_MULT = 4, 20, 1e-6, 2.0


class Sublayers(nn.Module):
    """The two sublayers of the block, each with its own pre-norm. `seq_first` inputs are
    [S, B, C] (TE's layout), else [B, S, C]."""

    def __init__(self, C, head_dim, dtype, device):
        super().__init__()
        self.C, self.H, self.d = C, C // head_dim, head_dim
        mk = lambda *s: nn.Parameter(torch.randn(*s, dtype=dtype, device=device) / s[0] ** 0.5)  # noqa: E731
        self.attn_norm = nn.RMSNorm(C, device=device, dtype=dtype)
        self.ffn_norm = nn.RMSNorm(C, device=device, dtype=dtype)
        self.wqkv, self.wo = mk(C, 3 * C), mk(C, C)
        self.w13, self.w2 = mk(C, 8 * C), mk(4 * C, C)

    def attn(self, u, seq_first=False, norm=True):
        qkv = (self.attn_norm(u) if norm else u) @ self.wqkv
        if seq_first:
            S, B = u.shape[:2]
            q, k, v = qkv.view(S, B, 3, self.H, self.d).permute(2, 1, 3, 0, 4)
        else:
            B, S = u.shape[:2]
            q, k, v = qkv.view(B, S, 3, self.H, self.d).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)        # [B, H, S, d]
        o = o.permute(2, 0, 1, 3) if seq_first else o.transpose(1, 2)
        return o.reshape(*u.shape) @ self.wo

    def ffn(self, u, seq_first=False, norm=True):
        gate, up = ((self.ffn_norm(u) if norm else u) @ self.w13).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.w2

    def sublayers(self, norms=True):
        if norms:
            return [self.attn, self.ffn]
        return [functools.partial(self.attn, norm=False), functools.partial(self.ffn, norm=False)]


class Blocks(nn.Module):
    """`count` blocks one after the other, each with its own weights (--blocks): a model's stack,
    where mhc.torch chains each sublayer's projection into the previous one's post kernel."""

    def __init__(self, count, C, head_dim, dtype, device):
        super().__init__()
        self.blocks = nn.ModuleList(Sublayers(C, head_dim, dtype, device) for _ in range(count))

    def sublayers(self, norms=True):
        """The sublayers in model order: attention, FFN, attention, FFN, ..."""
        return [f for b in self.blocks for f in b.sublayers(norms)]


class NormFree:
    """The same sublayers without their pre-norms (--norm-free): the mHC block as it would run
    if mhc's kernels computed the norms at no cost, the ceiling of fusing them
    (docs/PreNorm.md). Not the same model: a bound, not a variant to train."""

    def __init__(self, sub):
        self.sub = sub

    def sublayers(self):
        return self.sub.sublayers(norms=False)


class FusedNorms:
    """The same sublayers with their pre-norms handed to mhc (--fused-norm): each
    HyperConnection gets the sublayer without its RMSNorm and the RMSNorm as `norm`, which mhc's
    kernels compute (docs/PreNorm.md). The same model as the mhc rows, the same weights."""

    def __init__(self, sub):
        self.sub = sub

    def sublayers(self):
        return self.sub.sublayers(norms=False)

    def norms(self):
        return [m for b in self.sub.blocks for m in (b.attn_norm, b.ffn_norm)]


class _Bound(nn.Module):
    def __init__(self, fn, seq_first=False):
        super().__init__()
        self.fn, self.seq_first = fn, seq_first

    def forward(self, u):
        return self.fn(u, self.seq_first)


def mhc_params(C, seed, device):
    """fn, scale, base of one sublayer (the values every mHC variant uses)."""
    g = torch.Generator().manual_seed(seed)
    M = N * N + 2 * N
    fn = ((torch.rand(M, N * C, generator=g) * 2 - 1) * 0.01).to(device)
    base = torch.zeros(M)
    base[:N] = -torch.log(torch.tensor(N - 1.0))
    return fn, torch.full((3,), 0.01, device=device), base.to(device)


# ------------------------------------------------------------------------------------------------
# Variants: each returns (step inputs, forward function)
# ------------------------------------------------------------------------------------------------

def plain_variant(sub, h):
    def f(h):
        for sublayer in sub.sublayers():
            h = h + sublayer(h)
        return h
    return h, f


def mhc_variant(sub, h, backend, recompute):
    C = h.shape[-1]
    layers = []
    norms = sub.norms() if hasattr(sub, "norms") else [None] * len(sub.sublayers())
    for i, (fn, norm) in enumerate(zip(sub.sublayers(), norms)):
        hc = mt.HyperConnection(N, C, _Bound(fn), backend=backend, recompute=recompute,
                                norm=norm).to(h.device)
        p = mhc_params(C, i, h.device)
        with torch.no_grad():
            for param, value in zip((hc.fn, hc.scale, hc.base), p):
                param.copy_(value)
        layers.append(hc)
    x = mt.Expand(N)(h.detach()).requires_grad_()

    def f(x):
        for layer in layers:
            x = layer(x)
        return x
    f.modules = layers      # keep their parameters alive and reachable
    return x, f


def peer_variant(peers, provider, sub, h):
    """Each provider's pre and post with the sublayer in between (their own kernels, autograd)."""
    C = h.shape[-1]
    x = mt.Expand(N)(h.detach()).requires_grad_()
    y0 = torch.zeros_like(h)
    seq_first = provider == "te_triton"
    params = []
    for i in range(len(sub.sublayers())):
        fn, scale, base = mhc_params(C, i, h.device)
        prepared = peers.prepare(provider, x, y0, fn, scale, base)
        # Every provider trains its mHC parameters (prepare passes DeepSeek's reference's through).
        train = lambda t: t if t.requires_grad else t.detach().clone().requires_grad_()  # noqa: E731
        params.append([[train(t) for t in q] if isinstance(q, list) else train(q)
                       for q in prepared[2:]])
    x = peers.prepare(provider, x, y0, *mhc_params(C, 0, h.device))[0]

    if provider in ("torch_eager", "torch_compile"):
        tk = peers.tk

        def pre(x, fn, scale, base):
            mixes = tk.mhc_pre_norm_fn_ref(x, fn, None, EPS)
            pre_, post, comb = tk.mhc_pre_split_mixes_ref(mixes, scale, base, N, POST_MULT, EPS)
            comb = tk.sinkhorn_normalize_ref(comb, repeat=R, eps=EPS)
            return tk.mhc_pre_apply_mix_ref(x, pre_), (post, comb)

        def post(y, x, state):
            return tk.mhc_post_ref(y, x, *state)
    elif provider == "te_triton":
        te = peers.te

        def pre(x, fn, scale, base):
            u, h_post, h_res = te.mhc_generate_mix_and_aggregate(x, fn, scale, base)
            return u, (h_post, h_res)

        def post(y, x, state):
            return te.mhc_fused_expand_combine(y, None, state[0], x, state[1], N)
    elif provider == "liger_triton":
        lg = peers.lg

        def pre(x, phi, a, base):
            h_pre, h_post, h_res = lg.LigerMHCCoeffsFunction.apply(
                x, phi, base, a[0], a[1], a[2], False, R, EPS, EPS, EPS, POST_MULT)
            return lg.LigerMHCPreFunction.apply(x, h_pre), (h_post, h_res)

        def post(y, x, state):
            return lg.LigerMHCPostResFunction.apply(x, y, state[0], state[1])
    elif provider == "tk_tilelang":
        tkm = sys.modules["tile_kernels.modeling.mhc"]
        from tile_kernels.modeling.mhc.ops import mhc_post

        def pre(x, fn, scale, base):
            u, (post_, comb) = tkm.mhc_pre(x, fn, scale, base, post_mult_value=POST_MULT, pre_eps=EPS,
                                           sinkhorn_eps=EPS, norm_eps=EPS, sinkhorn_repeat=R)
            return u, (post_, comb)

        def post(y, x, state):
            return mhc_post(y, x, *state)
    else:
        raise ValueError(f"unknown provider {provider}")

    def f(x):
        for sublayer, p in zip(sub.sublayers(), params):
            u, state = pre(x, *p)
            x = post(sublayer(u, seq_first), x, state)
        return x
    f.params = params
    return x, f


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------

def leaves(f, x, sub):
    out = [x] + list(sub.parameters())
    for m in getattr(f, "modules", []):
        out += list(m.parameters())
    for p in getattr(f, "params", []):
        for t in p:
            out += t if isinstance(t, list) else [t]
    # once each: a fused norm's weight is both the sublayer block's and its HyperConnection's
    unique = {id(t): t for t in out if isinstance(t, torch.Tensor) and t.requires_grad}
    return list(unique.values())


def time_step(step, grads, device, reps, warmup, timer="do_bench"):
    """Median time of one step over `reps` steps after `warmup` steps."""
    if device.type == "cuda" and timer == "do_bench":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            # do_bench's warmup and rep are milliseconds: make them `warmup` and `reps` steps.
            step_ms = time_step(step, grads, device, reps=1, warmup=0, timer="events")
            return do_bench(step, warmup=warmup * step_ms, rep=reps * step_ms, grad_to_none=grads,
                            return_mode="median")
    if device.type == "cuda" and timer == "stream":
        return time_stream(step, grads, reps, warmup)[0]
    if device.type == "cuda":
        times = []
        for i in range(warmup + reps):
            for g in grads:
                g.grad = None
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(a.elapsed_time(b))
        return statistics.median(times)
    times = []
    for i in range(warmup + reps):
        for g in grads:
            g.grad = None
        t = time.perf_counter()
        step()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def time_stream(step, grads, reps, warmup):
    """As a training loop runs: `reps` steps back to back, no synchronisation between them (the
    host queues the next step while the GPU works), CUDA events around all of them. Returns
    (GPU ms, host ms) per step; the host's time is until its last launch returned, so a host
    time near the GPU's says the host, not the GPU, sets the pace."""
    def steps(count):
        for _ in range(count):
            for g in grads:
                g.grad = None
            step()
    steps(warmup)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    a.record()
    t = time.perf_counter()
    steps(reps)
    host_ms = (time.perf_counter() - t) * 1e3 / reps
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps, host_ms


def profile_kernels(step, grads, trace_path, with_stack=False):
    """The GPU work of one call of `step` (gradients cleared first, as before every timed step:
    no accumulation into .grad), from torch.profiler's Chrome trace (its kernel events
    carry the stream): {"kernels", "kernel_ms" (summed), "span_ms" (first start to last end),
    "streams": {stream: [kernels, ms]}, "mhc": {stream: kernels named mhc_*}, "by_name": the 25
    kernel names with the most time, {name (90 characters): [calls, ms]}, "ops": the 40 CPU-side
    ops with the most device time of their own, [op, input shapes, calls, ms]}. A timer that reads
    less than kernel_ms did not time all of the step's work."""
    from torch.profiler import profile, ProfilerActivity
    for g in grads:
        g.grad = None
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities, record_shapes=True, with_stack=with_stack) as prof:
        step()
        torch.cuda.synchronize()
    # The ops behind the kernels (the CPU-side op that launched them, with its input shapes):
    # which aten op an unnamed elementwise kernel belongs to.
    def device_ms(e):
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) / 1e3
    cpu_ops = [e for e in prof.key_averages(group_by_input_shape=True)
               if str(e.device_type).endswith("CPU") and not e.key.startswith("##")
               and device_ms(e) > 0]
    ops = [[e.key, str(e.input_shapes)[:160], e.count, round(device_ms(e), 4)]
           for e in sorted(cpu_ops, key=lambda e: -device_ms(e))[:40]]
    prof.export_chrome_trace(trace_path)
    with open(trace_path) as fh:
        events = json.load(fh)["traceEvents"]
    os.remove(trace_path)
    kernels = [e for e in events if e.get("cat") == "kernel"]
    streams, mhc, by_name = {}, {}, {}
    for e in kernels:
        stream = str(e["args"].get("stream"))
        count, ms = streams.get(stream, (0, 0.0))
        streams[stream] = (count + 1, ms + e["dur"] / 1e3)
        if e["name"].startswith("mhc_"):
            mhc[stream] = mhc.get(stream, 0) + 1
        name = e["name"][:90]
        count, ms = by_name.get(name, (0, 0.0))
        by_name[name] = (count + 1, ms + e["dur"] / 1e3)
    start = min((e["ts"] for e in kernels), default=0.0)
    end = max((e["ts"] + e["dur"] for e in kernels), default=0.0)
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:25]
    return {"kernels": len(kernels), "kernel_ms": sum(ms for _, ms in streams.values()),
            "span_ms": (end - start) / 1e3, "streams": streams, "mhc": mhc,
            "by_name": {name: [count, round(ms, 4)] for name, (count, ms) in top},
            "ops": ops, **idle_gaps(kernels, events)}


def idle_gaps(kernels, events, count=8):
    """Where the GPU had nothing to run inside the step: {"idle_ms": the span's time with no
    kernel running, "gaps": the `count` longest idle stretches, [ms, kernel before, kernel
    after] (names cut to 60 characters), "host_in_longest_gap": the 12 longest host-side
    events (ops, CUDA API calls, Python functions with --profile-stack) that overlap the longest
    stretch, [name, ms, start in ms relative to the stretch's]}. An idle stretch means the GPU
    waited for the host; those events say what the host was doing."""
    gaps, busy_until, last = [], None, None
    for e in sorted(kernels, key=lambda e: e["ts"]):
        if busy_until is not None and e["ts"] > busy_until:
            gaps.append([round((e["ts"] - busy_until) / 1e3, 4), last[:60], e["name"][:60],
                         busy_until, e["ts"]])
        if busy_until is None or e["ts"] + e["dur"] > busy_until:
            busy_until, last = e["ts"] + e["dur"], e["name"]
    gaps.sort(key=lambda g: -g[0])
    host = []
    if gaps:
        begin, end = gaps[0][3], gaps[0][4]
        host = sorted(([e["name"][:80], round(e["dur"] / 1e3, 4),
                        round((e["ts"] - begin) / 1e3, 4)] for e in events
                       if e.get("cat") in ("cpu_op", "cuda_runtime", "cuda_driver",
                                           "python_function", "user_annotation")
                       and "ts" in e and "dur" in e
                       and e["ts"] < end and e["ts"] + e["dur"] > begin),
                      key=lambda h: -h[1])[:12]
    return {"idle_ms": round(sum(g[0] for g in gaps), 4),
            "gaps": [g[:3] for g in gaps[:count]], "host_in_longest_gap": host}


def describe_profile(prof) -> str:
    """One line for a profile_kernels result."""
    mhc = {k: v for k, v in prof.get("by_name", {}).items() if k.startswith("mhc_")}
    return (f"{prof['kernels']} kernels, {prof['kernel_ms']:.3f} ms of kernels, span "
            f"{prof['span_ms']:.3f} ms ({prof['idle_ms']:.3f} idle; longest gaps "
            f"{prof['gaps'][:3]}), streams {prof['streams']}, mhc kernels {prof['mhc']}"
            + (f" {mhc}" if mhc else ""))


def prepare(name, mode, make, sub, h):
    """(row, step, grads) of one variant, its first step run (compiled, kernels loaded) and its
    peak memory measured; step is None when it failed (the row says why)."""
    row = {"variant": name, "mode": mode, "C": h.shape[-1]}
    started = time.time()
    print(f"  C={h.shape[-1]} {mode:7s} {name:14s} preparing (compiling, loading kernels)...",
          file=sys.stderr, flush=True)
    try:
        x, f = make()
        compile_mode = {"compile": "default", "reduce-overhead": "reduce-overhead"}.get(mode)
        graphs = compile_mode == "reduce-overhead"   # torch.compile's CUDA graphs (cudagraph trees)
        fwd = torch.compile(f, mode=compile_mode) if compile_mode else f
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        grad = torch.randn_like(fwd(x))
        grads = leaves(f, x, sub)

        def step():
            if graphs:          # a new training step: the last one's graph outputs may be reused
                torch.compiler.cudagraph_mark_step_begin()
            fwd(x).backward(grad)
        for g in grads:     # as before every step: another variant's .grad (with CUDA graphs a
            g.grad = None   # graph output that a later replay overwrites) is not accumulated into
        step()                                   # compile / autotune / load kernels first
        if h.device.type == "cuda":
            torch.cuda.synchronize()
            for g in grads:
                g.grad = None
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            row["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        # A step that skips work shows here: every leaf must get a gradient.
        row["leaves"], row["leaves_with_grad"] = len(grads), sum(g.grad is not None for g in grads)
        row["prepare_s"] = time.time() - started
        print(f"  C={h.shape[-1]} {mode:7s} {name:14s} ready after {row['prepare_s']:.0f} s",
              file=sys.stderr, flush=True)
        return row, step, grads
    except Exception as e:  # noqa: BLE001 - record it and go on with the other variants
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=6)
        return row, None, None


def measure(name, mode, make, sub, h, args):
    """One variant timed on its own (after the previous variant's, before the next one's)."""
    row, step, grads = prepare(name, mode, make, sub, h)
    try:
        if step is not None:
            row["ms"] = time_step(step, grads, h.device, args.reps, args.warmup, args.timer)
            row["timer"] = f"{args.timer}: {args.reps} steps after {args.warmup}"
            if args.profile and h.device.type == "cuda":
                trace = os.path.abspath(args.json) + ".trace.json"
                row["profile"] = profile_kernels(step, grads, trace, args.profile_stack)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=6)
    finally:
        if h.device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def measure_interleaved(variants, mode, sub, h, args):
    """All variants alive at once and timed in turns: `--interleave` rounds, each running every
    variant for `--reps` steps (after `--round-warmup` untimed ones, so that the GPU's clocks
    settle on this variant's load before it is timed; --timer stream: back to back, one
    reading per round, else CUDA events per step), in forward order in even
    rounds and backward order in odd ones. A slow drift of the GPU's speed over the run (clocks,
    temperature) then lands on every variant alike instead of on the ones timed last; ms is the
    median over all timed steps, ms_rounds each round's median."""
    prepared = [prepare(name, mode, make, sub, h) for name, make in variants]
    live = [(row, step, grads) for row, step, grads in prepared if step is not None]
    times = {id(row): [] for row, _, _ in live}
    rounds = {id(row): [] for row, _, _ in live}
    host = {id(row): [] for row, _, _ in live}
    for r in range(args.interleave):
        for row, step, grads in (live if r % 2 == 0 else live[::-1]):
            if args.timer == "stream" and h.device.type == "cuda":
                # one reading per round: the mean of reps steps
                gpu_ms, host_ms = time_stream(step, grads, reps=args.reps, warmup=args.round_warmup)
                ts = [gpu_ms]
                host[id(row)].append(host_ms)
            else:
                ts = [time_step(step, grads, h.device, reps=1, warmup=0, timer="events")
                      for _ in range(args.reps + args.round_warmup)][args.round_warmup:]
            times[id(row)] += ts
            rounds[id(row)].append(statistics.median(ts))
    for row, step, grads in live:
        row["ms"] = statistics.median(times[id(row)])
        row["ms_rounds"] = rounds[id(row)]
        if host[id(row)]:
            row["host_ms_rounds"] = host[id(row)]
        row["timer"] = (f"interleaved: {args.interleave} rounds x {args.reps} steps "
                        f"after {args.round_warmup} untimed, " +
                        ("back to back (stream)" if args.timer == "stream" else "CUDA events"))
        if args.profile and h.device.type == "cuda":
            trace = os.path.abspath(args.json) + ".trace.json"
            row["profile"] = profile_kernels(step, grads, trace, args.profile_stack)
    if h.device.type == "cuda":
        torch.cuda.empty_cache()
    return [row for row, _, _ in prepared]


def host_time_us(C, device, reps=200):
    """Host time of the mhc ops of one sublayer (forward pair, backward pair) on few tokens, so the
    GPU keeps up and the host is what is measured."""
    if device.type != "cuda":
        return None
    x = torch.randn(64, N, C, device=device, dtype=torch.bfloat16)
    fn, scale, base = mhc_params(C, 0, device)
    attrs = (R, EPS, EPS, POST_MULT)
    u, post, comb, mix = torch.ops.mhc.hc_pre(x, fn, scale, base, *attrs)
    y = torch.randn_like(u)
    out = {}
    try:
        torch.ops.mhc.hc_post(y, x, post, comb)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            torch.ops.mhc.hc_pre(x, fn, scale, base, *attrs)
            torch.ops.mhc.hc_post(y, x, post, comb)
        out["forward_pre_post_us"] = (time.perf_counter() - t) / reps * 1e6
        torch.cuda.synchronize()
        dxn = torch.randn_like(x)
        torch.ops.mhc.hc_post_backward(y, x, post, comb, dxn)
        torch.ops.mhc.hc_pre_backward(x, fn, scale, base, mix, u, post, comb, dxn, *attrs)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            torch.ops.mhc.hc_post_backward(y, x, post, comb, dxn)
            torch.ops.mhc.hc_pre_backward(x, fn, scale, base, mix, u, post, comb, dxn, *attrs)
        out["backward_pre_post_us"] = (time.perf_counter() - t) / reps * 1e6
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def load_peers(path):
    if not path or path == "none":
        return None, "peers disabled (--peers none)"
    if not os.path.isdir(path):
        return None, f"peers folder {path!r} not found"
    sys.path.insert(0, os.path.abspath(path))
    try:
        import load as peers
        return peers, None
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def round_pair_overheads(ms_rounds, plain_rounds):
    """Overhead (%) over the plain block per pair of interleaved rounds: rounds run the variants in
    forward then backward order, so a variant's position (first after plain, or last) biases one
    round up and the next down (seen as a +-5% zig-zag in single-block runs); a pair's summed
    times cancel that. The spread over pairs is what a claim of 'in every run' has to hold over.
    None without two rounds of both."""
    if not ms_rounds or not plain_rounds or len(ms_rounds) != len(plain_rounds):
        return None
    pairs = [(sum(ms_rounds[i:i + 2]) / sum(plain_rounds[i:i + 2]) - 1) * 100
             for i in range(0, len(ms_rounds) - 1, 2)]
    return pairs or None


def steady_overhead(ms_rounds, plain_rounds):
    """Overhead (%) of the median round over the plain block's, leaving out round 0: in compiled
    runs every variant's first round is its fastest (the GPU is still cool), and plain is timed
    first in it, so the all-rounds figure reads high (session 37's files). None without a second
    round of both."""
    if not ms_rounds or not plain_rounds or len(ms_rounds) != len(plain_rounds) or len(ms_rounds) < 2:
        return None
    return (statistics.median(ms_rounds[1:]) / statistics.median(plain_rounds[1:]) - 1) * 100


def write_results(args, argv, device, dtype, peers_error, rows, host=None):
    """Fills in each row's overhead over the plain block of its mode and C and (re)writes
    --json with every row so far; returns what it wrote."""
    for r in rows:
        plain = next((q for q in rows if q["variant"] == "plain" and q["mode"] == r["mode"]
                      and q["C"] == r["C"] and "ms" in q), None)
        if plain and "ms" in r:
            r["overhead_pct"] = (r["ms"] / plain["ms"] - 1) * 100
            if r is plain:
                continue
            pairs = round_pair_overheads(r.get("ms_rounds"), plain.get("ms_rounds"))
            if pairs:
                r["overhead_pairs_pct"] = pairs
            steady = steady_overhead(r.get("ms_rounds"), plain.get("ms_rounds"))
            if steady is not None:
                r["overhead_after_round0_pct"] = steady
    result = {"command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": str(dtype), "batch": args.batch, "seq": args.seq,
              "tokens": args.batch * args.seq, "head_dim": args.head_dim, "n": N,
              "blocks": args.blocks,
              "mhc_backend": args.mhc_backend, "peers_error": peers_error,
              # mhc's switches (MHC_COMPILE_FOLD_DY, MHC_EAGER_FOLD_DY, MHC_NATIVE, ...) and how
              # many eager post steps took their dy from above (the C++ path's dy fold)
              "mhc_environment": {k: v for k, v in os.environ.items() if k.startswith("MHC_")},
              "eager_folded_steps": _eager_folded_steps(),
              "mhc_host_time_us": host, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    return result


def _eager_folded_steps():
    """native.cpp's count of folded post steps, or None when the C++ path was not loaded."""
    native = sys.modules.get("mhc.torch.native")
    module = native._MODULE if native is not None else None
    return module.folded_steps() if module is not None else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True,
                   help="where to write the results (rewritten after each mode: a cut run keeps "
                        "what it measured)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, eager only")
    p.add_argument("--C", type=int, action="append", help="model width (repeatable; default 2560 and 4096)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--seq", type=int, default=4096, help="tokens per sequence")
    p.add_argument("--head-dim", type=int, default=128, help="attention head dimension")
    p.add_argument("--blocks", type=int, default=1,
                   help="blocks in a row, each with its own weights (a model's stack: mhc.torch "
                        "chains the sublayers; overheads are over as many plain blocks)")
    p.add_argument("--modes", default="eager,compile",
                   help="comma list of eager, compile, reduce-overhead (torch.compile with CUDA "
                        "graphs)")
    p.add_argument("--mhc-backend", default="auto", choices=("auto", "cuda", "ops", "reference"),
                   help="mhc.torch backend of the mHC rows (auto: cuda where its kernels are cached, else reference; ops: the mhc:: ops on any device)")
    p.add_argument("--peers", default=".peers", help="folder with load.py, or 'none'")
    p.add_argument("--providers", default="torch_eager,te_triton,liger_triton,tk_tilelang",
                   help="peer implementations to time (comma list of load.py's providers; '' for none)")
    p.add_argument("--reps", type=int, default=20, help="timed steps (per round with --interleave)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--timer", default="stream", choices=("do_bench", "events", "stream"),
                   help="triton's do_bench (L2 flushed between steps), CUDA events around each "
                        "step with a synchronisation after it, or 'stream': --reps steps back to "
                        "back without synchronising (as training runs; host time hidden)")
    p.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                   help="time the variants in turns, ROUNDS rounds of --reps steps each (all "
                        "variants in memory at once), instead of one after the other")
    p.add_argument("--round-warmup", type=int, default=1, metavar="STEPS",
                   help="with --interleave: untimed steps at the start of each round (default 1); "
                        "more let the clocks settle after the switch from another variant")
    p.add_argument("--fused-norm", action="store_true",
                   help="also time mhc_fused_norm: the mHC block with its sublayers' RMSNorms "
                        "computed by mhc's kernels (HyperConnection(norm=...); kernel sets built "
                        "with build_cache --norm-eps, here torch.finfo(dtype).eps)")
    p.add_argument("--norm-free", action="store_true",
                   help="also time mhc_norm_free: the mHC block with its sublayers' RMSNorms "
                        "left out, the bound of fusing them into mhc's kernels (docs/PreNorm.md)")
    p.add_argument("--profile-stack", action="store_true",
                   help="with --profile: record Python functions too (slower steps; the idle "
                        "stretches' host events then name the Python code)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step per row (torch.profiler): kernel time, span, streams")
    args = p.parse_args(argv)
    if args.smoke:
        args.C = args.C or [64]
        args.batch, args.seq, args.head_dim = 1, 32, 16
        args.modes, args.reps, args.warmup = "eager", 2, 1
    Cs = args.C or [2560, 4096]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peers, peers_error = load_peers(args.peers)
    providers = [q for q in args.providers.split(",") if q]
    rows = []
    for C in Cs:
        # Each width compiles afresh: what Dynamo kept from the last one (guards, recompile
        # counts) made Liger's autograd.Function fail to trace at the second C (26th session).
        torch._dynamo.reset()
        torch.manual_seed(0)
        sub = Blocks(args.blocks, C, args.head_dim, dtype, device)
        h = torch.randn(args.batch, args.seq, C, device=device, dtype=dtype, requires_grad=True)
        for mode in args.modes.split(","):
            variants = [("plain", lambda: plain_variant(sub, h)),
                        ("mhc", lambda: mhc_variant(sub, h, args.mhc_backend, False)),
                        ("mhc_recompute", lambda: mhc_variant(sub, h, args.mhc_backend, True))]
            if args.fused_norm:
                variants.append(("mhc_fused_norm",
                                 lambda: mhc_variant(FusedNorms(sub), h, args.mhc_backend, False)))
            if args.norm_free:
                variants.append(("mhc_norm_free",
                                 lambda: mhc_variant(NormFree(sub), h, args.mhc_backend, False)))
            for q in providers:
                if peers is None:
                    rows.append({"variant": q, "mode": mode, "C": C, "error": peers_error})
                    continue
                if q not in peers.SUBLAYER:
                    err = {"te_triton": "TE_ERROR", "liger_triton": "LIGER_ERROR",
                           "tk_tilelang": "TK_TILELANG_ERROR"}.get(q)
                    rows.append({"variant": q, "mode": mode, "C": C,
                                 "error": getattr(peers, err or "", f"provider {q} not loaded")})
                    continue
                variants.append((q, lambda q=q: peer_variant(peers, q, sub, h)))
            if args.interleave:
                measured = measure_interleaved(variants, mode, sub, h, args)
            else:
                measured = (measure(name, mode, make, sub, h, args) for name, make in variants)
            for row in measured:
                name = row["variant"]
                rows.append(row)
                print(f"  C={C} {mode:7s} {name:14s} " + (f"{row['ms']:.3f} ms" if "ms" in row
                                                          else f"error: {row['error'][:100]}"), flush=True)
                if "profile" in row:
                    print(f"    profiled step: {describe_profile(row['profile'])}; leaves with a "
                          f"gradient {row.get('leaves_with_grad')}/{row.get('leaves')}", flush=True)
            write_results(args, argv, device, dtype, peers_error, rows)   # a cut run keeps these
    result = write_results(args, argv, device, dtype, peers_error, rows,
                           host={C: host_time_us(C, device) for C in Cs}
                           if device.type == "cuda" else None)
    print(f"\nblock fwd+bwd, T = {args.batch}x{args.seq}, {dtype}, n = {N} ({result['device']})"
          + (f", {args.blocks} blocks in a row" if args.blocks > 1 else ""))
    print(f"{'C':>6} {'mode':8} {'variant':15} {'ms':>9} {'overhead':>9} {'peak MB':>9}"
          f"  {'round pairs (min..max)':>22} {'w/o round 0':>11}")
    for r in rows:
        if "ms" in r:
            pairs = r.get("overhead_pairs_pct")
            spread = f"{min(pairs):+.1f}..{max(pairs):+.1f}%" if pairs else ""
            steady = r.get("overhead_after_round0_pct")
            steady = f"{steady:+.2f}%" if steady is not None else ""
            print(f"{r['C']:>6} {r['mode']:8} {r['variant']:15} {r['ms']:9.3f} "
                  f"{r.get('overhead_pct', 0):+8.1f}% {r.get('peak_mem_mb', float('nan')):9.0f}"
                  f"  {spread:>22} {steady:>11}")
        else:
            print(f"{r['C']:>6} {r['mode']:8} {r['variant']:15} error: {r['error'][:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
