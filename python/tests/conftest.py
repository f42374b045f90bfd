"""Make ``import mhc`` work when pytest is run from the repository root without installing."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


import pytest  # noqa: E402


@pytest.fixture
def ops_path(monkeypatch):
    """HyperConnection takes the cuda backend's path (the mhc:: ops) on the CPU, where the ops
    run the reference math."""
    from mhc.torch import modules
    monkeypatch.setattr(modules, "resolve_backend", lambda *a: "cuda")
