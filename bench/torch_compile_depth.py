#!/usr/bin/env python3
"""Time to compile a whole model of HyperConnections with torch.compile, against its depth.

    python3 bench/torch_compile_depth.py --blocks 24

A byte-level model as in docs/Torch.md's example (embedding, Expand, `2 x blocks`
HyperConnections around pre-norm SwiGLU-style FFNs, Head, output layer; n = 4, C = 32, 2 x 16
tokens), compiled whole with torch.compile(fullgraph=True): prints the first compiled step's time
(forward + backward, including compilation), how many "implicit fallback" messages Inductor logged
and the largest difference from eager. Runs on the CPU with backend="ops" (the mhc ops' graph;
their CPU implementation is the reference math), with Inductor's INFO log on, where the message
of an implicit fallback is built (torch 2.11 builds it always): mhc.torch.inductor_fallbacks is
what keeps compile time linear in depth. --no-fallbacks turns that registration off, to see the
difference (keep --blocks at 3 or less then: 162 s at 3 blocks on a 2-core machine).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import mhc.torch as mt  # noqa: E402
from mhc.torch import inductor_fallbacks  # noqa: E402

N, C, VOCAB = 4, 32, 256


class FFN(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.up, self.down = nn.RMSNorm(C), nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, u):
        return self.down(nn.functional.silu(self.up(self.norm(u))))


class Model(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.embed, self.expand = nn.Embedding(VOCAB, C), mt.Expand(N)
        self.hcs = nn.ModuleList(mt.HyperConnection(N, C, FFN(), layer=i, backend="ops")
                                 for i in range(2 * blocks))
        self.exit, self.out = mt.Head(N, C), nn.Linear(C, VOCAB)

    def forward(self, tokens):
        x = self.expand(self.embed(tokens))
        for hc in self.hcs:
            x = hc(x)
        return self.out(self.exit(x))


class FallbackMessages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record):
        if "implicit fallback" in record.getMessage():
            self.count += 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=24, help="blocks (two HyperConnections each)")
    p.add_argument("--no-fallbacks", action="store_true",
                   help="do not register the mhc ops' Inductor fallbacks (the slow path)")
    args = p.parse_args(argv)
    if args.no_fallbacks:
        inductor_fallbacks.register_if_compiling = lambda: None
    log = logging.getLogger("torch._inductor.graph")
    log.setLevel(logging.INFO)
    messages = FallbackMessages()
    log.addHandler(messages)
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = False            # compile, not load an earlier run's graph
    torch.manual_seed(0)
    model, tokens = Model(args.blocks), torch.randint(0, VOCAB, (2, 16))
    eager = model(tokens)
    started = time.time()
    out = torch.compile(model, fullgraph=True)(tokens)
    out.sum().backward()
    print(f"{args.blocks} blocks ({2 * args.blocks} HyperConnections), torch {torch.__version__}: "
          f"first compiled step {time.time() - started:.1f} s, implicit-fallback messages "
          f"{messages.count}, max |compiled - eager| {(out - eager).abs().max().item():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
