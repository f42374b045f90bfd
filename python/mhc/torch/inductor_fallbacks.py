"""The mhc ops' TorchInductor lowerings, registered before Inductor lowers a graph with mhc ops.

Inductor runs a custom op it has no lowering for through a *fallback* (the op's own
implementation, called from the compiled graph). Left to itself it creates that fallback the
first time it meets the op and logs "Creating implicit fallback for" with the op's arguments
printed as Inductor IR, every argument with all it is computed from. In a stack of
HyperConnections each mhc op's inputs are the previous mhc op's outputs, so that text grows
exponentially with the stack's depth: torch 2.11 builds it whatever the log level, and compiling
four attention + SwiGLU blocks did not finish in six minutes (two blocks: 7 s); later versions
build it only when Inductor's INFO log is on (three tiny blocks: 162 s, a 400 MB message).

:func:`register` creates the same fallbacks up front (same layout constraint as Inductor's
implicit path: the op's tag, else Inductor's default for custom ops), so the message is never
built. The ops' fake implementations call :func:`register_if_compiling`, as they install
mhc.torch.chain_pass.
"""

from __future__ import annotations

import sys

import torch

# Every op of the mhc namespace (mhc.torch.ops), including the ones chain_pass creates, and the
# *_norm ops (the sublayer's pre-norm fused in).
MHC_OPS = ("hc_pre", "hc_post", "hc_pre_mixed", "hc_post_project", "hc_pre_backward",
           "hc_post_backward", "hc_pre_backward_lower", "hc_joint_backward",
           "hc_joint_backward_lower", "hc_pre_norm", "hc_pre_mixed_norm", "hc_pre_backward_norm",
           "hc_pre_backward_lower_norm", "hc_joint_backward_norm", "hc_joint_backward_lower_norm")

_ATTEMPTED = False     # register_if_compiling ran register() (which may have given up)


def register() -> bool:
    """Gives every mhc op Inductor's fallback lowering (idempotent; imports Inductor). Returns
    False where this PyTorch lacks the internal functions used (Inductor's implicit fallback
    then stays, with its slow message)."""
    # Internal functions of Inductor: where one is missing or has changed, compilation must still
    # work (through the implicit path), so this gives up rather than raise.
    try:
        from torch._inductor import lowering
        from torch._library.utils import get_layout_constraint_tag
        for name in MHC_OPS:
            op = getattr(torch.ops.mhc, name).default
            if op not in lowering.lowerings:
                tag = get_layout_constraint_tag(op, with_default=True)
                lowering.make_fallback(op, layout_constraint=lowering.tag_to_layout_constraint(tag),
                                       warn=False)
    except (ImportError, AttributeError, TypeError):
        return False
    return True


def register_if_compiling() -> None:
    """Called by the mhc ops' fake implementations: registers the fallbacks once Inductor is
    loaded (a graph is being compiled), once. Costs a flag test after that."""
    global _ATTEMPTED
    if _ATTEMPTED or "torch._inductor.config" not in sys.modules:
        return
    _ATTEMPTED = True
    register()
