"""Calling mhc-compiled shared libraries from Python (ctypes), on torch CUDA tensors or numpy arrays.

    from mhc.runtime import Library
    lib = Library("out/libsublayer.so")          # loads libmhc_runtime.so from the same folder first
    lib.call("pre", x, fn, scale, base, u, ...)  # torch CUDA tensors (or numpy arrays with the mock)

Each tensor becomes a ranked memref descriptor (allocated ptr, aligned ptr, offset, sizes, strides;
strides in elements, as MLIR expects) passed by pointer to ``_mlir_ciface_<name>``. Scalars must be
given as ctypes or numpy scalars so their C type is explicit. Outputs can be arguments
(destination-passing style) or memref results: ``call(..., results=[(rank, dtype), ...])`` returns
them wrapped (torch tensors on the GPU, numpy arrays with the mock) and frees each allocation through
the runtime when the wrapper is collected.

With the CUDA runtime the call is enqueued on torch's current stream of the tensors' device
(mhcRuntimeSetStream + stream-ordered mode), like a PyTorch op: no host synchronization. Runtime
errors do not abort the process: the runtime is put in sticky mode and any error raises
``RuntimeError`` with the CUDA error name and the failing call after the call returns.

Arguments are checked before anything is launched, against the signature file that
mhc.compiler writes next to each library (``<lib>.signature.json``, the functions' MLIR types):
the number of arguments, each buffer's dtype, rank, static sizes, memory layout (row-major
contiguous unless the function takes a strided memref) and device (CUDA tensors of one device
for the CUDA runtime, host memory for the mock and CPU libraries), scalars' types, and the
declared results. A mismatch raises ``TypeError`` or ``ValueError`` naming the argument.
"""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_DESCRIPTOR_TYPES: dict[int, type] = {}


def descriptor_type(rank: int) -> type:
    """ctypes struct laid out like MLIR's memref descriptor of the given rank."""
    if rank not in _DESCRIPTOR_TYPES:
        fields = [("allocated", ctypes.c_void_p), ("aligned", ctypes.c_void_p),
                  ("offset", ctypes.c_int64)]
        if rank > 0:
            fields += [("sizes", ctypes.c_int64 * rank), ("strides", ctypes.c_int64 * rank)]
        _DESCRIPTOR_TYPES[rank] = type(f"MemRefDescriptor{rank}D", (ctypes.Structure,),
                                       {"_fields_": fields})
    return _DESCRIPTOR_TYPES[rank]


def make_descriptor(ptr: int, sizes, strides, offset: int = 0):
    sizes, strides = list(sizes), list(strides)
    if len(sizes) != len(strides):
        raise ValueError("sizes and strides differ in rank")
    desc = descriptor_type(len(sizes))()
    desc.allocated = ptr
    desc.aligned = ptr
    desc.offset = offset
    for i, (s, st) in enumerate(zip(sizes, strides)):
        desc.sizes[i] = int(s)
        desc.strides[i] = int(st)
    return desc


def from_numpy(a: np.ndarray):
    if any(s % a.itemsize for s in a.strides):
        raise ValueError("numpy array strides are not a multiple of its item size")
    return make_descriptor(a.ctypes.data, a.shape, [s // a.itemsize for s in a.strides])


def from_torch(t):
    # data_ptr() already includes the storage offset; torch strides are in elements.
    return make_descriptor(t.data_ptr(), t.shape, t.stride())


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


# ------------------------------------------------------------------------------------------------
# Signatures: what a function takes, from its MLIR type (mhc.compiler writes them)
# ------------------------------------------------------------------------------------------------

_SCALAR_TYPES = {"index": ctypes.c_int64, "i1": ctypes.c_bool, "i8": ctypes.c_int8,
                 "i16": ctypes.c_int16, "i32": ctypes.c_int32, "i64": ctypes.c_int64,
                 "f32": ctypes.c_float, "f64": ctypes.c_double}
# numpy dtypes a buffer of each MLIR element type may have (bf16: its bit patterns).
_NUMPY_DTYPES = {"bf16": ("uint16", "int16", "bfloat16"), "f16": ("float16",),
                 "f32": ("float32",), "f64": ("float64",), "i1": ("bool",), "i8": ("int8", "uint8"),
                 "i16": ("int16", "uint16"), "i32": ("int32", "uint32"),
                 "i64": ("int64", "uint64"), "index": ("int64",)}
_TORCH_DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32", "f64": "float64",
                 "i1": "bool", "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
                 "index": "int64"}


@dataclass(frozen=True)
class ArgType:
    """One argument or result of a compiled function, read off its MLIR type."""
    text: str                     # the MLIR type, e.g. "tensor<?x4x64xbf16>"
    kind: str                     # "buffer", "scalar" or "unsupported"
    dtype: str = ""               # MLIR element / scalar type: "bf16", "f32", "index", ...
    shape: tuple = ()             # buffer sizes, None where dynamic
    contiguous: bool = True       # identity layout: row-major contiguous data

    @staticmethod
    def parse(text: str) -> "ArgType":
        text = text.strip()
        if text in _SCALAR_TYPES:
            return ArgType(text, "scalar", text)
        if not (text.startswith(("tensor<", "memref<")) and text.endswith(">")):
            return ArgType(text, "unsupported")
        body = _split_top_level(text[text.index("<") + 1:-1])
        shape_and_type, layout = body[0].strip(), body[1:]
        if shape_and_type.startswith("*"):
            return ArgType(text, "unsupported")     # unranked: another descriptor
        dims = []
        rest = shape_and_type
        while True:
            head, sep, tail = rest.partition("x")
            if sep and (head == "?" or head.isdigit()):
                dims.append(None if head == "?" else int(head))
                rest = tail
            else:
                break
        dtype = rest
        if dtype not in _NUMPY_DTYPES:
            return ArgType(text, "unsupported")
        # A memref with a layout (strided<...>, an affine map) takes any strides; a memory space
        # (an integer or #gpu.address_space) is not a layout.
        strided = any(not (a.strip().isdigit() or a.strip().startswith("#gpu.address_space"))
                      for a in layout)
        return ArgType(text, "buffer", dtype, tuple(dims), not strided)


def _split_top_level(s: str) -> list[str]:
    """Splits at the commas outside brackets and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(s):
        if ch == '"' and (i == 0 or s[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch in "<([{":
            depth += 1
        elif not quoted and ch in ">)]}" and not (ch == ">" and i > 0 and s[i - 1] == "-"):
            depth -= 1
        elif not quoted and ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p for p in parts if p.strip()]


@dataclass(frozen=True)
class Signature:
    name: str
    args: tuple
    results: tuple

    def describe(self) -> str:
        return (f"{self.name}({', '.join(a.text for a in self.args)})"
                + (f" -> ({', '.join(r.text for r in self.results)})" if self.results else ""))


def parse_signatures(generic_mlir: str) -> dict[str, Signature]:
    """The public functions with a body in a module printed in generic form
    (``mhc-opt --mlir-print-op-generic``), by name."""
    sigs = {}
    for line in generic_mlir.splitlines():
        line = line.strip()
        if not line.startswith('"func.func"()') or not line.endswith("({"):
            continue                                  # not a function, or a declaration
        props = line[line.index("<{") + 2:line.rindex("}>")]
        fields = {}
        for part in _split_top_level(props):
            key, _, value = part.partition("=")
            fields[key.strip()] = value.strip()
        if fields.get("sym_visibility", '"public"') != '"public"':
            continue
        ftype = fields["function_type"]
        ins, _, outs = ftype.partition("->")
        ins, outs = ins.strip(), outs.strip()
        arg_types = _split_top_level(ins[1:-1])
        res_types = _split_top_level(outs[1:-1]) if outs.startswith("(") else [outs]
        name = fields["sym_name"].strip('"')
        sigs[name] = Signature(name, tuple(ArgType.parse(t) for t in arg_types),
                               tuple(ArgType.parse(t) for t in res_types))
    return sigs


def signature_path(library: str | os.PathLike) -> Path:
    """Where mhc.compiler writes the signatures of a library: libfoo.so -> libfoo.signature.json."""
    library = Path(library)
    return library.with_name(library.name.removesuffix(".so") + ".signature.json")


def write_signatures(sigs: dict[str, Signature], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(
        {name: {"args": [a.text for a in s.args], "results": [r.text for r in s.results]}
         for name, s in sigs.items()}, indent=1) + "\n")


def read_signatures(path: str | os.PathLike) -> dict[str, Signature]:
    data = json.loads(Path(path).read_text())
    return {name: Signature(name, tuple(ArgType.parse(t) for t in f["args"]),
                            tuple(ArgType.parse(t) for t in f["results"]))
            for name, f in data.items()}


class Runtime:
    """libmhc_runtime.so (or the mock), loaded RTLD_GLOBAL so libraries loaded after it bind to it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lib = ctypes.CDLL(str(self.path), mode=ctypes.RTLD_GLOBAL)
        L = self.lib
        L.mhcRuntimeGetErrorMessage.restype = ctypes.c_char_p
        L.mhcRuntimeGetLastError.restype = ctypes.c_int
        L.mhcRuntimeGetStream.restype = ctypes.c_void_p
        L.mhcRuntimeSetStream.argtypes = [ctypes.c_void_p]
        L.mhcRuntimeIsMock.restype = ctypes.c_int
        self.is_mock = bool(L.mhcRuntimeIsMock())
        if self.is_mock:
            L.mhcMockGetLog.restype = ctypes.c_char_p
            L.mhcMockLaunchCount.restype = ctypes.c_long
            L.mhcMockLiveBuffers.restype = ctypes.c_long
        L.mhcRuntimeSetErrorMode(1)  # sticky: errors become exceptions, not abort()

    def check(self) -> None:
        code = self.lib.mhcRuntimeGetLastError()
        if code:
            msg = self.lib.mhcRuntimeGetErrorMessage().decode()
            self.lib.mhcRuntimeClearError()
            raise RuntimeError(f"mhc runtime error {code}: {msg}")

    def set_stream(self, stream: int | None) -> None:
        """Runs generated code on this CUstream (0/None: CUDA's legacy default stream)."""
        self.lib.mhcRuntimeSetStream(ctypes.c_void_p(stream or 0))

    def use_own_stream(self) -> None:
        self.lib.mhcRuntimeUseOwnStream()

    def set_stream_ordered(self, on: bool) -> None:
        self.lib.mhcRuntimeSetStreamOrdered(int(bool(on)))

    def synchronize(self) -> None:
        self.lib.mhcRuntimeSynchronize()
        self.check()

    # Mock-only inspection.
    def mock_log(self) -> str:
        return self.lib.mhcMockGetLog().decode()

    def mock_clear_log(self) -> None:
        self.lib.mhcMockClearLog()

    def mock_launch_count(self) -> int:
        return int(self.lib.mhcMockLaunchCount())


_RUNTIMES: dict[Path, Runtime] = {}


def load_runtime(path: str | os.PathLike) -> Runtime:
    """One Runtime object per runtime library path (a library can only be loaded once)."""
    key = Path(path).resolve()
    if key not in _RUNTIMES:
        _RUNTIMES[key] = Runtime(key)
    return _RUNTIMES[key]


def _linked_runtime(so: Path) -> Path:
    """The runtime library `so` was linked against, looked up in its own folder."""
    data = so.read_bytes()
    name = "libmhc_runtime_mock.so" if b"libmhc_runtime_mock.so" in data else "libmhc_runtime.so"
    path = so.parent / name
    if not path.exists():
        raise FileNotFoundError(f"{so} needs {name} in the same folder")
    return path


class Library:
    """A shared library produced by mhc.compiler.compile_gpu (or compile_cpu)."""

    def __init__(self, path: str | os.PathLike, runtime: Runtime | None = None,
                 signatures: dict[str, Signature] | None = None):
        self.path = Path(path).resolve()
        self.runtime = runtime
        # The functions' types (from <lib>.signature.json, written by mhc.compiler); without them
        # calls are not checked.
        self.signatures = signatures
        if self.signatures is None and signature_path(self.path).exists():
            self.signatures = read_signatures(signature_path(self.path))
        if self.runtime is None and b"libmhc_runtime" in self.path.read_bytes():
            self.runtime = load_runtime(_linked_runtime(self.path))
        # Loading runs the global constructor that loads the GPU module.
        self.lib = ctypes.CDLL(str(self.path))
        if self.runtime:
            self.runtime.check()

    def function(self, name: str):
        try:
            fn = getattr(self.lib, f"_mlir_ciface_{name}")
        except AttributeError:
            raise AttributeError(f"{self.path.name} has no C interface function {name!r} "
                                 f"(is it public and lowered with llvm.emit_c_interface?)") from None
        fn.restype = None
        return fn

    def call(self, name: str, *args, results=None):
        """Calls ``name``. ``results`` describes memref results, one (rank, dtype) per result, dtype
        a numpy dtype or torch dtype (derived from the signature when there is one); returns them as
        torch tensors (CUDA) or numpy arrays (mock, CPU) that own the runtime's allocation (see
        DeviceBuffer). With a signature, every argument is checked first (``check_call``)."""
        fn = self.function(name)
        sig = self.signatures.get(name) if self.signatures is not None else None
        if self.signatures is not None and sig is None:
            raise AttributeError(f"{self.path.name}: no public function {name!r} in its signatures "
                                 f"({', '.join(sorted(self.signatures)) or 'none'})")
        if sig is not None:
            args, results = self.check_call(sig, args, results)
        keep, cargs = [], []
        result_struct = None
        if results:
            types = [descriptor_type(rank) for rank, _ in results]
            result_struct = type("Results", (ctypes.Structure,),
                                 {"_fields_": [(f"r{i}", t) for i, t in enumerate(types)]})()
            target = result_struct if len(results) > 1 else result_struct.r0
            cargs.append(ctypes.byref(target))
        device = None
        for a in args:
            if isinstance(a, np.ndarray):
                d = from_numpy(a)
                keep.append(d)
                cargs.append(ctypes.byref(d))
            elif _is_torch(a):
                if a.is_cuda:
                    device = a.device
                d = from_torch(a)
                keep.append(d)
                cargs.append(ctypes.byref(d))
            elif isinstance(a, ctypes.Structure):
                cargs.append(ctypes.byref(a))
            elif isinstance(a, (ctypes._SimpleCData,)):
                cargs.append(a)
            elif isinstance(a, np.generic):
                cargs.append(np.ctypeslib.as_ctypes_type(a.dtype)(a.item()))
            else:
                raise TypeError(f"argument of type {type(a).__name__}: pass arrays, tensors, "
                                f"ctypes or numpy scalars")
        rt = self.runtime
        if rt is not None and device is not None and not rt.is_mock:
            import torch
            rt.set_stream(torch.cuda.current_stream(device).cuda_stream)
            rt.set_stream_ordered(True)
        fn(*cargs)
        if rt is not None:
            rt.check()
        if not results:
            return None
        outs = [self._wrap(getattr(result_struct, f"r{i}"), dt, device)
                for i, (_, dt) in enumerate(results)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _host_memory(self) -> bool:
        """Whether this library's buffers are host memory (the mock runtime, CPU libraries)."""
        return self.runtime is None or self.runtime.is_mock

    def check_call(self, sig: Signature, args, results):
        """Checks `args` against `sig` before anything runs; returns the arguments with Python
        scalars converted to their C types, and the results (derived when not given). Raises
        TypeError or ValueError naming the argument and what it should be."""
        if len(args) != len(sig.args):
            raise TypeError(f"{sig.name} takes {len(sig.args)} argument(s), got {len(args)}: "
                            f"{sig.describe()}")
        converted, device = [], None
        for i, (a, t) in enumerate(zip(args, sig.args)):
            what = f"{sig.name}: argument {i} ({t.text})"
            if t.kind == "unsupported":
                raise TypeError(f"{what}: this type cannot be passed from Python")
            if t.kind == "scalar":
                converted.append(_scalar_argument(a, t, what))
                continue
            if isinstance(a, ctypes.Structure):      # a descriptor built by the caller
                converted.append(a)
                continue
            if not (isinstance(a, np.ndarray) or _is_torch(a)):
                raise TypeError(f"{what}: expects a numpy array or torch tensor, got "
                                f"{type(a).__name__}")
            _check_buffer(a, t, what)
            if _is_torch(a) and a.is_cuda:
                if self._host_memory():
                    raise ValueError(f"{what}: is on {a.device}, but this library works on host "
                                     f"memory ({'mock runtime' if self.runtime else 'CPU'})")
                if device is not None and a.device != device:
                    raise ValueError(f"{what}: is on {a.device}, an earlier argument on {device}")
                if a.device.index not in (0, None):
                    raise ValueError(f"{what}: is on {a.device}; the runtime loads the kernels on "
                                     f"CUDA device 0")
                device = a.device
            elif not self._host_memory():
                raise ValueError(f"{what}: is host memory; the CUDA runtime needs CUDA tensors")
            converted.append(a)
        if results is None:
            results = [_default_result(r, sig, self._host_memory()) for r in sig.results]
        else:
            results = list(results)
            if len(results) != len(sig.results):
                raise TypeError(f"{sig.name} returns {len(sig.results)} result(s), results= "
                                f"describes {len(results)}: {sig.describe()}")
            for j, ((rank, dtype), r) in enumerate(zip(results, sig.results)):
                what = f"{sig.name}: result {j} ({r.text})"
                if r.kind != "buffer":
                    raise TypeError(f"{what}: only buffer results can be returned to Python")
                if rank != len(r.shape):
                    raise TypeError(f"{what}: has rank {len(r.shape)}, results= says {rank}")
                if not _dtype_matches(dtype, r.dtype):
                    raise TypeError(f"{what}: holds {r.dtype}, results= says {dtype}")
        return tuple(converted), results or None

    def _wrap(self, desc, dtype, device):
        rank = len(desc.sizes) if hasattr(desc, "sizes") else 0
        shape = tuple(desc.sizes[i] for i in range(rank))
        strides = tuple(desc.strides[i] for i in range(rank))
        buf = DeviceBuffer(self.runtime, desc.allocated)
        torch_dtype = None
        if not isinstance(dtype, np.dtype) and type(dtype).__module__.startswith("torch"):
            torch_dtype = dtype
            import torch
            np_dtype = np.dtype(f"i{torch.empty(0, dtype=dtype).element_size()}") \
                if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype
        else:
            np_dtype = np.dtype(dtype)
        ptr = (desc.aligned or 0) + desc.offset * np_dtype.itemsize
        if self.runtime is not None and not self.runtime.is_mock and device is not None:
            import torch
            buf.__cuda_array_interface__ = {
                "shape": shape, "typestr": np_dtype.str, "data": (ptr, False), "version": 3,
                "strides": tuple(s * np_dtype.itemsize for s in strides), "stream": None}
            t = torch.as_tensor(buf, device=device)
            return t.view(torch_dtype) if torch_dtype is not None else t
        # Host memory (the mock runtime, or the CPU path): a numpy view that keeps `buf` alive.
        count = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
        flat = np.ctypeslib.as_array((ctypes.c_byte * (count * np_dtype.itemsize)).from_address(ptr)) \
            if count else np.zeros(0, np.byte)
        arr = np.lib.stride_tricks.as_strided(flat.view(np_dtype), shape,
                                              tuple(s * np_dtype.itemsize for s in strides))
        owned = arr.view(_OwnedArray)
        owned.owner = buf  # views of it keep it, and so the buffer, alive
        return owned


def _dtype_name(dtype) -> str:
    """'float32', 'bfloat16', ... for a numpy or torch dtype (or type)."""
    return str(dtype).removeprefix("torch.") if type(dtype).__module__.startswith("torch") \
        else np.dtype(dtype).name


def _dtype_matches(dtype, mlir_type: str) -> bool:
    name = _dtype_name(dtype)
    if type(dtype).__module__.startswith("torch"):
        return name == _TORCH_DTYPES[mlir_type]
    return name in _NUMPY_DTYPES[mlir_type]


def _check_buffer(a, t: ArgType, what: str) -> None:
    """dtype, rank, static sizes and layout of an array or tensor against its MLIR type."""
    if not _dtype_matches(a.dtype, t.dtype):
        expected = (f"torch.{_TORCH_DTYPES[t.dtype]}" if _is_torch(a)
                    else " or ".join(_NUMPY_DTYPES[t.dtype]))
        raise TypeError(f"{what}: expects {t.dtype} elements ({expected}), got {a.dtype}")
    shape = tuple(a.shape)
    if len(shape) != len(t.shape):
        raise ValueError(f"{what}: expects rank {len(t.shape)}, got shape {shape}")
    for d, (got, want) in enumerate(zip(shape, t.shape)):
        if want is not None and got != want:
            raise ValueError(f"{what}: expects size {want} in dim {d}, got shape {shape}")
    contiguous = a.is_contiguous() if _is_torch(a) else a.flags.c_contiguous
    if t.contiguous and not contiguous:
        raise ValueError(f"{what}: expects row-major contiguous data, got strides "
                         f"{tuple(a.stride()) if _is_torch(a) else a.strides} for shape {shape} "
                         f"(pass .contiguous() / np.ascontiguousarray)")


def _scalar_argument(a, t: ArgType, what: str):
    """A scalar argument as the C type of `t`; Python and numpy numbers of the right kind are
    converted, ctypes values must be of that type."""
    ctype = _SCALAR_TYPES[t.dtype]
    is_float = t.dtype.startswith("f")
    if isinstance(a, ctypes._SimpleCData):
        if type(a) is not ctype:
            raise TypeError(f"{what}: expects {ctype.__name__}, got {type(a).__name__}")
        return a
    if isinstance(a, (np.ndarray,)) or _is_torch(a):
        raise TypeError(f"{what}: expects a scalar, got an array")
    if isinstance(a, np.generic):
        a = a.item()
    if isinstance(a, bool) and t.dtype != "i1":
        raise TypeError(f"{what}: expects a number, got a bool")
    if isinstance(a, int) and not isinstance(a, bool):
        if is_float:
            return ctype(float(a))
        info = np.iinfo(np.dtype(ctype))
        if not info.min <= a <= info.max:
            raise ValueError(f"{what}: {a} does not fit in {t.dtype}")
        return ctype(a)
    if isinstance(a, float) and is_float:
        return ctype(a)
    if isinstance(a, bool):
        return ctype(a)
    raise TypeError(f"{what}: expects {'a float' if is_float else 'an integer'}, got "
                    f"{type(a).__name__}")


def _default_result(r: ArgType, sig: Signature, host: bool):
    """(rank, dtype) of a result from its type: numpy dtypes on host memory (bf16 as its uint16
    bit patterns), torch dtypes on the GPU."""
    if r.kind != "buffer":
        raise TypeError(f"{sig.name}: result {r.text} cannot be returned to Python")
    if host:
        return len(r.shape), np.dtype("uint16" if r.dtype == "bf16" else _NUMPY_DTYPES[r.dtype][0])
    import torch
    return len(r.shape), getattr(torch, _TORCH_DTYPES[r.dtype])


class _OwnedArray(np.ndarray):
    """A numpy array that keeps the buffer it views alive."""
    owner = None


class DeviceBuffer:
    """A memref result's allocation; returned to the runtime (mgpuMemFree) when collected."""

    def __init__(self, runtime: Runtime | None, ptr: int | None):
        self.runtime, self.ptr = runtime, ptr

    def __del__(self):
        if self.runtime is not None and self.ptr:
            self.runtime.lib.mgpuMemFree(ctypes.c_void_p(self.ptr), ctypes.c_void_p(0))
