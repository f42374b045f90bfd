"""mhc.runtime checks every call against the function's signature before anything runs: argument
count, dtype, rank, static sizes, layout, device, scalar types and declared results (issue 12)."""

import ctypes
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mhc.runtime import ArgType, Library, parse_signatures

GENERIC = '''
"builtin.module"() ({
  "func.func"() <{function_type = (tensor<?x4x64xbf16>, tensor<24x256xf32>, index, f32) -> tensor<?x24xf32>, sym_name = "project"}> ({
  "func.func"() <{arg_attrs = [{mhc.param = "a,b"}, {}], function_type = (memref<?xf32, strided<[?], offset: ?>>, memref<*xf32>) -> (), sym_name = "strided"}> ({
  "func.func"() <{function_type = (memref<8xf32>) -> (memref<?xf32>, memref<2x?xi32>), sym_name = "two"}> ({
  "func.func"() <{function_type = (memref<*xf32>) -> (), sym_name = "printMemrefF32", sym_visibility = "private"}> ({
  "func.func"() <{function_type = (i32) -> (), sym_name = "decl"}> : () -> ()
}) : () -> ()
'''
SIGS = parse_signatures(GENERIC)


def library(runtime):
    """A Library with SIGS and the given runtime (None: a CPU library), without a .so."""
    lib = Library.__new__(Library)
    lib.signatures, lib.runtime = SIGS, runtime
    return lib


HOST = library(None)
MOCK = library(SimpleNamespace(is_mock=True))
CUDA = library(SimpleNamespace(is_mock=False))


class FakeCudaTensor:
    """Stands in for a CUDA tensor on a machine without a GPU."""
    __module__ = "torch.fake"

    def __init__(self, shape, dtype=torch.bfloat16, device="cuda:0"):
        self.shape, self.dtype, self.device = torch.Size(shape), dtype, torch.device(device)
        self.is_cuda = True

    def is_contiguous(self):
        return True

    def stride(self):
        return torch.empty(self.shape, device="meta").stride()

    def data_ptr(self):
        return 0


def x_host(t=3):
    return np.zeros((t, 4, 64), np.uint16)


FN = np.zeros((24, 256), np.float32)


def test_parse_signatures():
    assert sorted(SIGS) == ["project", "strided", "two"]   # no private functions, declarations
    p = SIGS["project"]
    assert p.args[0] == ArgType("tensor<?x4x64xbf16>", "buffer", "bf16", (None, 4, 64), True)
    assert [a.kind for a in p.args] == ["buffer", "buffer", "scalar", "scalar"]
    assert p.results[0].shape == (None, 24)
    s = SIGS["strided"]
    assert not s.args[0].contiguous and s.args[1].kind == "unsupported"
    assert [r.text for r in SIGS["two"].results] == ["memref<?xf32>", "memref<2x?xi32>"]


def test_good_call_converts_scalars_and_derives_results():
    args, results = HOST.check_call(SIGS["project"], (x_host(), FN, 7, 0.5), None)
    assert isinstance(args[2], ctypes.c_int64) and args[2].value == 7
    assert isinstance(args[3], ctypes.c_float) and args[3].value == 0.5
    assert results == [(2, np.dtype(np.float32))]
    _, results = HOST.check_call(SIGS["two"], (np.zeros(8, np.float32),), None)
    assert results == [(1, np.dtype(np.float32)), (2, np.dtype(np.int32))]


@pytest.mark.parametrize("args, error, message", [
    ((x_host(), FN, 7), TypeError, "project takes 4 argument(s), got 3: project(tensor<?x4x64xbf16>"),
    ((x_host().astype(np.float16), FN, 7, 0.5), TypeError,
     "argument 0 (tensor<?x4x64xbf16>): expects bf16 elements (uint16 or int16 or bfloat16), got float16"),
    ((torch.zeros(3, 4, 64), FN, 7, 0.5), TypeError,
     "expects bf16 elements (torch.bfloat16), got torch.float32"),
    ((x_host()[0], FN, 7, 0.5), ValueError, "expects rank 3, got shape (4, 64)"),
    ((np.zeros((3, 4, 65), np.uint16), FN, 7, 0.5), ValueError, "expects size 64 in dim 2"),
    ((np.zeros((3, 4, 128), np.uint16)[:, :, ::2], FN, 7, 0.5), ValueError,
     "expects row-major contiguous data, got strides (1024, 256, 4) for shape (3, 4, 64)"),
    ((torch.zeros(3, 64, 4, dtype=torch.bfloat16).transpose(1, 2), FN, 7, 0.5), ValueError,
     "expects row-major contiguous data, got strides (256, 1, 4)"),
    ((x_host(), FN, 7.5, 0.5), TypeError, "argument 2 (index): expects an integer, got float"),
    ((x_host(), FN, True, 0.5), TypeError, "argument 2 (index): expects a number, got a bool"),
    ((x_host(), FN, ctypes.c_int32(7), 0.5), TypeError, "expects c_long, got c_int"),
    ((x_host(), FN, 2**70, 0.5), ValueError, "does not fit in index"),
    ((x_host(), FN, np.zeros(1), 0.5), TypeError, "argument 2 (index): expects a scalar, got an array"),
    ((x_host(), 1.0, 7, 0.5), TypeError, "argument 1 (tensor<24x256xf32>): expects a numpy array or torch tensor, got float"),
])
def test_bad_arguments(args, error, message):
    with pytest.raises(error, match=None) as info:
        HOST.check_call(SIGS["project"], args, None)
    assert message in str(info.value)


def test_devices():
    x, fn = FakeCudaTensor((3, 4, 64)), FakeCudaTensor((24, 256), torch.float32)
    CUDA.check_call(SIGS["project"], (x, fn, 7, 0.5), None)
    with pytest.raises(ValueError, match="argument 0 .*: is host memory; the CUDA runtime needs CUDA tensors"):
        CUDA.check_call(SIGS["project"], (x_host(), fn, 7, 0.5), None)
    with pytest.raises(ValueError, match="argument 0 .*: is on cuda:0, but this library works on host memory \\(mock runtime\\)"):
        MOCK.check_call(SIGS["project"], (x, FN, 7, 0.5), None)
    with pytest.raises(ValueError, match="is on cuda:0, but this library works on host memory \\(CPU\\)"):
        HOST.check_call(SIGS["project"], (x, FN, 7, 0.5), None)
    with pytest.raises(ValueError, match="argument 1 .*: is on cuda:1, an earlier argument on cuda:0"):
        CUDA.check_call(SIGS["project"], (x, FakeCudaTensor((24, 256), torch.float32, "cuda:1"), 7, 0.5), None)
    with pytest.raises(ValueError, match="the runtime loads the kernels on CUDA device 0"):
        CUDA.check_call(SIGS["project"], (FakeCudaTensor((3, 4, 64), device="cuda:1"), fn, 7, 0.5), None)
    # On the GPU results are torch tensors by default.
    _, results = CUDA.check_call(SIGS["project"], (x, fn, 7, 0.5), None)
    assert results == [(2, torch.float32)]


def test_results_described_by_the_caller():
    args = (x_host(), FN, 7, 0.5)
    HOST.check_call(SIGS["project"], args, [(2, np.float32)])
    with pytest.raises(TypeError, match="project returns 1 result\\(s\\), results= describes 2"):
        HOST.check_call(SIGS["project"], args, [(2, np.float32), (1, np.float32)])
    with pytest.raises(TypeError, match="result 0 \\(tensor<\\?x24xf32>\\): has rank 2, results= says 3"):
        HOST.check_call(SIGS["project"], args, [(3, np.float32)])
    with pytest.raises(TypeError, match="result 0 .*: holds f32, results= says <class 'numpy.float16'>"):
        HOST.check_call(SIGS["project"], args, [(2, np.float16)])


def test_unsupported_argument_types():
    with pytest.raises(TypeError, match="argument 1 \\(memref<\\*xf32>\\): this type cannot be passed from Python"):
        HOST.check_call(SIGS["strided"], (np.zeros(4, np.float32)[::2], np.zeros(2, np.float32)), None)
