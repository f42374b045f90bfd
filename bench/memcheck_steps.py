#!/usr/bin/env python3
"""HyperConnection's C++ steps under compute-sanitizer, on the GPU machine: two chained
HyperConnections around bf16 Linear sublayers, forward + backward, with and without recomputation,
at T = 17, 0 and 300 (each twice: the second call runs chained). Prints one line per mode; the
sanitizer's summary says whether any kernel touched memory outside its buffers (the steps place
several results in one allocation: a kernel writing past one of them would not fault without it).

    PYTHONPATH=python MHC_CACHE=.mhc-cache MHC_NATIVE=1 \\
        compute-sanitizer --tool memcheck python3 bench/memcheck_steps.py
"""
import torch
from torch import nn

from mhc.torch import HyperConnection


def main(n=4, C=4096):
    for recompute in (False, True):
        hcs = [HyperConnection(n, C, nn.Linear(C, C).cuda().bfloat16(), backend="cuda",
                               recompute=recompute, layer=i).cuda() for i in range(2)]
        for T in (17, 0, 300):
            for _ in range(2):          # the second call runs chained
                x = torch.randn(T, n, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                out = hcs[1](hcs[0](x))
                out.float().square().sum().backward()
        torch.cuda.synchronize()
        print("recompute", recompute, "ok", tuple(x.grad.shape), hcs[0].fn.grad.abs().sum().item())


if __name__ == "__main__":
    main()
