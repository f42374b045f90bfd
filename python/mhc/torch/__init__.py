"""mhc.torch: train PyTorch models with mHC on mhc's compiled kernels (docs/Torch.md).

    import mhc.torch as mt
    blocks = [mt.HyperConnection(4, C, Attention(C)), mt.HyperConnection(4, C, SwiGLU(C)), ...]
    x = mt.Expand(4)(embed(tokens))      # [B, S, 4, C]
    for b in blocks:
        x = b(x)
    h = mt.Head(4, C)(x)                 # or mt.Collapse()

Importing this package registers the custom ops ``torch.ops.mhc.hc_pre``, ``hc_post``,
``hc_post_backward``, ``hc_pre_backward``, the chain's halves ``hc_pre_mixed`` and
``hc_post_project`` and the dy fold's ``hc_pre_backward_lower``, ``hc_joint_backward`` and
``hc_joint_backward_lower`` (mhc.torch.ops); under torch.compile, mhc.torch.chain_pass chains
consecutive HyperConnections in the compiled forward graph and folds their backward.
"""

from . import ops  # noqa: F401  - registers torch.ops.mhc.*
from . import reference
from .modules import Collapse, Expand, Head, HyperConnection, resolve_backend

__all__ = ["HyperConnection", "Expand", "Collapse", "Head", "ops", "reference", "resolve_backend"]
