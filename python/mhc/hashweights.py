"""Deterministic weights that numpy and MLIR compute bit for bit alike.

The exported model families (``export_families.py``) take their weights as
function arguments, so the committed MLIR holds no weight data. A test (or
``scripts/run-example.sh``) regenerates them inside the program with
``weight_op``, and the exporter loaded the very same values into the PyTorch
model whose logits it recorded. Each weight tensor is a recipe
``{"shape", "seed", "scale", "offset"}``; element ``k`` (row-major) is

    h = k + seed * 0x9E3779B1            (uint32 arithmetic, wrapping)
    h ^= h >> 16; h *= 0x7FEB352D; h ^= h >> 15; h *= 0x846CA68B; h ^= h >> 16
    u = float32(h >> 8) * 2^-23 - 1      (exact: a float in [-1, 1))
    w = offset + scale * u               (float32, two roundings)

Integer steps wrap identically everywhere and the float steps are single
IEEE operations, so the values do not depend on the platform.
"""

from __future__ import annotations

import numpy as np

_GOLDEN, _MUL1, _MUL2 = 0x9E3779B1, 0x7FEB352D, 0x846CA68B


def hash_weights(shape, seed, scale, offset) -> np.ndarray:
    """The recipe's values as a float32 array of ``shape``."""
    k = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64)
    h = (k + np.uint64(seed * _GOLDEN)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(_MUL1)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(_MUL2)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    u = (h >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -23) - np.float32(1)
    return (np.float32(offset) + np.float32(scale) * u).astype(np.float32).reshape(shape)


def _i32(v: int) -> int:
    """`v` mod 2^32 written as a signed 32-bit literal."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _f32(v: float) -> str:
    return np.format_float_scientific(np.float32(v), unique=True, exp_digits=2)


def weight_op(name: str, recipe: dict) -> str:
    """MLIR that defines ``%name`` (a ``tensor<...xf32>``) with the recipe's
    values: one ``linalg.generic`` over the tensor's index space."""
    shape = list(recipe["shape"])
    rank = len(shape)
    ty = "tensor<" + "".join(f"{d}x" for d in shape) + "f32>"
    dims = ", ".join(f"d{i}" for i in range(rank))
    iterators = ", ".join(['"parallel"'] * rank)
    lines = [f"%{name}_init = tensor.empty() : {ty}",
             f"%{name} = linalg.generic {{indexing_maps = [affine_map<({dims}) -> ({dims})>], "
             f"iterator_types = [{iterators}]}} outs(%{name}_init : {ty}) {{",
             "^bb0(%out: f32):"]
    body = []
    # Row-major linear index, in index arithmetic, then i32.
    body.append("%lin0 = arith.constant 0 : index")
    for i, d in enumerate(shape):
        body += [f"%i{i} = linalg.index {i} : index",
                 f"%n{i} = arith.constant {d} : index",
                 f"%m{i} = arith.muli %lin{i}, %n{i} : index",
                 f"%lin{i + 1} = arith.addi %m{i}, %i{i} : index"]
    body += [
        f"%k = arith.index_cast %lin{rank} : index to i32",
        f"%seed = arith.constant {_i32(recipe['seed'] * _GOLDEN)} : i32",
        "%c16 = arith.constant 16 : i32",
        "%c15 = arith.constant 15 : i32",
        "%c8 = arith.constant 8 : i32",
        f"%mul1 = arith.constant {_i32(_MUL1)} : i32",
        f"%mul2 = arith.constant {_i32(_MUL2)} : i32",
        "%h0 = arith.addi %k, %seed : i32",
        "%s1 = arith.shrui %h0, %c16 : i32",
        "%h1 = arith.xori %h0, %s1 : i32",
        "%h2 = arith.muli %h1, %mul1 : i32",
        "%s2 = arith.shrui %h2, %c15 : i32",
        "%h3 = arith.xori %h2, %s2 : i32",
        "%h4 = arith.muli %h3, %mul2 : i32",
        "%s3 = arith.shrui %h4, %c16 : i32",
        "%h5 = arith.xori %h4, %s3 : i32",
        "%top = arith.shrui %h5, %c8 : i32",
        "%f = arith.uitofp %top : i32 to f32",
        f"%ulp = arith.constant {_f32(2.0 ** -23)} : f32",
        "%one = arith.constant 1.0 : f32",
        "%uf = arith.mulf %f, %ulp : f32",
        "%u = arith.subf %uf, %one : f32",
        f"%scale = arith.constant {_f32(recipe['scale'])} : f32",
        f"%offset = arith.constant {_f32(recipe['offset'])} : f32",
        "%su = arith.mulf %u, %scale : f32",
        "%w = arith.addf %su, %offset : f32",
        "linalg.yield %w : f32"]
    return "\n".join(lines + ["  " + b for b in body] + [f"}} -> {ty}"])
