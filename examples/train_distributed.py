#!/usr/bin/env python3
"""Data-parallel training of the stability study's byte LM (examples/stability_study.py: model,
corpus and batches are imported from there) with mHC blocks, under DDP or FSDP2, one process per
GPU, launched by torchrun:

    # 2 GPUs, DDP (or --shard fsdp2); the kernel cache is shared by all ranks:
    MHC_CACHE=.mhc-cache torchrun --standalone --nproc_per_node=2 examples/train_distributed.py --shard ddp --steps 200
    # the same run on 1 GPU (same global batch, seed, data order): the loss curves should agree
    MHC_CACHE=.mhc-cache torchrun --standalone --nproc_per_node=1 examples/train_distributed.py --shard ddp --steps 200
    # CPU smoke run (gloo; tiny model, 2 steps):
    torchrun --standalone --nproc_per_node=2 examples/train_distributed.py --device cpu --smoke --shard fsdp2

(--standalone picks a free port; with torchrun 2.11, --master_port=0 hung in the rendezvous here.)

Same global batch as a 1-process run: every rank draws the whole global batch from the same seeded
generator (stability_study.Batches) and keeps its 1/world share of the rows (--batch must divide
by the number of processes). Each rank's loss is the mean over its rows; DDP and FSDP2 average the
gradients over the ranks, so the update is the one of the mean over the global batch. The logged
loss is the mean of the ranks' losses (the global mean). Gradient clipping sees the global
gradient (DDP: the all-reduced one; FSDP2: clip_grad_norm_ over the sharded DTensor gradients).

FSDP2: fully_shard on every block (a HyperConnection with its sublayer), then on the root.
Mixed precision as in the 1-GPU study: bf16 autocast around the model on CUDA (not FSDP2's
MixedPrecisionPolicy), so the parameters and their gradients stay f32 in both modes.

Kernel cache (backend auto/cuda, CUDA only): all ranks read the same $MHC_CACHE (or ~/.cache/mhc).
Readers only open files, so any number of ranks may load a set at once; building a missing set is
not safe to do concurrently (kernels.build replaces the folder), so local rank 0 loads (and where
mhc-opt is present, builds) the set first and the other ranks wait at a barrier. One node: on
several nodes sharing one cache folder, build it beforehand with python -m mhc.torch.build_cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stability_study as ss  # noqa: E402  - also puts python/ on sys.path (mhc.torch)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shard", choices=("ddp", "fsdp2"), default="ddp")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when available (nccl), else cpu (gloo)")
    p.add_argument("--smoke", action="store_true", help="tiny model (as stability_study --smoke)")
    p.add_argument("--variant", choices=("mhc", "hc", "baseline"), default="mhc")
    ss.add_model_arguments(p)
    p.add_argument("--batch", type=int, default=32, help="global batch (all ranks together)")
    p.add_argument("--steps", type=int, default=None, help="default 1000 (--smoke: 2)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--json", help="rank 0 writes the loss log here")
    args = p.parse_args(argv)
    if args.smoke:
        ss.use_smoke_sizes(args)
        args.log_every = 1
    if args.steps is None:
        args.steps = 2 if args.smoke else 1000
    return args


def warm_kernel_cache(args, device, stream_dtype, local_rank):
    """Local rank 0 loads (or builds) the kernel set before the others read it (see the docstring)."""
    if device.type == "cuda" and args.variant == "mhc" and args.backend != "reference" and local_rank == 0:
        from mhc.torch import kernels
        x = torch.empty(1, args.n, args.C, device=device, dtype=stream_dtype)
        if args.backend == "cuda" or kernels.available(args.n, args.C, kernels.dtype_name(stream_dtype)):
            kernels.kernel_set(kernels.key_for(x, args.n, args.C), device.index or 0)
    dist.barrier()


def main(argv=None):
    args = parse(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)     # one GPU per process (the cuda backend needs it)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(minutes=10))
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the number of processes ({world})")
    args.bf16 = args.bf16 and device.type == "cuda"
    stream_dtype = torch.bfloat16 if args.bf16 else torch.float32
    log = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)

    warm_kernel_cache(args, device, stream_dtype, local_rank)

    data = ss.load_corpus(limit_bytes=2_000_000 if args.smoke else None)
    data_train = data[:int(len(data) * 0.95)]
    torch.manual_seed(args.seed)              # the same initial weights on every rank
    model = ss.ByteLM(args.variant, args.layers, args.C, args.n, args.heads, args.backend,
                      args.recompute, stream_dtype).to(device)
    if args.shard == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh(device.type, (world,))
        for b in model.blocks:
            fully_shard(b, mesh=mesh)
        fully_shard(model, mesh=mesh)
        net = model
    if args.compile:
        for b in model.blocks:
            b.compile()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(     # the schedule of stability_study.train
        opt, lambda s: ss.lr_factor(min(s / args.steps, 1.0)))
    autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if args.bf16 \
        else (lambda: torch.autocast(device.type, enabled=False))
    batches = ss.Batches(data_train, args.seq, args.batch, args.seed)
    share = args.batch // world
    rows = slice(rank * share, (rank + 1) * share)
    log(f"{args.variant} {args.shard}, {world} process(es) on {device.type}, global batch {args.batch} "
        f"({share} per rank), {sum(p.numel() for p in model.parameters())} parameters")
    rec = {"config": vars(args), "world_size": world, "torch": torch.__version__, "train": []}
    start = time.time()
    for step in range(args.steps):
        inp, tgt = batches.next("cpu")        # the whole global batch, identical on every rank
        inp, tgt = inp[rows].to(device), tgt[rows].to(device)
        with autocast():
            logits = net(inp)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        if hasattr(gnorm, "full_tensor"):     # FSDP2: a DTensor
            gnorm = gnorm.full_tensor()
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            lv = loss.detach().float().clone()
            dist.all_reduce(lv)
            lv = lv.item() / world
            rec["train"].append({"step": step, "loss": lv, "grad_norm": gnorm.item(),
                                 "seconds": time.time() - start})
            log(f"  step {step:6d} loss {lv:.6f} grad norm {gnorm.item():.4g}")
            if not math.isfinite(lv):
                break
    rec["seconds"] = time.time() - start
    rec["tokens_per_second"] = (step + 1) * args.batch * args.seq / rec["seconds"]
    log(f"{step + 1} steps in {rec['seconds']:.1f} s, {rec['tokens_per_second']:.0f} tokens/s")
    if rank == 0 and args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(rec, fh, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
