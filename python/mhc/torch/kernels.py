"""The ``cuda`` backend: mhc's compiled kernels, cached on disk, launched on PyTorch tensors.

Kernel cache
------------
For each key (n, C, activation dtype, chip, Sinkhorn iterations, eps, pre_eps, post_mult, mhc
version) mhc compiles one *kernel set*: a cubin and a manifest saying which kernels each op launches.
The cache root is ``$MHC_CACHE`` or ``~/.cache/mhc``::

    <root>/libmhc_runtime.so                           the runtime (copied by build_cache)
    <root>/<mhc version>/<chip>/<n4-C4096-bf16-r20-eps1e-06-pre1e-06-pm2>/manifest.json
                                                      .../kernels.cubin

A root built on a machine with MLIR (``python -m mhc.torch.build_cache ... --out DIR``) can be
copied to one without it and used there with ``MHC_CACHE=DIR``; loading never needs mhc-opt.

Manifest (``manifest.json``, schema ``mhc.torch.kernels/1``)
----------------------------------------------------------
::

    {"schema": "mhc.torch.kernels/1",
     "key": {"n": 4, "C": 4096, "dtype": "bf16", "chip": "sm_90", "iterations": 20, "eps": 1e-06,
             "pre_eps": 1e-06, "post_mult": 2.0, "mhc_version": "0.1.0"},
     "cubin": "kernels.cubin",
     "provenance": {...},                                  # free-form: commit, mhc-opt hash, date
     "ops": {
       "hc_pre": {
         "scratch": {"partial": {"shape": ["blocks:32", "M"], "dtype": "f32"}},
         "zero": ["partial"],                              # outputs/scratch zero-filled first
         "launches": [
           {"kernel": "mhc_pre_0", "block": [128, 1, 1],
            "grid": {"tokens_per_block": 32, "y": 1, "z": 1},  # or {"x": 24, "y": 1, "z": 1}
            "smem": 0,
            "buffers": ["x", "fn", "scale", "base", "mix", "post", "comb", "u"]}],
         "few_tokens": {"max_T": 4096, "launches": [...]}},   # optional: for T <= max_T
       "hc_post": {...}, "hc_post_backward": {...}, "hc_pre_backward": {...}}}

* ``ops`` may hold a subset of the ops (``OP_BUFFERS``); calling a missing one raises an error
  naming it.
* ``launches`` run in order on the current stream. Each kernel gets ``(i64 T, then one 1-D memref
  descriptor per name in buffers)`` (docs/GPU.md), T = number of tokens.
* Buffer names are the op's arguments and results (``OP_BUFFERS``) or the op's ``scratch`` names.
  Results are allocated by PyTorch (``torch.empty``, or zeros when listed in ``zero``), shapes and
  dtypes fixed by the op (``BUFFER_LAYOUT``, the fake implementations' too); every result must
  appear in some launch.
* Scratch shapes are lists of ints or symbols: ``T``, ``n``, ``C``, ``M`` (= n*n + 2n), ``nC``,
  ``blocks:K`` (= max(ceil(T / K), 1)); dtypes ``f32 f64 f16 bf16 i32 i64`` or ``x`` (x's dtype).
* Grid x is ``max(ceil(T / tokens_per_block), 1)`` (T = 0 still launches one block, which writes
  nothing: the kernels mask their tokens) or a fixed ``x``; ``y`` and ``z`` default to 1.
* ``few_tokens`` (optional): the op again (its own ``scratch``, ``zero``, ``launches``) with
  kernels scheduled for few tokens, used when T <= ``max_T`` (kernel_build compiles the forward
  ops this way: 16 tokens per block). Both give the same results; only the grids differ.

Execution: per op call, outputs and scratch come from PyTorch's caching allocator, each launch is one
call of the runtime's ``mhcLaunchFlat`` on ``torch.cuda.current_stream()``; no host
synchronisation. Runtime errors raise RuntimeError. The calls are made from C++ (mhc.torch.native,
built on first use) and, where that cannot be built, from Python through ctypes (``_OpPlan``).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import threading
from dataclasses import dataclass, asdict, fields
from pathlib import Path

import torch

import mhc
from . import checks
from . import native

SCHEMA = "mhc.torch.kernels/1"
CUBIN_NAME = "kernels.cubin"
MANIFEST_NAME = "manifest.json"
RUNTIME_NAME = "libmhc_runtime.so"

OP_BUFFERS = {   # (arguments, results) of each op, in schema order
    "hc_pre": (("x", "fn", "scale", "base"), ("u", "post", "comb", "mix")),
    "hc_post": (("y", "x", "post", "comb"), ("x_next",)),
    "hc_post_backward": (("y", "x", "post", "comb", "dx_next"), ("dy", "dpost", "dcomb")),
    "hc_pre_backward": (("x", "fn", "scale", "base", "mix", "du", "dpost", "dcomb", "dx_next"),
                        ("dx", "dfn", "dscale", "dbase")),
    # The whole standalone sublayer backward in one fused group, and the steady-state forward
    # (pre from the previous mix, post_res + the next norm_project): what the benchmarks time.
    "hc_sublayer_backward": (("x", "y", "fn", "scale", "base", "mix", "du", "dx_next"),
                             ("dx", "dy", "dfn", "dscale", "dbase")),
    "hc_steady_forward": (("x", "mix", "scale", "base", "y", "fn"), ("u", "x_next", "mix_next")),
    # Its two halves, for chained HyperConnections: pre from the mix the previous sublayer's post
    # computed, and post_res fused with the next sublayer's norm_project (fn_next: its fn).
    "hc_pre_mixed": (("x", "mix", "scale", "base"), ("u", "post", "comb")),
    "hc_post_project": (("y", "x", "post", "comb", "fn_next"), ("x_next", "mix_next")),
    # The dy fold (mhc.torch.chain_pass): hc_pre_backward also computing the lower sublayer's dy
    # from dx (post_lower: that sublayer's post), and a sublayer's backward after its VJP when its
    # dy came from above (hc_post_backward's dpost/dcomb + hc_pre_backward in one).
    "hc_pre_backward_lower": (("x", "fn", "scale", "base", "mix", "du", "dpost", "dcomb",
                               "dx_next", "post_lower"),
                              ("dx", "dfn", "dscale", "dbase", "dy_lower")),
    "hc_joint_backward": (("x", "y", "fn", "scale", "base", "mix", "du", "dx_next"),
                          ("dx", "dfn", "dscale", "dbase")),
    "hc_joint_backward_lower": (("x", "y", "fn", "scale", "base", "mix", "du", "dx_next",
                                 "post_lower"), ("dx", "dfn", "dscale", "dbase", "dy_lower")),
    # The sublayer's pre-norm fused in (sets whose key has a norm_eps; docs/PreNorm.md): the
    # forward returns o = rms_norm(u, weight) instead of u, and the backward takes o's cotangent
    # g instead of du (u made again from x and mix) and also returns dweight.
    "hc_pre_norm": (("x", "fn", "scale", "base", "weight"), ("o", "post", "comb", "mix")),
    "hc_pre_mixed_norm": (("x", "mix", "scale", "base", "weight"), ("o", "post", "comb")),
    "hc_pre_backward_norm": (("x", "fn", "scale", "base", "mix", "weight", "g", "dpost", "dcomb",
                              "dx_next"), ("dx", "dfn", "dscale", "dbase", "dweight")),
    "hc_pre_backward_lower_norm": (("x", "fn", "scale", "base", "mix", "weight", "g", "dpost",
                                    "dcomb", "dx_next", "post_lower"),
                                   ("dx", "dfn", "dscale", "dbase", "dweight", "dy_lower")),
    "hc_joint_backward_norm": (("x", "y", "fn", "scale", "base", "mix", "weight", "g", "dx_next"),
                               ("dx", "dfn", "dscale", "dbase", "dweight")),
    "hc_joint_backward_lower_norm": (("x", "y", "fn", "scale", "base", "mix", "weight", "g",
                                      "dx_next", "post_lower"),
                                     ("dx", "dfn", "dscale", "dbase", "dweight", "dy_lower")),
}
# Every buffer name's shape, relative to x [lead..., n, C] (X: [lead, n, C], Y: [lead, C], P:
# [lead, n], CB: [lead, n, n], MIX: [lead, M], FN: [M, n*C], SC: [3], B: [M], W: [C]; M = n*n +
# 2n), and dtype (A: x's, F: the coefficients' f32). The one table of the ops' shapes: results are allocated
# from it (allocate_results), and the C++ launch path receives it (native.signature_table).
BUFFER_LAYOUT = {
    "x": ("X", "A"), "x_next": ("X", "A"), "dx": ("X", "A"), "dx_next": ("X", "A"),
    "y": ("Y", "A"), "u": ("Y", "A"), "du": ("Y", "A"), "dy": ("Y", "A"), "dy_lower": ("Y", "A"),
    "post": ("P", "F"), "dpost": ("P", "F"), "post_lower": ("P", "F"),
    "comb": ("CB", "F"), "dcomb": ("CB", "F"),
    "mix": ("MIX", "F"), "mix_next": ("MIX", "F"),
    "fn": ("FN", "F"), "fn_next": ("FN", "F"), "dfn": ("FN", "F"),
    "scale": ("SC", "F"), "dscale": ("SC", "F"), "base": ("B", "F"), "dbase": ("B", "F"),
    "o": ("Y", "A"), "g": ("Y", "A"), "weight": ("W", "A"), "dweight": ("W", "A"),
}
# The ops training needs (mhc.torch's autograd functions); the chain and fold ops are optional
# (sets built before them run the chain's with the reference math, the fold's on their
# hc_pre_backward kernels: mhc.torch.ops), the other two are for the benchmarks.
TRAINING_OPS = ("hc_pre", "hc_post", "hc_post_backward", "hc_pre_backward")
# The same with the sublayer's pre-norm fused in (HyperConnection(norm=nn.RMSNorm)).
NORM_TRAINING_OPS = ("hc_pre_norm", "hc_post", "hc_post_backward", "hc_pre_backward_norm")
DTYPE_NAMES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32,
               "f64": torch.float64, "i32": torch.int32, "i64": torch.int64}
_TORCH_TO_NAME = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}
MAX_BUFFERS = 64


class ManifestError(ValueError):
    """A manifest that does not follow the schema; the message says where."""


class KernelsMissing(RuntimeError):
    """No kernel set for a key (or not for an op) and no way to build it here."""


def dtype_name(dtype) -> str:
    if isinstance(dtype, str):
        name = {"bfloat16": "bf16", "float16": "f16", "half": "f16", "float32": "f32",
                "float": "f32"}.get(dtype, dtype)
    else:
        name = _TORCH_TO_NAME.get(dtype)
    if name not in ("bf16", "f16", "f32"):
        raise ValueError(f"the cuda backend supports bf16, f16 and f32 activations, not {dtype}")
    return name


@dataclass(frozen=True)
class KernelKey:
    """Everything a compiled kernel set depends on."""
    n: int
    C: int
    dtype: str                    # bf16 | f16 | f32
    chip: str = "sm_90"
    iterations: int = 20
    eps: float = 1e-6
    pre_eps: float = 1e-6
    post_mult: float = 2.0
    # The sublayer's pre-norm fused into the kernels (docs/PreNorm.md): its eps, or None for a
    # set without the *_norm ops.
    norm_eps: float | None = None
    mhc_version: str = mhc.__version__

    def __post_init__(self):
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        if self.n < 1 or self.C < 1:
            raise ValueError(f"bad key: n={self.n}, C={self.C}")
        if not (self.chip.startswith("sm_") and self.chip[3:].isdigit()):
            raise ValueError(f"chip must look like sm_90, not {self.chip!r}")
        if self.norm_eps is not None:
            object.__setattr__(self, "norm_eps", float(self.norm_eps))
            if not (math.isfinite(self.norm_eps) and self.norm_eps > 0):
                raise ValueError(f"bad key: norm_eps must be finite and > 0, got {self.norm_eps}")

    @property
    def M(self) -> int:
        return self.n * self.n + 2 * self.n

    def folder_name(self) -> str:
        norm = "" if self.norm_eps is None else f"-rms{self.norm_eps:g}"
        return (f"n{self.n}-C{self.C}-{self.dtype}-r{self.iterations}-eps{self.eps:g}"
                f"-pre{self.pre_eps:g}-pm{self.post_mult:g}{norm}")

    def folder(self, root) -> Path:
        return Path(root) / self.mhc_version / self.chip / self.folder_name()

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "KernelKey":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ManifestError(f"key has unknown fields {sorted(unknown)}")
        return cls(**d)


def cache_root() -> Path:
    return Path(os.environ.get("MHC_CACHE") or Path.home() / ".cache" / "mhc")


def device_chip(device=None) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


# ------------------------------------------------------------------------------------------------
# Manifest validation
# ------------------------------------------------------------------------------------------------

def _int(where, value, lo=None, hi=None):
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"{where}: expected an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ManifestError(f"{where}: {value} is out of range [{lo}, {hi}]")
    return value


def _symbol_ok(dim) -> bool:
    if isinstance(dim, int) and not isinstance(dim, bool):
        return dim >= 0
    if dim in ("T", "n", "C", "M", "nC"):
        return True
    if isinstance(dim, str) and dim.startswith("blocks:"):
        return dim[7:].isdigit() and int(dim[7:]) > 0
    return False


def validate_manifest(manifest: dict, key: KernelKey | None = None, folder: Path | None = None) -> dict:
    """Checks a manifest against the schema (and the expected key / the cubin in `folder`)."""
    if not isinstance(manifest, dict):
        raise ManifestError("the manifest must be a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise ManifestError(f"schema is {manifest.get('schema')!r}, expected {SCHEMA!r}")
    for field in ("key", "cubin", "ops"):
        if field not in manifest:
            raise ManifestError(f"missing field {field!r}")
    found = KernelKey.from_dict(manifest["key"]) if isinstance(manifest["key"], dict) else None
    if found is None:
        raise ManifestError("key must be an object")
    if key is not None and found != key:
        raise ManifestError(f"manifest is for {found}, expected {key}")
    cubin = manifest["cubin"]
    if not isinstance(cubin, str) or "/" in cubin or not cubin:
        raise ManifestError(f"cubin must be a file name in the kernel folder, got {cubin!r}")
    if folder is not None:
        path = Path(folder) / cubin
        if not path.is_file() or path.stat().st_size == 0:
            raise ManifestError(f"{path} is missing or empty")
    ops = manifest["ops"]
    if not isinstance(ops, dict) or not ops:
        raise ManifestError("ops must be a non-empty object")
    for op, spec in ops.items():
        if op not in OP_BUFFERS:
            raise ManifestError(f"unknown op {op!r}; known: {sorted(OP_BUFFERS)}")
        _validate_op(op, spec)
    return manifest


def _validate_op(op: str, spec: dict, variant: bool = False):
    """One op's spec, or (variant) its few_tokens variant."""
    where = f"ops.{op}" + (".few_tokens" if variant else "")
    if not isinstance(spec, dict):
        raise ManifestError(f"{where} must be an object")
    unknown = set(spec) - {"scratch", "zero", "launches"} - ({"max_T"} if variant else {"few_tokens"})
    if unknown:
        raise ManifestError(f"{where}: unknown fields {sorted(unknown)}")
    if variant:
        _int(f"{where}.max_T", spec.get("max_T"), 1, 2 ** 62)
    elif "few_tokens" in spec:
        _validate_op(op, spec["few_tokens"], variant=True)
    args, results = OP_BUFFERS[op]
    scratch = spec.get("scratch", {})
    if not isinstance(scratch, dict):
        raise ManifestError(f"{where}.scratch must be an object")
    for name, s in scratch.items():
        if name in args or name in results:
            raise ManifestError(f"{where}.scratch.{name} has the name of an argument or result")
        if not isinstance(s, dict) or set(s) != {"shape", "dtype"}:
            raise ManifestError(f"{where}.scratch.{name} must be {{'shape': [...], 'dtype': ...}}")
        if not isinstance(s["shape"], list) or not all(_symbol_ok(d) for d in s["shape"]):
            raise ManifestError(f"{where}.scratch.{name}.shape {s['shape']!r}: use ints, T, n, C, M, "
                                f"nC or blocks:K")
        if s["dtype"] not in DTYPE_NAMES and s["dtype"] != "x":
            raise ManifestError(f"{where}.scratch.{name}.dtype {s['dtype']!r} is not one of "
                                f"{sorted(DTYPE_NAMES)} or 'x'")
    known = set(args) | set(results) | set(scratch)
    zero = spec.get("zero", [])
    if not isinstance(zero, list) or any(z not in set(results) | set(scratch) for z in zero):
        raise ManifestError(f"{where}.zero must list results or scratch buffers, got {zero!r}")
    launches = spec.get("launches")
    if not isinstance(launches, list) or not launches:
        raise ManifestError(f"{where}.launches must be a non-empty list")
    written = set()
    for i, launch in enumerate(launches):
        lw = f"{where}.launches[{i}]"
        if not isinstance(launch, dict):
            raise ManifestError(f"{lw} must be an object")
        unknown = set(launch) - {"kernel", "block", "grid", "smem", "buffers"}
        if unknown:
            raise ManifestError(f"{lw}: unknown fields {sorted(unknown)}")
        if not isinstance(launch.get("kernel"), str) or not launch["kernel"]:
            raise ManifestError(f"{lw}.kernel must be a kernel name")
        block = launch.get("block")
        if not isinstance(block, list) or len(block) != 3:
            raise ManifestError(f"{lw}.block must be [x, y, z]")
        for d in block:
            _int(f"{lw}.block", d, 1, 1024)
        if block[0] * block[1] * block[2] > 1024:
            raise ManifestError(f"{lw}.block {block} has more than 1024 threads")
        grid = launch.get("grid")
        if not isinstance(grid, dict) or set(grid) - {"tokens_per_block", "x", "y", "z"}:
            raise ManifestError(f"{lw}.grid must be {{tokens_per_block | x, y, z}}")
        if ("tokens_per_block" in grid) == ("x" in grid):
            raise ManifestError(f"{lw}.grid needs exactly one of tokens_per_block and x")
        for f in ("tokens_per_block", "x", "y", "z"):
            if f in grid:
                _int(f"{lw}.grid.{f}", grid[f], 1, 2 ** 31 - 1)
        _int(f"{lw}.smem", launch.get("smem", 0), 0, 227 * 1024)
        buffers = launch.get("buffers")
        if not isinstance(buffers, list) or len(buffers) > MAX_BUFFERS:
            raise ManifestError(f"{lw}.buffers must be a list of at most {MAX_BUFFERS} names")
        for b in buffers:
            if b not in known:
                raise ManifestError(f"{lw}.buffers: {b!r} is not an argument, result or scratch "
                                    f"buffer of {op} (known: {sorted(known)})")
        written.update(buffers)
    missing = [r for r in results if r not in written]
    if missing:
        raise ManifestError(f"{where}: results {missing} are not passed to any kernel")


def load_manifest(folder, key: KernelKey | None = None) -> dict:
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise KernelsMissing(f"no {MANIFEST_NAME} in {folder}") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    try:
        return validate_manifest(manifest, key, folder)
    except ManifestError as e:
        raise ManifestError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------------------
# Runtime
# ------------------------------------------------------------------------------------------------

def find_runtime(root=None) -> Path:
    """$MHC_RUNTIME_LIB, else <cache root>/libmhc_runtime.so, else a build tree's lib/."""
    env = os.environ.get("MHC_RUNTIME_LIB")
    if env:
        return Path(env)
    candidates = [Path(root or cache_root()) / RUNTIME_NAME]
    repo = Path(__file__).resolve().parents[3]
    build = os.environ.get("MHC_BUILD_DIR")
    candidates += [Path(build) / "lib" / RUNTIME_NAME] if build else []
    candidates += sorted(repo.glob(f"build*/lib/{RUNTIME_NAME}"))
    for c in candidates:
        if c.is_file():
            return c
    raise KernelsMissing(f"{RUNTIME_NAME} not found (looked at {', '.join(map(str, candidates))}); "
                         f"set MHC_RUNTIME_LIB or build the cache with python -m mhc.torch.build_cache")


def load_runtime(path):
    """mhc.runtime.Runtime with the ctypes signatures the launcher uses."""
    from mhc.runtime import load_runtime as _load
    rt = _load(path)
    L = rt.lib
    if not hasattr(L, "mhcLaunchFlat"):
        raise KernelsMissing(f"{path} has no mhcLaunchFlat: it predates the torch launcher; rebuild it")
    L.mhcLaunchFlat.restype = ctypes.c_int
    L.mhcLaunchFlat.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 6 + [
        ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32,
        ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64)]
    L.mgpuModuleLoad.restype = ctypes.c_void_p
    L.mgpuModuleLoad.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    L.mgpuModuleGetFunction.restype = ctypes.c_void_p
    L.mgpuModuleGetFunction.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    L.mgpuSetDefaultDevice.argtypes = [ctypes.c_int32]
    return rt


# ------------------------------------------------------------------------------------------------
# Executor
# ------------------------------------------------------------------------------------------------

def _dim(sym, T, key: KernelKey) -> int:
    if isinstance(sym, int):
        return sym
    if sym.startswith("blocks:"):
        return max(-(-T // int(sym[7:])), 1)
    return {"T": T, "n": key.n, "C": key.C, "M": key.M, "nC": key.n * key.C}[sym]


def x_argument(op: str, args):
    """The stream tensor x among an op's arguments (its shape gives T, n and C)."""
    return args[OP_BUFFERS[op][0].index("x")]


_SHAPES = {   # BUFFER_LAYOUT's shape codes for x [*lead, n, C], M = n*n + 2n
    "X": lambda lead, n, C, M: (*lead, n, C), "Y": lambda lead, n, C, M: (*lead, C),
    "P": lambda lead, n, C, M: (*lead, n), "CB": lambda lead, n, C, M: (*lead, n, n),
    "MIX": lambda lead, n, C, M: (*lead, M), "FN": lambda lead, n, C, M: (M, n * C),
    "SC": lambda lead, n, C, M: (3,), "B": lambda lead, n, C, M: (M,),
    "W": lambda lead, n, C, M: (C,)}


def buffer_shape(name: str, lead, n: int, C: int):
    """The shape of buffer `name` (BUFFER_LAYOUT) for x [*lead, n, C]."""
    return _SHAPES[BUFFER_LAYOUT[name][0]](lead, n, C, n * n + 2 * n)


def random_arguments(op: str, T: int, n: int, C: int, generator: torch.Generator,
                     act_dtype=torch.float32, device="cpu", fn_scale=0.1):
    """Random tensor arguments of `op` (OP_BUFFERS order) for x [T, n, C], for checks and tests:
    post, comb, scale and post_lower uniform in [0, 1) (the forward makes them positive), the rest
    standard normal (fn and fn_next times `fn_scale`); activations in `act_dtype`, coefficients
    and parameters f32. The op's Sinkhorn attributes (OPS_WITH_ATTRIBUTES) are not included."""
    args = []
    for name in OP_BUFFERS[op][0]:
        shape = buffer_shape(name, (T,), n, C)
        if name in ("post", "comb", "scale", "post_lower"):
            t = torch.rand(shape, generator=generator)
        else:
            t = torch.randn(shape, generator=generator)
            if name in ("fn", "fn_next"):
                t = t * fn_scale
        args.append(t.to(device, act_dtype if BUFFER_LAYOUT[name][1] == "A" else torch.float32))
    return args


def signature_table():
    """OP_BUFFERS with each buffer's BUFFER_LAYOUT: what native.cpp checks and allocates by."""
    return [(op, [(name, *BUFFER_LAYOUT[name]) for name in args],
             [(name, *BUFFER_LAYOUT[name]) for name in results])
            for op, (args, results) in OP_BUFFERS.items()]


def allocate_results(op: str, args):
    """Empty results of `op` for these arguments: the shapes/dtypes of the fake implementations."""
    x = x_argument(op, args)
    lead, (n, C) = tuple(x.shape[:-2]), x.shape[-2:]
    cd = checks.coefficient_dtype(x)
    return [x.new_empty(buffer_shape(name, lead, n, C),
                        dtype=x.dtype if BUFFER_LAYOUT[name][1] == "A" else cd)
            for name in OP_BUFFERS[op][1]]


def all_launches(spec: dict) -> list:
    """An op spec's launches and those of its few_tokens variant."""
    return spec["launches"] + spec.get("few_tokens", {}).get("launches", [])


class _OpPlan:
    """One op of a kernel set: its launches with their function handles, ready to run; with the
    manifest's ``few_tokens`` variant, which runs instead for T <= its max_T."""

    def __init__(self, op, spec, functions, key: KernelKey):
        self.op, self.key = op, key
        few = spec.get("few_tokens")
        self.few_tokens = _OpPlan(op, few, functions, key) if few else None
        self.few_tokens_max_T = few["max_T"] if few else -1
        args, results = OP_BUFFERS[op]
        self.n_args, self.n_results = len(args), len(results)
        scratch = spec.get("scratch", {})
        self.scratch = list(scratch.items())
        names = list(args) + list(results) + [name for name, _ in self.scratch]
        index = {name: i for i, name in enumerate(names)}
        self.zero = {index[z] for z in spec.get("zero", [])}
        self.launches = []
        for launch in spec["launches"]:
            grid = launch["grid"]
            nbuf = len(launch["buffers"])
            self.launches.append((
                functions[launch["kernel"]], grid.get("tokens_per_block"), grid.get("x"),
                grid.get("y", 1), grid.get("z", 1), tuple(launch["block"]), launch.get("smem", 0),
                [index[b] for b in launch["buffers"]],
                ctypes.c_void_p * nbuf, ctypes.c_int64 * nbuf))    # argument array types, made once
        self._per_tokens = {}   # T -> (scratch numels, [(grid x, numels array)] per launch)

    def _shapes(self, T: int):
        cached = self._per_tokens.get(T)
        if cached is None:
            if len(self._per_tokens) > 256:      # dynamic token counts: keep the table small
                self._per_tokens.clear()
            scratch_numels = [math.prod(_dim(d, T, self.key) for d in s["shape"])
                              for _, s in self.scratch]
            cached = (scratch_numels, [
                (tpb and max(-(-T // tpb), 1)) or gx for _, tpb, gx, *_ in self.launches])
            self._per_tokens[T] = cached
        return cached

    def run(self, lib, stream: int, args):
        """Launches the op: its few_tokens variant where T <= max_T, its own kernels otherwise."""
        x = x_argument(self.op, args)
        T = x.numel() // (self.key.n * self.key.C)
        plan = self.few_tokens if T <= self.few_tokens_max_T else self
        return plan._launch(lib, stream, args, x, T)

    def launch(self, lib, stream: int, args):
        """Launches this plan's own kernels, whatever T (bench/check_few_tokens.py compares the
        two plans at the same T)."""
        x = x_argument(self.op, args)
        return self._launch(lib, stream, args, x, x.numel() // (self.key.n * self.key.C))

    def _launch(self, lib, stream: int, args, x, T: int):
        scratch_numels, grids = self._shapes(T)
        results = allocate_results(self.op, args)
        for i in self.zero:
            if i >= self.n_args and i < self.n_args + self.n_results:
                results[i - self.n_args].zero_()
        buffers = list(args[:self.n_args]) + results
        for (name, s), numel in zip(self.scratch, scratch_numels):
            dtype = x.dtype if s["dtype"] == "x" else DTYPE_NAMES[s["dtype"]]
            make = torch.zeros if len(buffers) in self.zero else torch.empty
            buffers.append(make(numel, dtype=dtype, device=x.device))
        ptrs = [b.data_ptr() for b in buffers]
        numels = [b.numel() for b in buffers]
        for (fn, _, _, gy, gz, block, smem, idx, ptr_array, numel_array), gx in zip(self.launches,
                                                                                     grids):
            rc = lib.mhcLaunchFlat(fn, gx, gy, gz, block[0], block[1], block[2], smem, stream, T,
                                   len(idx), ptr_array(*[ptrs[i] for i in idx]),
                                   numel_array(*[numels[i] for i in idx]))
            if rc:
                message = lib.mhcRuntimeGetErrorMessage().decode()
                lib.mhcRuntimeClearError()      # the next call may succeed (e.g. after freeing memory)
                raise RuntimeError(f"mhc::{self.op}: kernel launch failed: {message}")
        return tuple(results)


class KernelSet:
    """A loaded kernel set: the cubin's module in the runtime and one plan per op."""

    def __init__(self, folder, key: KernelKey | None = None, runtime=None, device_index: int = 0):
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder, key)
        self.key = KernelKey.from_dict(self.manifest["key"])
        self.runtime = runtime or load_runtime(find_runtime(self.folder.parents[2]))
        lib = self.runtime.lib
        lib.mgpuSetDefaultDevice(device_index)
        self.cubin = (self.folder / self.manifest["cubin"]).read_bytes()
        self.module = lib.mgpuModuleLoad(self.cubin, len(self.cubin))
        self.runtime.check()
        functions = {}
        for spec in self.manifest["ops"].values():
            for launch in all_launches(spec):
                name = launch["kernel"]
                if name not in functions:
                    functions[name] = lib.mgpuModuleGetFunction(self.module, name.encode())
                    self.runtime.check()
        self.plans = {op: _OpPlan(op, spec, functions, self.key)
                      for op, spec in self.manifest["ops"].items()}
        self._native = None     # handle in the C++ launch path; False: not available
        # Chained HyperConnections need both halves of the steady state (native.cpp: the chain).
        self.chains = {"hc_pre_mixed", "hc_post_project"} <= set(self.plans)

    def native_handle(self):
        """This set's handle in the C++ launch path (mhc.torch.native), or None where that path
        is off or did not build."""
        if self._native is None:
            self._native = native.register(self) if native.load() is not None else False
        return self._native if self._native is not False else None

    def run(self, op: str, *args, stream: int = 0):
        plan = self.plans.get(op)
        if plan is None:
            raise KernelsMissing(
                f"mhc::{op}: the kernel set {self.folder} has no kernels for {op} (it has "
                f"{sorted(self.plans)}); the compiler that built it does not produce them yet")
        handle = self.native_handle()
        if handle is not None and not native.suspended:   # the same launches, from C++
            return tuple(native.load().run_op(handle, op, list(args[:plan.n_args])))
        return plan.run(self.runtime.lib, stream, args[:plan.n_args])


# ------------------------------------------------------------------------------------------------
# Finding / building kernel sets for the custom ops
# ------------------------------------------------------------------------------------------------

_LOADED: dict = {}
_LOAD_LOCK = threading.Lock()


def _compiler_function():
    from mhc import compiler
    return getattr(compiler, "compile_torch_kernels", None)


def build(key: KernelKey, root=None, compile_fn=None) -> Path:
    """Compiles the kernel set of `key` into the cache (needs mhc-opt and the compiler hook
    ``mhc.compiler.compile_torch_kernels(key_dict, out_dir)``, or another function with that
    contract, e.g. mhc.torch.kernel_build.compile_forward_kernels) and returns its folder."""
    compile_fn = compile_fn or _compiler_function()
    if compile_fn is None:
        raise KernelsMissing(
            "mhc.compiler.compile_torch_kernels does not exist yet: this mhc cannot compile the "
            "torch kernel sets (the compiler side of the cuda backend is missing)")
    import shutil
    folder = key.folder(root or cache_root())
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        compile_fn(key.as_dict(), tmp)
        load_manifest(tmp, key)               # refuse to cache something that does not validate
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)                   # readers see the old folder or the whole new one
    return folder


def _can_build() -> bool:
    if _compiler_function() is None:
        return False
    try:
        from mhc import compiler
        return Path(compiler.mhc_opt()).exists()
    except Exception:  # noqa: BLE001 - no mhc-opt: nothing to build with
        return False


def key_for(x, n, C, iterations=20, eps=1e-6, pre_eps=1e-6, post_mult=2.0,
            norm_eps=None) -> KernelKey:
    return KernelKey(n=n, C=C, dtype=dtype_name(x.dtype), chip=device_chip(x.device),
                     iterations=int(iterations), eps=float(eps), pre_eps=float(pre_eps),
                     post_mult=float(post_mult), norm_eps=norm_eps)


def kernel_set(key: KernelKey, device_index: int = 0) -> KernelSet:
    """The loaded kernel set of `key` (from the cache; compiled first where mhc-opt is available)."""
    with _LOAD_LOCK:
        ks = _LOADED.get((key, device_index))
        if ks is None:
            _BY_CALL.clear()                   # a new set may be the better match for hc_post
            native.forget_bindings()           # the same for the C++ dispatcher kernels
            folder = key.folder(cache_root())
            if not (folder / MANIFEST_NAME).is_file():
                if not _can_build():
                    raise KernelsMissing(
                        f"no mhc kernels for {key} in {folder}, and no compiler here to build them. "
                        f"On a machine with mhc-opt run: python -m mhc.torch.build_cache --n {key.n} "
                        f"--C {key.C} --dtype {key.dtype} --chip {key.chip} --out DIR, copy DIR "
                        f"here and set MHC_CACHE=DIR")
                build(key)
            ks = _LOADED[(key, device_index)] = KernelSet(folder, key, device_index=device_index)
    return ks


def available(n: int, C: int, dtype: str, iterations=20, eps=1e-6, pre_eps=1e-6,
              post_mult=2.0, norm_eps=None) -> bool:
    """True when the cuda backend can train this shape on the current device: a cached kernel set
    with all four ops (a forward-only set is used only when asked for, backend="cuda"; with
    norm_eps, the set of that pre-norm eps with its training ops), or a compiler here that builds
    one."""
    if not torch.cuda.is_available():
        return False
    try:
        key = KernelKey(n, C, dtype, device_chip(), iterations, eps, pre_eps, post_mult, norm_eps)
        needed = TRAINING_OPS if norm_eps is None else NORM_TRAINING_OPS
        return set(needed) <= set(load_manifest(key.folder(cache_root()), key)["ops"])
    except ValueError:
        return False
    except KernelsMissing:
        return _can_build()


def _stream(device) -> int:
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)   # no Stream object: ~10x cheaper
    if raw is not None:
        return raw(device.index if device.index is not None else torch.cuda.current_device())
    return torch.cuda.current_stream(device).cuda_stream


_BY_CALL: dict = {}   # (n, C, dtype, device index, attributes) -> KernelSet: the per-call fast path


def for_call(op: str, x, attrs=None) -> KernelSet:
    """The kernel set that runs `op` on x (attrs: the Sinkhorn attributes of hc_pre(_backward))."""
    n, C = x.shape[-2:]
    index = x.device.index or 0
    ks = _BY_CALL.get((n, C, x.dtype, index, attrs))
    if ks is None:
        if attrs:
            key = key_for(x, n, C, *attrs)
        else:   # hc_post(_backward) take no attributes: any loaded set of this shape has the same kernels
            key = _post_key(x, n, C)
        ks = _BY_CALL[(n, C, x.dtype, index, attrs)] = kernel_set(key, index)
    return ks


# Ops whose last four arguments are the Sinkhorn attributes (iterations, eps, pre_eps, post_mult):
# they pick the kernel set. (hc_post_project's norm_project uses eps; the others none of them.)
OPS_WITH_ATTRIBUTES = ("hc_pre", "hc_pre_backward", "hc_pre_mixed", "hc_post_project",
                       "hc_pre_backward_lower", "hc_joint_backward", "hc_joint_backward_lower")


# The *_norm ops: their last five arguments, the Sinkhorn attributes and norm_eps, pick the set.
NORM_OPS = tuple(op for op in OP_BUFFERS if op.endswith("_norm"))


def _set_for(op: str, args):
    """(the kernel set that runs `op` on these arguments, x)."""
    x = x_argument(op, args)
    attrs = (tuple(args[-5:]) if op in NORM_OPS else
             tuple(args[-4:]) if op in OPS_WITH_ATTRIBUTES else None)
    return for_call(op, x, attrs), x


def run(op: str, *args):
    """Entry point of the custom ops' CUDA implementations."""
    ks, x = _set_for(op, args)
    return ks.run(op, *args, stream=_stream(x.device))


def run_if_built(op: str, *args):
    """`run(op, *args)` where the kernel set it would use has kernels for `op`, else None (sets
    built before the chain ops have none for hc_pre_mixed / hc_post_project, sets built before the
    dy fold none for hc_pre_backward_lower / hc_joint_backward / hc_joint_backward_lower)."""
    ks, x = _set_for(op, args)
    if op not in ks.plans:
        return None
    return ks.run(op, *args, stream=_stream(x.device))


def dispatch_binding(op: str, x, attrs) -> int:
    """For the C++ dispatcher kernels of the ops (native.install_ops), once per op, shape, dtype,
    device and attributes: the C++ handle of the kernel set that runs `op` on tensors like x, or
    -1 where the op's Python implementation runs (the set has no kernels for `op`: ops.py's
    fall-backs; no C++ handle)."""
    ks = for_call(op, x, attrs)
    handle = ks.native_handle() if op in ks.plans else None
    return -1 if handle is None else handle


def _post_key(x, n, C) -> KernelKey:
    base = KernelKey(n=n, C=C, dtype=dtype_name(x.dtype), chip=device_chip(x.device))
    for (key, _) in _LOADED:
        if (key.n, key.C, key.dtype, key.chip) == (base.n, base.C, base.dtype, base.chip):
            return key
    return base
