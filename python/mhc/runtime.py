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
"""

from __future__ import annotations

import ctypes
import os
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

    def __init__(self, path: str | os.PathLike, runtime: Runtime | None = None):
        self.path = Path(path).resolve()
        self.runtime = runtime
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
        a numpy dtype or torch dtype; returns them as torch tensors (CUDA) or numpy arrays (mock)
        that own the runtime's allocation (see DeviceBuffer)."""
        fn = self.function(name)
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
