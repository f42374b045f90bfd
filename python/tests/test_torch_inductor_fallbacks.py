"""mhc.torch.inductor_fallbacks: the mhc ops reach TorchInductor with their fallback lowerings
registered, so Inductor never takes its implicit-fallback path, whose log message prints the
ops' arguments with everything they are computed from (exponential in a stack's depth).

The stack uses backend="ops": the mhc:: custom ops, which run the reference math on the CPU.
"""

import logging

import torch
from torch import nn

import mhc.torch as mt
from mhc.torch import inductor_fallbacks
from sublayers import PreNormFFN


def stack(blocks, n=2, C=16):
    torch.manual_seed(0)
    return nn.Sequential(mt.Expand(n),
                         *[mt.HyperConnection(n, C, PreNormFFN(C, norm=False), backend="ops", layer=i,
                                               iterations=3)
                           for i in range(blocks)],
                         mt.Head(n, C))


def forget_mhc_lowerings(monkeypatch):
    """As in a fresh process: no mhc lowering yet (an earlier test's compilation made them)."""
    from torch._inductor import lowering
    for name in inductor_fallbacks.MHC_OPS:
        monkeypatch.delitem(lowering.lowerings, getattr(torch.ops.mhc, name).default, raising=False)


class Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.implicit_mhc = []

    def emit(self, record):
        text = record.getMessage()
        if "implicit fallback" in text and "mhc." in text:
            self.implicit_mhc.append(text.split("\n")[1].strip())


def test_compiled_stack_takes_no_implicit_fallback(monkeypatch):
    """Two blocks (the implicit path's message is still small there): with Inductor's INFO log
    on, no mhc op goes through the implicit path, and the compiled stack matches eager."""
    import torch._inductor.config as config
    forget_mhc_lowerings(monkeypatch)
    monkeypatch.setattr(inductor_fallbacks, "_ATTEMPTED", False)
    m = stack(blocks=2)
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    eager = m(x)
    log = logging.getLogger("torch._inductor.graph")
    handler, level = Messages(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with config.patch(fx_graph_cache=False):     # lower the graph, not a cached one
            torch._dynamo.reset()
            compiled = torch.compile(m, fullgraph=True)(x)
            compiled.sum().backward()                # the backward graph's ops too
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert handler.implicit_mhc == []
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-6)


def test_every_mhc_op_is_registered():
    """MHC_OPS names every op of the mhc namespace, and register() gives each a lowering."""
    from torch._inductor import lowering
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("mhc::")}
    assert registered == set(inductor_fallbacks.MHC_OPS)
    assert inductor_fallbacks.register()
    assert inductor_fallbacks.register()                 # again: no error
    for name in inductor_fallbacks.MHC_OPS:
        assert getattr(torch.ops.mhc, name).default in lowering.lowerings


def test_gives_up_quietly_when_inductor_changed(monkeypatch):
    """An internal function missing (a future PyTorch): register() says so and raises nothing,
    so compilation goes on through Inductor's implicit path."""
    from torch._inductor import lowering
    forget_mhc_lowerings(monkeypatch)
    monkeypatch.delattr(lowering, "tag_to_layout_constraint")
    assert inductor_fallbacks.register() is False
