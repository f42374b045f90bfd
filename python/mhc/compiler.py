"""mhc compiler driver: MLIR module -> shared library (GPU or CPU) or a run under mlir-runner.

GPU (AOT) route, one function call or one command::

    compile_gpu("sublayer.mlir", "out/libsublayer.so", chip="sm_90")
    python -m mhc.compiler gpu sublayer.mlir -o out/libsublayer.so --chip sm_90

runs ``mhc-opt --llvm-request-c-wrappers <gpu pipeline>`` (kernels to a cubin in a gpu.binary, host
code calling the mgpu* runtime), ``mlir-translate --mlir-to-llvmir`` and ``clang -shared -fPIC``,
linked against libmhc_runtime.so (or the mock, ``runtime="mock"``), which is copied next to the
output so the folder is self-contained (rpath $ORIGIN). Every public function ``f`` of the module is
exported as ``_mlir_ciface_f`` taking pointers to memref descriptors (mhc.runtime builds them); the
functions' types are written beside the library (``libfoo.signature.json``) so that mhc.runtime can
check every call's arguments before it runs.

CPU route: ``compile_cpu`` (same, with --mhc-cpu-pipeline and no GPU runtime) and ``run_cpu``
(mlir-runner on the lowered module), for the CPU reference.

Tools are found through environment variables first: MHC_OPT (or MHC_BUILD_DIR/bin/mhc-opt),
MLIR_TRANSLATE, MLIR_RUNNER, CLANG; MHC_RUNTIME_DIR holds libmhc_runtime*.so (default: the lib/ next
to mhc-opt's bin/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LLVM_BIN = Path("/usr/lib/llvm-22/bin")
LLVM_LIB = Path("/usr/lib/llvm-22/lib")

# The GPU lowering used by compile_gpu. "mhc" is the project's own --mhc-gpu-pipeline; "upstream"
# is MLIR's --gpu-lower-to-nvvm-pipeline, which only handles modules that already use the gpu
# dialect (hand-written kernels). Switching the default is this one line.
DEFAULT_GPU_PIPELINE = "mhc"

FORMATS = ("bin", "fatbin", "isa")


class CompileError(RuntimeError):
    """A step of the driver failed; the message holds the command and its output."""


def _find_tool(env_var: str, names: list[str], build_subdir: str | None = None) -> str:
    value = os.environ.get(env_var)
    if value:
        return value
    if build_subdir:
        build = os.environ.get("MHC_BUILD_DIR")
        candidates = [Path(build)] if build else sorted(REPO_ROOT.glob("build*"))
        for b in candidates:
            p = b / build_subdir / names[0]
            if p.exists():
                return str(p)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        if (LLVM_BIN / name).exists():
            return str(LLVM_BIN / name)
    raise CompileError(f"cannot find {names[0]}: set {env_var}")


def mhc_opt() -> str:
    return _find_tool("MHC_OPT", ["mhc-opt"], build_subdir="bin")


def mlir_translate() -> str:
    return _find_tool("MLIR_TRANSLATE", ["mlir-translate-22", "mlir-translate"])


def mlir_runner() -> str:
    return _find_tool("MLIR_RUNNER", ["mlir-runner-22", "mlir-runner"])


def clang() -> str:
    return _find_tool("CLANG", ["clang-22", "clang"])


def runtime_dir() -> Path:
    """Folder holding libmhc_runtime.so and libmhc_runtime_mock.so."""
    env = os.environ.get("MHC_RUNTIME_DIR")
    if env:
        return Path(env)
    return Path(mhc_opt()).resolve().parent.parent / "lib"


def runtime_library(runtime: str = "cuda") -> Path:
    if runtime not in ("cuda", "mock"):
        raise ValueError(f"runtime must be 'cuda' or 'mock', not {runtime!r}")
    name = "libmhc_runtime.so" if runtime == "cuda" else "libmhc_runtime_mock.so"
    path = runtime_dir() / name
    if not path.exists():
        raise CompileError(f"{path} not found: build the mhc_runtime targets or set MHC_RUNTIME_DIR")
    return path


def gpu_pipeline_flags(chip: str = "sm_90", fmt: str = "bin", pipeline: str | None = None) -> list[str]:
    """mhc-opt flags lowering a module to a gpu.binary plus LLVM host code.

    The chip and format are validated by mhc-opt itself (--mhc-gpu-check-target,
    the one rule for every entry point); a bad value fails the compile with its
    message.
    """
    pipeline = pipeline or DEFAULT_GPU_PIPELINE
    if pipeline == "mhc":
        return [f"--mhc-gpu-pipeline=chip={chip} format={fmt}"]
    if pipeline == "upstream":
        # +ptx80: the default PTX 6.0 cannot target sm_90.
        return [f"--gpu-lower-to-nvvm-pipeline=cubin-chip={chip} cubin-features=+ptx80 "
                f"cubin-format={fmt}"]
    raise ValueError(f"pipeline must be 'mhc' or 'upstream', not {pipeline!r}")


def _run(cmd: list[str], *, env: dict | None = None, input_text: str | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, input=input_text)
    if proc.returncode != 0:
        raise CompileError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return proc.stdout


def _source_path(mlir: str | os.PathLike, workdir: Path) -> Path:
    """The module as a file: `mlir` is a path, or MLIR text (anything containing a newline or '{')."""
    text = str(mlir)
    if "\n" not in text and "{" not in text and Path(text).exists():
        return Path(text)
    if "\n" not in text and "{" not in text:
        raise CompileError(f"no such MLIR file: {text}")
    src = workdir / "input.mlir"
    src.write_text(text)
    return src


def function_signatures(mlir) -> dict:
    """The public functions of `mlir` (a path or MLIR text) and their types, read by mhc-opt."""
    from mhc.runtime import parse_signatures
    with tempfile.TemporaryDirectory(prefix="mhc-") as tmp:
        src = _source_path(mlir, Path(tmp))
        return parse_signatures(_run([mhc_opt(), str(src), "--mlir-print-op-generic"]))


def _write_signatures(mlir, out_so: Path) -> None:
    from mhc.runtime import signature_path, write_signatures
    write_signatures(function_signatures(mlir), signature_path(out_so))


def _cuda_env() -> dict:
    # gpu-module-to-binary needs the toolkit for ptxas and libdevice; without CUDA_HOME it
    # silently skips libdevice.
    env = dict(os.environ)
    env.setdefault("CUDA_HOME", "/usr/local/cuda")
    return env


def decode_mlir_string(s: str) -> bytes:
    """The bytes of an MLIR string attribute's body as printed (``\\XX`` hex escapes, ``\\\\`` for
    a backslash): e.g. a gpu.binary's cubin or PTX."""
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] == "\\":
            if s[i + 1] == "\\":
                out.append(0x5C)
                i += 2
            else:
                out.append(int(s[i + 1:i + 3], 16))
                i += 3
        else:
            out.append(ord(s[i]))
            i += 1
    return bytes(out)


def lower_gpu(mlir, chip: str = "sm_90", fmt: str = "bin", pipeline: str | None = None) -> str:
    """The module lowered to the LLVM dialect with its gpu.binary, as text."""
    with tempfile.TemporaryDirectory(prefix="mhc-") as tmp:
        src = _source_path(mlir, Path(tmp))
        return _run([mhc_opt(), str(src), "--llvm-request-c-wrappers",
                     *gpu_pipeline_flags(chip, fmt, pipeline)], env=_cuda_env())


def _link_shared(llvm_dialect: str, out_so: Path, libs: list[Path], extra_rpaths: list[str]) -> Path:
    out_so = out_so.resolve()
    out_so.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mhc-") as tmp:
        lowered = Path(tmp) / "lowered.mlir"
        lowered.write_text(llvm_dialect)
        ll = Path(tmp) / "module.ll"
        _run([mlir_translate(), "--mlir-to-llvmir", str(lowered), "-o", str(ll)])
        cmd = [clang(), "-shared", "-fPIC", "-O2", "-Wno-override-module", str(ll), "-o", str(out_so),
               "-Wl,--as-needed", "-Wl,-rpath,$ORIGIN"]
        for r in extra_rpaths:
            cmd.append(f"-Wl,-rpath,{r}")
        for lib in libs:
            cmd += [f"-L{lib.parent}", f"-l:{lib.name}"]
        _run(cmd)
    return out_so


def compile_gpu(mlir, out_so, chip: str = "sm_90", *, fmt: str = "bin", runtime: str = "cuda",
                pipeline: str | None = None, keep_ir: bool = False,
                extra_libs: tuple = ()) -> Path:
    """Compiles `mlir` (a path or MLIR text) to a shared library with C-callable entry points.

    The runtime library (and each of `extra_libs`, shared libraries the module's declared
    functions live in) is copied next to `out_so` and linked. With keep_ir, the lowered module
    is written beside it as <out>.lowered.mlir. Returns the path of the library.
    """
    out_so = Path(out_so)
    lowered = lower_gpu(mlir, chip, fmt, pipeline)
    if keep_ir:
        out_so.parent.mkdir(parents=True, exist_ok=True)
        Path(str(out_so) + ".lowered.mlir").write_text(lowered)
    out_so.parent.mkdir(parents=True, exist_ok=True)
    local = [_copy_beside(lib, out_so) for lib in (runtime_library(runtime), *map(Path, extra_libs))]
    out = _link_shared(lowered, out_so, local, [])
    _write_signatures(mlir, out)
    return out


def _copy_beside(lib: Path, out_so: Path) -> Path:
    """`lib` copied into out_so's folder (unless the same bytes are there already)."""
    local = out_so.parent.resolve() / lib.name
    if local != lib.resolve() and (not local.exists() or local.read_bytes() != lib.read_bytes()):
        # Copy then rename: overwriting a library in place would corrupt a process using it.
        tmp = local.with_name(local.name + ".tmp")
        shutil.copy2(lib, tmp)
        os.replace(tmp, local)
    return local


# ------------------------------------------------------------------------------------------------
# CPU reference path
# ------------------------------------------------------------------------------------------------

CPU_PIPELINE = ["--mhc-cpu-pipeline"]


def lower_cpu(mlir) -> str:
    with tempfile.TemporaryDirectory(prefix="mhc-") as tmp:
        src = _source_path(mlir, Path(tmp))
        return _run([mhc_opt(), str(src), "--llvm-request-c-wrappers", *CPU_PIPELINE])


def compile_cpu(mlir, out_so) -> Path:
    """CPU version of the module as a shared library (C interface as for compile_gpu)."""
    c_utils = LLVM_LIB / "libmlir_c_runner_utils.so"
    out = _link_shared(lower_cpu(mlir), Path(out_so), [c_utils], [str(LLVM_LIB)])
    _write_signatures(mlir, out)
    return out


def run_cpu(mlir, entry: str = "main", entry_result: str = "void") -> str:
    """Runs `entry` of the module on the CPU under mlir-runner; returns its stdout."""
    lowered = lower_cpu(mlir)
    libs = ",".join(str(LLVM_LIB / f) for f in ("libmlir_runner_utils.so", "libmlir_c_runner_utils.so"))
    return _run([mlir_runner(), "-", f"--entry-point-result={entry_result}", "-e", entry,
                 f"--shared-libs={libs}"], input_text=lowered)


def compile_torch_kernels(key: dict, out_dir) -> None:
    """The torch cuda backend's kernel set for `key` (kernels.cubin + manifest.json in out_dir):
    see mhc.torch.kernel_build."""
    from mhc.torch.kernel_build import compile_kernels
    compile_kernels(key, out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mhc.compiler", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gpu", help="compile to a shared library calling the GPU runtime")
    g.add_argument("input")
    g.add_argument("-o", "--output", required=True)
    g.add_argument("--chip", default="sm_90")
    g.add_argument("--format", default="bin", choices=FORMATS)
    g.add_argument("--runtime", default="cuda", choices=("cuda", "mock"))
    g.add_argument("--pipeline", default=None, choices=("mhc", "upstream"))
    g.add_argument("--keep-ir", action="store_true")
    c = sub.add_parser("cpu", help="compile to a shared library for the CPU")
    c.add_argument("input")
    c.add_argument("-o", "--output", required=True)
    r = sub.add_parser("run-cpu", help="run a function on the CPU under mlir-runner")
    r.add_argument("input")
    r.add_argument("-e", "--entry", default="main")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "gpu":
            out = compile_gpu(args.input, args.output, args.chip, fmt=args.format, runtime=args.runtime,
                              pipeline=args.pipeline, keep_ir=args.keep_ir)
            print(out)
        elif args.cmd == "cpu":
            print(compile_cpu(args.input, args.output))
        else:
            sys.stdout.write(run_cpu(args.input, args.entry))
    except (CompileError, ValueError) as e:
        print(f"mhc.compiler: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
