"""Checks the Sinkhorn constants folded by canonicalize.mlir against the
float64 numpy reference. Reads the canonicalized IR on stdin; the inputs
below must match the ones written in canonicalize.mlir."""
import re
import sys

import numpy as np

from mhc import reference

CASES = {
    "sinkhorn_constant": (
        np.array([[[0.5, -1.25, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.125]],
                  [[3.0, 0.0, -1.0], [0.3, 0.7, -0.2], [1.1, -0.4, 2.5]]],
                 dtype=np.float32), dict(iterations=20, eps=1e-6)),
    "sinkhorn_constant_attrs": (
        np.array([[0.1, 2.0, -0.3, 0.4], [1.0, -1.0, 0.5, 0.0],
                  [0.2, 0.3, 0.4, 3.0], [-2.0, 0.6, 0.7, 0.8]],
                 dtype=np.float32), dict(iterations=3, eps=1e-3)),
}

text = sys.stdin.read()
failures = 0
for name, (logits, attrs) in CASES.items():
    body = re.search(r"func\.func @%s\(.*?\n  }" % name, text, re.S)
    const = re.search(r"arith\.constant dense<(.*?)> : tensor", body.group(0), re.S)
    folded = np.array(eval(const.group(1)), dtype=np.float64)
    expected = reference.sinkhorn(logits.astype(np.float64), dtype=np.float64,
                                  **attrs)
    err = np.max(np.abs(folded - expected)) / np.max(np.abs(expected))
    # The folder computes in f32: a few ulps of f32 over 2*iterations steps.
    status = "ok" if err <= 1e-6 else "FAIL"
    failures += status == "FAIL"
    print(f"{name}: max rel err {err:.2e} {status}")
sys.exit(1 if failures else 0)
