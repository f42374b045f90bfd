# The CPU mode of the AOT driver: mhc.compiler.compile_cpu turns the sublayer
# example (mhc dialect, --mhc-cpu-pipeline) into a .so, mhc.runtime calls its
# C interface on numpy arrays and wraps the memref results; the numbers must
# match the numpy golden model (python/mhc/reference.py) on random data.
# REQUIRES: numpy
# RUN: env MHC_OPT=%mhc_lib_dir/../bin/mhc-opt %python %s %t | FileCheck %s

import sys
from pathlib import Path

import numpy as np

from mhc import reference as ref
from mhc.compiler import compile_cpu
from mhc.runtime import Library

out = Path(sys.argv[1])
src = Path(__file__).resolve().parents[3] / "examples" / "aot" / "sublayer.mlir"
lib = Library(compile_cpu(src, out / "libsublayer_cpu.so"))


def to_bf16_bits(a):
    b = ref.round_to(a, "bf16").astype(np.float32).view(np.uint32)
    return (b >> 16).astype(np.uint16)


def from_bf16_bits(h):
    return (np.asarray(h).astype(np.uint32) << 16).view(np.float32)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


rng = np.random.default_rng(11)
n, C, M = 4, 4096, 24
for T in (1, 37):
    x = to_bf16_bits(rng.standard_normal((T, n, C)))
    y = to_bf16_bits(rng.standard_normal((T, C)))
    fn = (rng.standard_normal((M, n * C)) / np.sqrt(n * C)).astype(np.float32)
    fn_next = (rng.standard_normal((M, n * C)) / np.sqrt(n * C)).astype(np.float32)
    scale = np.array([0.5, 0.7, 1.3], np.float32)
    base = (0.5 * rng.standard_normal(M)).astype(np.float32)
    xf, yf = from_bf16_bits(x), from_bf16_bits(y)

    mix = lib.call("norm_project", x, fn, results=[(2, np.float32)])
    u, post, comb = lib.call("pre", x, mix, scale, base,
                             results=[(2, np.uint16), (2, np.float32), (3, np.float32)])
    xn, mix_next = lib.call("post", y, x, post, comb, fn_next,
                            results=[(3, np.uint16), (2, np.float32)])

    r_mix = ref.norm_project(xf, fn, dtype=np.float64)
    r_pre, r_post, r_logits = ref.split_mixes(r_mix, scale, base, dtype=np.float64)
    r_comb = ref.sinkhorn(r_logits, dtype=np.float64)
    r_u = ref.pre_apply(xf, r_pre, dtype=np.float64)
    r_xn = ref.post_res(yf, xf, r_post, r_comb, dtype=np.float64)
    r_mix_next = ref.norm_project(from_bf16_bits(xn), fn_next, dtype=np.float64)
    errs = {"mix": rel(mix, r_mix), "post": rel(post, r_post), "comb": rel(comb, r_comb),
            "mix_next": rel(mix_next, r_mix_next),
            "u": rel(from_bf16_bits(u), r_u), "x_next": rel(from_bf16_bits(xn), r_xn)}
    # f32 coefficients: 1e-4; bf16 outputs: one bf16 rounding, 1e-2.
    bad = {k: v for k, v in errs.items() if v > (1e-2 if k in ("u", "x_next") else 1e-4)}
    print(f"T={T} shapes {u.shape} {post.shape} {comb.shape} {xn.shape} {mix_next.shape}",
          "ok" if not bad else f"FAIL {bad}")
# CHECK: T=1 shapes (1, 4096) (1, 4) (1, 4, 4) (1, 4, 4096) (1, 24) ok
# CHECK: T=37 shapes (37, 4096) (37, 4) (37, 4, 4) (37, 4, 4096) (37, 24) ok
