"""Make ``import mhc`` work when pytest is run from the repository root without installing."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

