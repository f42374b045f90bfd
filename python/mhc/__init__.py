"""mhc: Python side of the mHC compiler (numpy reference, driver, runtime loader, torch glue).

Submodules are imported explicitly (``from mhc import reference``) so that importing the package
stays cheap and does not require optional dependencies.
"""

__all__ = ["reference"]

# Part of every kernel-cache key (mhc.torch.kernels): bump it when the generated kernels or their
# ABI change, so that cached kernels of an older mhc are never loaded by a newer one.
__version__ = "0.1.0"
