"""mhc: Python side of the mHC compiler (numpy reference, driver, runtime loader, torch glue).

Submodules are imported explicitly (``from mhc import reference``) so that importing the package
stays cheap and does not require optional dependencies.
"""

__all__ = ["reference"]
