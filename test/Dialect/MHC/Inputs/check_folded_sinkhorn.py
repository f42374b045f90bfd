"""Checks the Sinkhorn and Sinkhorn-gradient constants folded by
canonicalize.mlir against the float64 numpy reference. Reads the
canonicalized IR on stdin; the inputs below must match the ones written in
canonicalize.mlir."""
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

# Sinkhorn gradients: (logits, dcomb, attributes).
GRAD_CASES = {
    "sinkhorn_grad_constant": (
        CASES["sinkhorn_constant"][0],
        np.array([[[1.0, -0.5, 0.25], [0.0, 2.0, -1.5], [0.75, 0.5, -0.25]],
                  [[-1.0, 0.3, 0.6], [0.9, -0.2, 0.1], [0.4, 1.2, -0.7]]],
                 dtype=np.float32), dict(iterations=20, eps=1e-6)),
    "sinkhorn_grad_constant_attrs": (
        CASES["sinkhorn_constant_attrs"][0],
        np.array([[1.0, 0.0, -2.0, 0.5], [0.25, -0.75, 1.5, 0.0],
                  [-1.0, 2.0, 0.5, 0.125], [0.3, -0.6, 0.9, -1.2]],
                 dtype=np.float32), dict(iterations=3, eps=1e-3)),
}


def folded_constant(text, name):
    body = re.search(r"func\.func @%s\(.*?\n  }" % name, text, re.S)
    const = re.search(r"arith\.constant dense<(.*?)> : tensor", body.group(0), re.S)
    return np.array(eval(const.group(1)), dtype=np.float64)


def report(name, folded, expected, tol):
    err = np.max(np.abs(folded - expected)) / np.max(np.abs(expected))
    status = "ok" if err <= tol else "FAIL"
    print(f"{name}: max rel err {err:.2e} {status}")
    return status == "FAIL"


text = sys.stdin.read()
failures = 0
for name, (logits, attrs) in CASES.items():
    expected = reference.sinkhorn(logits.astype(np.float64), dtype=np.float64,
                                  **attrs)
    # The folder computes in f32: a few ulps of f32 over 2*iterations steps.
    failures += report(name, folded_constant(text, name), expected, 1e-6)
for name, (logits, dcomb, attrs) in GRAD_CASES.items():
    expected = reference.sinkhorn_backward(logits.astype(np.float64),
                                           dcomb.astype(np.float64),
                                           dtype=np.float64, **attrs)
    # Normwise: the backward subtracts nearly equal sums at every step.
    failures += report(name, folded_constant(text, name), expected, 1e-5)
sys.exit(1 if failures else 0)
