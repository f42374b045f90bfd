"""The inputs of the IREE models, generated the same on every machine.

The large model's weights (~100 M values) are made where the model runs, not carried. numpy's
random generators do not promise the same stream across versions, so values come from a
counter-based hash instead (splitmix64 of the element index and a per-tensor seed, in uint64
arithmetic): bit-identical wherever numpy runs. ``checksum`` lets a run verify it.
"""
import hashlib

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x):
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


def uniform(seed, shape, low, high):
    """float32 values in [low, high), a function of (seed, index) only."""
    n = int(np.prod(shape))
    out = np.empty(n, np.float32)
    chunk = 1 << 24
    for start in range(0, n, chunk):   # bounded temporaries for 100 M-value tensors
        idx = np.arange(start, min(n, start + chunk), dtype=np.uint64)
        bits = _splitmix64(idx ^ (np.uint64(seed) << np.uint64(40)))
        u = (bits >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))  # [0, 1)
        out[start:start + idx.size] = np.float32(low) + u * np.float32(high - low)
    return out.reshape(shape)


def token_ids(seed, shape, vocab):
    bits = _splitmix64(np.arange(int(np.prod(shape)), dtype=np.uint64) ^ np.uint64(seed))
    return (bits % np.uint64(vocab)).astype(np.int64).reshape(shape)


def model_weight(index, name, shape):
    """A Llama parameter: norms ~1, everything else like a 0.02-std init (uniform, same std)."""
    if name.endswith("norm.weight"):
        return uniform(1000 + index, shape, 0.9, 1.1)
    bound = 0.02 * np.sqrt(3.0)
    return uniform(1000 + index, shape, -bound, bound)


def hc_parameter(index, name, shape, streams):
    """An mHC parameter (``layer<L>.fn|scale|base``, --mhc-hyperconnect params=arguments):
    the paper's initialisation (docs/HyperConnect.md) with larger random parts, so that the
    coefficients, Sinkhorn included, do real work."""
    kind = name.rsplit(".", 1)[1]
    if kind == "fn":
        return uniform(5000 + index, shape, -0.02, 0.02)
    if kind == "scale":
        return uniform(5000 + index, shape, 0.1, 0.3)
    n = streams
    pre = -np.log(n - 1) if n > 1 else 6.0
    base = np.concatenate([np.full(n, pre), np.zeros(n), np.zeros(n * n)]).astype(np.float32)
    return base + uniform(5000 + index, shape, -0.5, 0.5)


def checksum(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def make_inputs(spec, streams):
    """@forward's arguments as bench/iree/prepare.py describes them in manifest.json."""
    out = []
    for s in spec:
        if s["kind"] == "ids":
            out.append(np.array(s["fixed"], np.int64) if s["fixed"] else
                       token_ids(7, s["shape"], s["vocab"]))
        elif s["kind"] == "weight":
            out.append(model_weight(s["index"], s["name"], s["shape"]))
        else:
            out.append(hc_parameter(s["index"], s["name"], s["shape"], streams))
    return out
