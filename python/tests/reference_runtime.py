"""A runtime for the C++ launch path's CPU tests that computes: each "kernel" of its kernel set is
one whole op of mhc.torch.reference, launched with the op's arguments and results as its buffers,
so that HyperConnection's C++ steps (mhc/torch/native.cpp: the dx link, recomputation, the chain,
the dy fold) run real numbers on the CPU. The mock runtime (libmhc_runtime_mock.so) only records
launches; this one runs no cubin either, but checks what the C++ side computes from them.

It stands in for libmhc_runtime.so where KernelSet and native.register use it: the entry points
are ctypes callbacks (their addresses go to the C++ side like the real ones')."""

import ctypes
import json
import types

import torch

from mhc.torch import kernels
from mhc.torch import reference as ref

_LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, *[ctypes.c_int64] * 6, ctypes.c_int32,
                           ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32,
                           ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64))
_MESSAGE = ctypes.CFUNCTYPE(ctypes.c_char_p)
_CLEAR = ctypes.CFUNCTYPE(None)

# The ops the reference module has (the two benchmark-only fused ops have none).
OPS = [op for op in kernels.OP_BUFFERS if hasattr(ref, op)]
_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def write_set(folder, key):
    """A kernel-set folder for `key` whose kernels are the reference ops (one launch each)."""
    folder.mkdir(parents=True, exist_ok=True)
    ops = {op: {"launches": [{"kernel": op, "block": [1, 1, 1], "grid": {"tokens_per_block": 1 << 30},
                              "buffers": list(args + results)}]}
           for op, (args, results) in kernels.OP_BUFFERS.items() if op in OPS}
    manifest = {"schema": kernels.SCHEMA, "key": key.as_dict(), "cubin": "kernels.cubin",
                "provenance": {"note": "reference ops for tests (reference_runtime.py)"},
                "ops": ops}
    (folder / kernels.MANIFEST_NAME).write_text(json.dumps(manifest))
    (folder / "kernels.cubin").write_bytes(b"no cubin: reference ops")
    return folder


class ReferenceRuntime:
    """`lib` has the entry points KernelSet and the C++ launch path call; `launches` records the
    ops run, in order."""

    def __init__(self, key):
        self.key = key
        self.launches = []
        self._ops = {}                 # function handle -> op name
        self._error = b""
        self._callbacks = (_LAUNCH(self._launch), _MESSAGE(lambda: self._error),
                           _CLEAR(self._clear))     # kept alive as long as the runtime
        launch, message, clear = self._callbacks
        self.lib = types.SimpleNamespace(
            mhcLaunchFlat=launch, mhcRuntimeGetErrorMessage=message, mhcRuntimeClearError=clear,
            mhcRuntimeGetLastError=lambda: 0, mgpuSetDefaultDevice=lambda index: None,
            mgpuModuleLoad=lambda data, size: 1, mgpuModuleGetFunction=self._function)

    def check(self):
        pass

    def _function(self, module, name):
        handle = 0x1000 + len(self._ops)
        self._ops[handle] = name.decode()
        return handle

    def _clear(self):
        self._error = b""

    def _buffer(self, name, pointer, numel, T):
        shape = kernels.buffer_shape(name, (T,), self.key.n, self.key.C)
        dtype = _DTYPES[self.key.dtype] if kernels.BUFFER_LAYOUT[name][1] == "A" else torch.float32
        assert numel == torch.Size(shape).numel(), (name, numel, shape)
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        size = numel * torch.empty((), dtype=dtype).element_size()
        memory = (ctypes.c_uint8 * size).from_address(pointer)
        return torch.frombuffer(memory, dtype=dtype).view(shape)

    def _attributes(self, op):
        k = self.key
        if op == "hc_post_project":             # its norm_project's eps only
            return (k.eps,)
        if op in kernels.NORM_OPS:
            return (k.iterations, k.eps, k.pre_eps, k.post_mult, k.norm_eps)
        if op in kernels.OPS_WITH_ATTRIBUTES:
            return (k.iterations, k.eps, k.pre_eps, k.post_mult)
        return ()

    def _launch(self, function, gx, gy, gz, bx, by, bz, smem, stream, T, count, pointers, numels):
        try:
            op = self._ops[function]
            args, results = kernels.OP_BUFFERS[op]
            buffers = [self._buffer(name, pointers[i], numels[i], T)
                       for i, name in enumerate(args + results)]
            # Like a kernel, the op sees neither grad mode nor a caller's autocast region.
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                out = getattr(ref, op)(*buffers[:len(args)], *self._attributes(op))
                out = (out,) if isinstance(out, torch.Tensor) else out
                for into, value in zip(buffers[len(args):], out):
                    into.copy_(value.reshape(into.shape))
            self.launches.append(op)
            return 0
        except Exception as e:  # noqa: BLE001 - reported through the runtime's error message
            self._error = f"{type(e).__name__}: {e}".encode()
            return 1
