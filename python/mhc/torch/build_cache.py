"""Build (or check) a carryable mhc kernel cache for the torch ``cuda`` backend.

On a machine with mhc-opt (the GPU machine has no MLIR)::

    python -m mhc.torch.build_cache --n 4 --C 4096 --C 2560 --dtype bf16 --chip sm_90 --out DIR

compiles one kernel set per (n, C, dtype) into DIR (layout: mhc.torch.kernels) and copies the
runtime library (libmhc_runtime.so, with mhcLaunchFlat) to DIR. Copy DIR to the GPU machine and
set ``MHC_CACHE=DIR``; loading needs neither mhc-opt nor MLIR.

    python -m mhc.torch.build_cache --check DIR      # validate every manifest in DIR, list the keys
    python -m mhc.torch.build_cache --forward-only ...   # hc_pre + hc_post only (inference)
    python -m mhc.torch.build_cache --norm-eps 1e-6 ...  # also the *_norm ops (a fused pre-norm)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from mhc import compiler

from . import kernels


def build_all(out: Path, ns, Cs, dtypes, chip, iterations, eps, pre_eps, post_mult,
              runtime: Path | None = None, forward_only: bool = False,
              norm_eps: float | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for n in ns:
        for C in Cs:
            for dtype in dtypes:
                key = kernels.KernelKey(n=n, C=C, dtype=dtype, chip=chip, iterations=iterations,
                                        eps=eps, pre_eps=pre_eps, post_mult=post_mult,
                                        norm_eps=norm_eps)
                compile_fn = None
                if forward_only:
                    from .kernel_build import compile_forward_kernels as compile_fn
                folders.append(kernels.build(key, out, compile_fn))
                print(f"built {key.folder(out)}")
    src = runtime or kernels.find_runtime(out)
    dst = out / kernels.RUNTIME_NAME
    if src.resolve() != dst.resolve():
        shutil.copy2(src, dst)
    print(f"runtime: {dst}")
    return folders


def check(root: Path) -> list[kernels.KernelKey]:
    """Validates every manifest under root; returns their keys."""
    keys = []
    for manifest in sorted(root.glob(f"*/*/*/{kernels.MANIFEST_NAME}")):
        m = kernels.load_manifest(manifest.parent)
        key = kernels.KernelKey.from_dict(m["key"])
        if key.folder(root) != manifest.parent:
            raise kernels.ManifestError(f"{manifest}: its key belongs in {key.folder(root)}")
        keys.append(key)
        print(f"ok {manifest.parent.relative_to(root)}: ops {sorted(m['ops'])}")
    if not (root / kernels.RUNTIME_NAME).is_file():
        print(f"note: no {kernels.RUNTIME_NAME} in {root} (set MHC_RUNTIME_LIB on the GPU machine)")
    return keys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mhc.torch.build_cache", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, action="append", help="streams (repeatable)")
    p.add_argument("--C", type=int, action="append", help="channels (repeatable)")
    p.add_argument("--dtype", action="append", choices=("bf16", "f16", "f32"))
    p.add_argument("--chip", default="sm_90")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--pre-eps", type=float, default=1e-6)
    p.add_argument("--post-mult", type=float, default=2.0)
    p.add_argument("--forward-only", action="store_true",
                   help="hc_pre + hc_post only (mhc.torch.kernel_build), "
                        "no compiler hook needed; for inference and checks")
    p.add_argument("--norm-eps", type=float,
                   help="also compile the *_norm ops: the sublayer's RMSNorm with this eps fused "
                        "into the kernels (HyperConnection(..., norm=nn.RMSNorm(C, eps=...)); "
                        "docs/PreNorm.md)")
    p.add_argument("--runtime", type=Path, help="libmhc_runtime.so to copy (default: the build's)")
    p.add_argument("--out", type=Path, help="cache folder to build into")
    p.add_argument("--check", type=Path, help="validate this cache folder instead of building")
    args = p.parse_args(argv)
    try:
        if args.check:
            return 0 if check(args.check) else 1
        if not (args.out and args.n and args.C):
            p.error("--out, --n and --C are required to build")
        build_all(args.out, args.n, args.C, args.dtype or ["bf16"], args.chip, args.iterations,
                  args.eps, args.pre_eps, args.post_mult, args.runtime, args.forward_only,
                  args.norm_eps)
    except (kernels.KernelsMissing, kernels.ManifestError, ValueError, compiler.CompileError) as e:
        print(f"build_cache: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
