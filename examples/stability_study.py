#!/usr/bin/env python3
"""Depth-stability study: a byte-level language model trained three ways — plain residual
(baseline), plain hyper-connections (HC, spec 5b) and mHC — with the same seed, sublayer weights,
data order and optimizer. Records loss curves and the Amax gain magnitudes of the residual mixing
matrices (spec section 6): per layer (single) and composite across depth, forward (max absolute row
sum of H_res) and backward (max absolute column sum), averaged over the tokens of an evaluation
batch.

Corpus: the Python standard library's .py sources (offline, the same bytes on every machine with
the same Python), sorted by path, last 5% held out.

    # H200 (see docs/Torch.md for the kernel cache):
    python3 examples/stability_study.py --json out/stability.json --minutes 8 --compile
    python3 examples/plot_stability.py out/stability.json --out docs/stability
    # CPU smoke run (what CI runs):
    python3 examples/stability_study.py --smoke --json /tmp/stability.json

Model: Embedding(256, C) -> [Expand(n)] -> L blocks of (attention, SwiGLU FFN), each sublayer with
its own RMSNorm pre-norm, wrapped in a residual add (baseline) or a HyperConnection (hc / mhc)
-> [Head(n)] -> RMSNorm -> Linear(C, 256). Defaults: L = 24 blocks (48 hyper-connections),
C = 512, n = 4, 8 heads, sequence 512, batch 32, AdamW lr 1e-3 with warmup and cosine decay over the
run (its --steps, or its time under --minutes: each variant gets the whole schedule).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import mhc.torch as mt  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def load_corpus(limit_bytes: int | None = None) -> torch.Tensor:
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if limit_bytes and total >= limit_bytes:
            break
    data = b"\n".join(chunks)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class Batches:
    """Random windows drawn from a seeded generator: every variant sees the same batches."""

    def __init__(self, data, seq, batch, seed):
        self.data, self.seq, self.batch = data, seq, batch
        self.g = torch.Generator().manual_seed(seed)

    def next(self, device):
        starts = torch.randint(0, len(self.data) - self.seq - 1, (self.batch,), generator=self.g)
        idx = starts[:, None] + torch.arange(self.seq + 1)
        w = self.data[idx].to(device)
        return w[:, :-1], w[:, 1:]


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, C, heads):
        super().__init__()
        self.heads = heads
        self.norm = nn.RMSNorm(C)
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.out = nn.Linear(C, C, bias=False)

    def forward(self, u):
        B, S, C = u.shape
        q, k, v = self.qkv(self.norm(u)).view(B, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(B, S, C))


class SwiGLU(nn.Module):
    def __init__(self, C, hidden):
        super().__init__()
        self.norm = nn.RMSNorm(C)
        self.w13 = nn.Linear(C, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, C, bias=False)

    def forward(self, u):
        gate, up = self.w13(self.norm(u)).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Residual(nn.Module):
    def __init__(self, sublayer):
        super().__init__()
        self.sublayer = sublayer

    def forward(self, h):
        return h + self.sublayer(h).to(h.dtype)


class ByteLM(nn.Module):
    def __init__(self, variant, layers, C, n, heads, backend, recompute, stream_dtype):
        super().__init__()
        self.variant, self.stream_dtype = variant, stream_dtype
        self.embed = nn.Embedding(256, C)
        subs = []
        for _ in range(layers):
            subs += [Attention(C, heads), SwiGLU(C, 4 * C)]
        for m in subs:    # same weights in every variant: scaled init of the output projections
            out = m.out if isinstance(m, Attention) else m.w2
            nn.init.normal_(out.weight, std=0.02 / math.sqrt(2 * layers))
        if variant == "baseline":
            self.enter, self.exit = nn.Identity(), nn.Identity()
            self.blocks = nn.ModuleList(Residual(s) for s in subs)
        else:
            self.enter, self.exit = mt.Expand(n), mt.Head(n, C)
            self.blocks = nn.ModuleList(
                mt.HyperConnection(n, C, s, mode=variant, backend=backend, recompute=recompute, layer=i)
                for i, s in enumerate(subs))
        self.norm = nn.RMSNorm(C)
        self.head = nn.Linear(C, 256, bias=False)

    def forward(self, tokens):
        x = self.enter(self.embed(tokens).to(self.stream_dtype))
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(self.exit(x).float()))

    def hyper_connections(self):
        return [b for b in self.blocks if isinstance(b, mt.HyperConnection)]


# ------------------------------------------------------------------------------------------------
# Gains (spec section 6)
# ------------------------------------------------------------------------------------------------

def gains(res_per_layer):
    """res_per_layer: per hyper-connection [T, n, n] in comb orientation (res[i][j]: source i ->
    destination j), so the paper's H_res is its transpose. Returns the token-averaged forward
    (max abs row sum of H_res) and backward (max abs column sum) gains of each layer and of the
    composite H_res(l) ... H_res(0) for every depth l."""
    out = {"single_forward": [], "single_backward": [], "composite_forward": [],
           "composite_backward": []}
    composite = None
    for res in res_per_layer:
        H = res.double().transpose(-1, -2)                       # paper orientation
        composite = H if composite is None else H @ composite
        for name, P in (("single", H), ("composite", composite)):
            out[f"{name}_forward"].append(P.abs().sum(-1).amax(-1).mean().item())
            out[f"{name}_backward"].append(P.abs().sum(-2).amax(-1).mean().item())
    return out


@torch.no_grad()
def evaluate(model, batches, device, autocast):
    hcs = model.hyper_connections()
    for hc in hcs:
        hc.record_coefficients = True
    losses = []
    for inp, tgt in batches:
        with autocast():
            logits = model(inp.to(device))
        losses.append(F.cross_entropy(logits.flatten(0, 1).float(), tgt.to(device).flatten()).item())
    g = gains([hc.last_res.reshape(-1, hc.n, hc.n) for hc in hcs]) if hcs else None
    for hc in hcs:
        hc.record_coefficients, hc.last_res = False, None
    return sum(losses) / len(losses), g


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------

def lr_factor(progress):
    """The schedule at `progress` (0..1) of a run: linear warm-up over the first 5%, then
    cosine decay to 0."""
    return min((progress + 1e-3) / 0.05, 1.0, 0.5 * (1 + math.cos(math.pi * progress)))


def train(variant, args, data_train, data_val, device):
    torch.manual_seed(args.seed)
    stream_dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = ByteLM(variant, args.layers, args.C, args.n, args.heads, args.backend, args.recompute,
                   stream_dtype).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    if args.compile:
        # Block by block: one compiled block serves all of them (parameters are graph inputs), so
        # compile time does not grow with depth as a whole-model graph of 48 Sinkhorns would.
        for b in model.blocks:
            b.compile()
    autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if args.bf16 and device.type == "cuda" \
        else (lambda: torch.autocast("cpu", enabled=False))
    train_batches = Batches(data_train, args.seq, args.batch, args.seed)
    val = Batches(data_val, args.seq, args.batch, args.seed + 1)
    val_batches = [val.next("cpu") for _ in range(args.eval_batches)]
    rec = {"variant": variant, "params": sum(p.numel() for p in model.parameters()),
           "train": [], "eval": [], "diverged": False}
    start = time.time()
    for step in range(args.steps):
        # Warm-up, then cosine decay, over the run: its steps or, with --minutes, its time,
        # whichever is further along -- so a variant that is slower per step still gets the
        # whole schedule in its budget (not the start of a 20000-step schedule).
        progress = step / args.steps
        if args.seconds:
            progress = max(progress, (time.time() - start) / args.seconds)
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(min(progress, 1.0))
        inp, tgt = train_batches.next(device)
        with autocast():
            logits = model(inp)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            lv = loss.item()
            rec["train"].append({"step": step, "loss": lv, "grad_norm": gnorm.item(),
                                 "seconds": time.time() - start})
            print(f"  {variant:8s} step {step:6d} loss {lv:.4f} grad norm {gnorm.item():.3g}", flush=True)
            if not math.isfinite(lv):
                rec["diverged"] = True
                break
        last = step == args.steps - 1 or (args.seconds and time.time() - start > args.seconds)
        if step % args.eval_every == 0 or last:
            vl, g = evaluate(model, val_batches, device, autocast)
            rec["eval"].append({"step": step, "val_loss": vl, "gains": g})
        if last:
            break
    rec["steps_done"] = step + 1
    rec["seconds"] = time.time() - start
    rec["tokens_per_second"] = rec["steps_done"] * args.batch * args.seq / rec["seconds"]
    return rec


def add_model_arguments(p):
    """The model, optimizer and backend options this script shares with train_distributed.py."""
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--C", type=int, default=512)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--backend", default="auto", choices=("auto", "cuda", "reference"))
    p.add_argument("--no-recompute", dest="recompute", action="store_false")
    p.add_argument("--fp32", dest="bf16", action="store_false", help="f32 stream (default bf16 on CUDA)")


def use_smoke_sizes(args):
    """The tiny model of --smoke (CPU runs in CI)."""
    args.layers, args.C, args.heads, args.seq, args.batch = 2, 32, 2, 32, 4


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny model, a few steps, CPU")
    p.add_argument("--variants", default="baseline,hc,mhc")
    add_model_arguments(p)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20000, help="upper bound; --minutes usually ends first")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget per variant")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        use_smoke_sizes(args)
        args.steps, args.log_every, args.eval_every, args.eval_batches = 6, 2, 3, 1
    args.bf16 = args.bf16 and device.type == "cuda"
    args.seconds = args.minutes * 60
    data = load_corpus(limit_bytes=2_000_000 if args.smoke else None)
    split = int(len(data) * 0.95)
    print(f"corpus: {len(data)} bytes of Python stdlib sources; device {device}", flush=True)
    results = {"command": " ".join(["stability_study.py"] + (argv if argv is not None else sys.argv[1:])),
               "config": {k: v for k, v in vars(args).items() if k != "json"},
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "corpus_bytes": len(data), "variants": {}}
    for variant in args.variants.split(","):
        results["variants"][variant] = train(variant, args, data[:split], data[split:], device)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:        # after each variant: a partial run keeps its data
            json.dump(results, fh, indent=1)
    print("\nvariant   steps  final train  final val  max composite fwd gain  s")
    for v, r in results["variants"].items():
        last = r["eval"][-1] if r["eval"] else {}
        g = last.get("gains")
        cg = max(g["composite_forward"]) if g else float("nan")
        print(f"{v:9s} {r['steps_done']:6d}  {r['train'][-1]['loss']:10.4f}  "
              f"{last.get('val_loss', float('nan')):9.4f}  {cg:22.3g}  {r['seconds']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
