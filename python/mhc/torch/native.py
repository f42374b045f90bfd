"""The C++ launch path of the cuda backend (``native.cpp``), built on first use.

What it replaces, to cut host time per call (docs/Torch.md, "Host time"):

* ``run_op`` does what kernels.py's ``_OpPlan.run`` does (check, allocate with PyTorch's caching
  allocator, launch each kernel through the runtime's ``mhcLaunchFlat`` on the current stream);
* ``install_ops`` registers C++ kernels of the ``torch.ops.mhc`` ops for the CUDA dispatch key, so
  that a compiled graph's op calls skip the custom ops' Python kernels (PyTorch 2.9 and later;
  ``MHC_NATIVE_DISPATCH=0`` leaves them out);
* ``pre_step`` / ``post_step`` are HyperConnection's two autograd functions (modules.py's
  ``_PreStep`` / ``_PostStep``, the same wiring) as autograd nodes written in C++: no Python runs
  in their forward or backward;
* ``forward`` / ``forward_with`` run HyperConnection's whole forward (the steps, the sublayer call
  with the recomputation's saved-tensor hooks, the chain of consecutive HyperConnections):
  ``forward`` is its fast path (None when a call is not for it), ``forward_with`` the general
  path's ``_forward_native``.

It is compiled against the PyTorch in use with ``torch.utils.cpp_extension`` (a C++ compiler is
needed; under a minute, once, then cached in ``$MHC_NATIVE_BUILD`` or ``<kernel cache root>/native/<torch
version>``). A copy built elsewhere only works with the identical PyTorch build, so a carried
kernel cache does not carry it. ``MHC_NATIVE=0`` turns the path off; ``MHC_NATIVE=1`` makes a
failed build an error instead of a fall-back to the Python path (which computes the same results
with the same kernels). ``python -m mhc.torch.build_native`` builds it and says where it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.cpp")

_LOCK = threading.Lock()
_MODULE = None
_FAILURE: str | None = None   # why the path is off (None: not tried yet, or on)
suspended = False             # True inside python_path()
fast_forward = None           # the module's forward (HyperConnection's fast path) once loaded


@contextlib.contextmanager
def python_path():
    """Within this block, HyperConnection's steps and the ops' launches run from Python (the
    ctypes path, the ops' Python implementations) even where the C++ path is built: for checks
    and benchmarks comparing the two."""
    global suspended
    before, suspended = suspended, True
    if _MODULE is not None:
        _MODULE.set_dispatch_enabled(False)
    try:
        yield
    finally:
        suspended = before
        if _MODULE is not None:
            _MODULE.set_dispatch_enabled(not before)


def mode() -> str:
    """'off', 'on' (required) or 'auto', from $MHC_NATIVE."""
    value = os.environ.get("MHC_NATIVE", "auto").strip().lower()
    return {"0": "off", "off": "off", "1": "on", "on": "on"}.get(value, "auto")


def dispatch_wanted() -> bool:
    """Whether load() registers the ops' C++ kernels for the CUDA key (install_ops): on unless
    ``MHC_NATIVE_DISPATCH=0`` (then a compiled graph's mhc ops run their Python implementations,
    which launch from C++ too: the comparison benchmarks make)."""
    return _switch_on("MHC_NATIVE_DISPATCH")


def fold_dy_wanted() -> bool:
    """Whether the C++ steps fold a sublayer's dy into the backward of the sublayer above
    (native.cpp, "The dy fold in eager mode"): on unless ``MHC_EAGER_FOLD_DY=0``. Read when the
    module loads; ``load().set_fold_dy(on)`` switches it in a running process."""
    return _switch_on("MHC_EAGER_FOLD_DY")


def _switch_on(name: str) -> bool:
    """An on-by-default switch from the environment: off where $name is 0, off or false."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "off", "false")


def build_directory() -> Path:
    env = os.environ.get("MHC_NATIVE_BUILD")
    if env:
        return Path(env)
    from .kernels import cache_root
    tag = f"torch-{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"
    return cache_root() / "native" / tag.replace("+", "_")


def _compile(name="mhc_torch_native", source=SOURCE, folder=None):
    """Builds (or finds built) `source` as the extension module `name` in `folder` (default:
    build_directory()); bench/native_ab.py builds another version of native.cpp beside it."""
    from torch.utils import cpp_extension
    flags, include, ldflags = ["-O2"], [], []     # the C++ standard: torch's own default
    cuda_home = cpp_extension.CUDA_HOME
    if torch.version.cuda and cuda_home and (Path(cuda_home) / "include" / "cuda.h").is_file():
        flags.append("-DMHC_NATIVE_CUDA")       # PyTorch's current stream (c10::cuda)
        include.append(str(Path(cuda_home) / "include"))
        ldflags.append("-lc10_cuda")
    folder = Path(folder) if folder else build_directory()
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / f"{name}.so").exists():
        print(f"mhc: building the C++ launch path for torch {torch.__version__} in {folder} "
              f"(once; under a minute)", file=sys.stderr, flush=True)
    return cpp_extension.load(name=name, sources=[str(source)],
                              build_directory=str(folder), extra_cflags=flags,
                              extra_include_paths=include, extra_ldflags=ldflags, verbose=False)


def load():
    """The compiled module, or None when the path is off or cannot be built (``failure()`` says
    why). Builds at most once per process."""
    global _MODULE, _FAILURE, fast_forward
    if _MODULE is not None:
        return _MODULE
    if mode() == "off":
        return None
    with _LOCK:
        if _MODULE is None and _FAILURE is None:
            try:
                from .kernels import signature_table
                module = _compile()
                module.set_signatures(signature_table())   # the ops' buffers, shapes, dtypes
                module.set_fold_dy(fold_dy_wanted())
                if dispatch_wanted():
                    install_ops(module)
                _MODULE, fast_forward = module, module.forward
            except Exception as e:  # noqa: BLE001 - any build problem: fall back, say why
                _FAILURE = _reason(e)
                if mode() == "on":
                    raise RuntimeError(f"MHC_NATIVE=1 but mhc's C++ launch path did not build: "
                                       f"{_FAILURE}") from e
    return _MODULE


def install_ops(module, key: str = "CUDA", resolve=None) -> bool:
    """Registers native.cpp's kernels of the torch.ops.mhc ops for dispatch key `key` (and its
    autograd key): a call of an op on such tensors (a compiled graph's) then runs its kernels
    from C++, skipping the custom op's Python kernels (native.cpp, "dispatcher kernels").
    `resolve(op, x, attributes or None)` names the kernel set's handle, -1 for the op's Python
    implementation (default: kernels.dispatch_binding). False where this PyTorch (before 2.9)
    cannot take them: the Python kernels stay."""
    from . import ops  # noqa: F401 - the ops must be defined before their C++ kernels
    from .kernels import dispatch_binding
    installed = module.install_ops(key, resolve or dispatch_binding)
    module.set_dispatch_enabled(not suspended)
    return installed


def dispatch_installed(op: str = "hc_pre") -> bool:
    """Whether torch.ops.mhc.<op> on CUDA tensors runs native.cpp's kernel (the dispatcher's
    table says where its CUDA kernel was registered)."""
    table = torch._C._dispatch_dump_table(f"mhc::{op}")
    return any(line.startswith("CUDA:") and SOURCE.name in line for line in table.splitlines())


def forget_bindings() -> None:
    """Makes the C++ dispatcher kernels ask kernels.dispatch_binding again (a kernel set was
    loaded that may be the better match)."""
    if _MODULE is not None:
        _MODULE.forget_bindings()


def _reason(error: Exception) -> str:
    """One line for a build failure: the compiler's first error where there is one."""
    lines = str(error).strip().splitlines()
    first = next((l for l in lines if "error:" in l), lines[-1] if lines else "")
    return f"{type(error).__name__}: {first.strip()}"


def failure() -> str | None:
    if mode() == "off":
        return "turned off (MHC_NATIVE=0)"
    return _FAILURE


def _address(function) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value


def register(kernel_set, native=None) -> int:
    """Registers a loaded kernels.KernelSet with the C++ side (load()'s module, or `native`);
    returns its handle."""
    native = native or load()
    lib = kernel_set.runtime.lib
    key = kernel_set.key
    handle = native.new_kernel_set(
        key.n, key.C, key.dtype, _address(lib.mhcLaunchFlat),
        _address(lib.mhcRuntimeGetErrorMessage), _address(lib.mhcRuntimeClearError))
    symbols = {"n": key.n, "C": key.C, "M": key.M, "nC": key.n * key.C, "T": -1}

    def add(op, plan, max_T=-1):
        launches = [(function, tpb or 0, gx or 0, gy, gz, *block, smem, idx)
                    for function, tpb, gx, gy, gz, block, smem, idx, _, _ in plan.launches]
        scratch = []
        for i, (_, s) in enumerate(plan.scratch):
            dims = [d if isinstance(d, int) else
                    -1 - int(d[7:]) if d.startswith("blocks:") else symbols[d] for d in s["shape"]]
            scratch.append((dims, s["dtype"], plan.n_args + plan.n_results + i in plan.zero))
        zero_results = [i - plan.n_args for i in plan.zero
                        if plan.n_args <= i < plan.n_args + plan.n_results]
        native.add_op(handle, op, launches, scratch, zero_results, max_T)

    for op, plan in kernel_set.plans.items():
        add(op, plan)
        if plan.few_tokens is not None:    # its variant for few tokens, after the op itself
            add(op, plan.few_tokens, plan.few_tokens_max_T)
    return handle
