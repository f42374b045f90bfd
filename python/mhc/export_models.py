#!/usr/bin/env python3
"""Export tiny random-weight Hugging Face models to linalg-on-tensors MLIR.

The files written here are the real-model inputs of the ``--mhc-hyperconnect``
lit tests (``test/Transforms/Inputs/``).  Two models are built from code with a
fixed seed (nothing is downloaded; ``HF_HUB_OFFLINE=1``):

* ``gpt2-tiny``:  ``GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4,
  vocab_size=128, n_positions=32))`` -- pre-LayerNorm, GELU(tanh) MLP, tied head.
* ``llama-tiny``: ``LlamaForCausalLM(LlamaConfig(num_hidden_layers=2,
  hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=128))``
  -- RMSNorm, RoPE, SwiGLU MLP.

Both run in eval mode, ``attn_implementation="eager"``, ``use_cache=False``, on
the fixed input ``INPUT_IDS`` (1 x 8 token ids), and are exported through
``torch_mlir.fx.export_and_import(..., output_type="linalg-on-tensors")``.

For each model ``<name>`` the output directory receives

* ``<name>.mlir``     -- one ``func.func @forward(%arg0: tensor<1x8xi64>) ->
  tensor<1x8x128xf32>`` (token ids in, logits out).  Weights are inlined as
  plain ``dense<"0x...">`` constants (see ``_DenseLiteralHooks``), so the file is
  self-contained and parses with upstream ``mlir-opt`` 22 as is.
* ``<name>.ref.json`` -- the input ids, PyTorch's logits (float32) and the
  versions that produced them.

Modes::

    python python/mhc/export_models.py [--model gpt2|llama|all] [--out-dir DIR]
        export (needs torch, transformers, torch-mlir), then run --check on the result
    python python/mhc/export_models.py --check [--model ...] [--out-dir DIR]
        only verify existing files (stdlib Python + the MLIR 22 tools; no torch):
        mlir-opt parses/verifies the file, the runner module is lowered to LLVM,
        run by mlir-runner and its logits compared with <name>.ref.json
    python python/mhc/export_models.py --emit-runner-main --model gpt2 [-o FILE]
        print the model plus a ``func.func @main`` that calls @forward on the
        reference ids and prints the logits with ``printMemrefF32``

Lowering pipeline used by --check (upstream MLIR 22.1.8 only; the team's
``--mhc-cpu-pipeline`` is meant to end the same way)::

    mlir-opt <name>.run.mlir \\
      --one-shot-bufferize="bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map" \\
      --buffer-deallocation-pipeline \\
      --convert-linalg-to-loops \\
      --convert-math-to-funcs \\
      --expand-strided-metadata \\
      --lower-affine \\
      --convert-scf-to-cf \\
      --convert-math-to-llvm \\
      --convert-math-to-libm \\
      --convert-arith-to-llvm \\
      --convert-cf-to-llvm \\
      --finalize-memref-to-llvm \\
      --convert-func-to-llvm \\
      --convert-index-to-llvm \\
      --reconcile-unrealized-casts \\
    | mlir-runner -e main -entry-point-result=void \\
      -shared-libs=<llvm-22>/lib/libmlir_runner_utils.so,<llvm-22>/lib/libmlir_c_runner_utils.so

(``--convert-math-to-funcs`` expands ``math.fpowi``, which torch-mlir emits for
``x**3`` (GELU) and ``x.pow(2)`` (RMSNorm), into a helper function; the math ops
with an LLVM intrinsic -- tanh, exp, rsqrt, sin, cos -- become it, and
``--convert-math-to-libm`` turns the rest, e.g. exact GELU's ``math.erf``, into
libm calls that mlir-runner resolves.)

Tolerance: max |logits_mlir - logits_torch| <= 1e-4 (``--atol``).  The logits
are printed by printMemrefF32 with 6 significant digits, which bounds the
achievable agreement; the measured error is < 6e-7 for both models.

See docs/ExportingModels.md for versions, what did not work, and the form of
the residual adds in the exported IR.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT_DIR = REPO_ROOT / "test" / "Transforms" / "Inputs"
DEFAULT_MLIR_BIN = os.environ.get("MLIR_BIN_DIR", "/usr/lib/llvm-22/bin")

SEED = 0
INPUT_IDS = [[3, 17, 42, 99, 5, 64, 127, 0]]
FUNC_NAME = "forward"
DEFAULT_ATOL = 1e-4

MODELS = {
    "gpt2": "gpt2-tiny",
    "llama": "llama-tiny",
}

LOWERING_PASSES = [
    '--one-shot-bufferize=bufferize-function-boundaries '
    'function-boundary-type-conversion=identity-layout-map',
    "--buffer-deallocation-pipeline",
    "--convert-linalg-to-loops",
    "--convert-math-to-funcs",
    "--expand-strided-metadata",
    "--lower-affine",
    "--convert-scf-to-cf",
    "--convert-math-to-llvm",
    "--convert-math-to-libm",  # math.erf (exact GELU) and other ops without an intrinsic
    "--convert-arith-to-llvm",
    "--convert-cf-to-llvm",
    "--finalize-memref-to-llvm",
    "--convert-func-to-llvm",
    "--convert-index-to-llvm",
    "--reconcile-unrealized-casts",
]


# --------------------------------------------------------------------------- #
# Model construction and export (needs torch / transformers / torch-mlir).
# --------------------------------------------------------------------------- #

def _build_model(model: str):
    """Returns (wrapped nn.Module returning logits, config dict)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    torch.manual_seed(SEED)
    if model == "gpt2":
        cfg = transformers.GPT2Config(
            n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32,
            bos_token_id=1, eos_token_id=2, use_cache=False,
            attn_implementation="eager")
        hf = transformers.GPT2LMHeadModel(cfg)
    elif model == "llama":
        cfg = transformers.LlamaConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
            num_key_value_heads=4, intermediate_size=128, vocab_size=128,
            max_position_embeddings=32, bos_token_id=1, eos_token_id=2,
            pad_token_id=0, use_cache=False, attn_implementation="eager")
        hf = transformers.LlamaForCausalLM(cfg)
    else:
        raise ValueError(model)
    hf.eval()
    # HF initialises biases to 0 and norm weights to 1.  As DenseElementsAttr
    # those are splats, which torch-mlir folds away (a bias add disappears, a
    # LayerNorm loses its affine part), unlike in any trained checkpoint.
    # Perturb every 1-D parameter so the IR keeps the structure of a real model.
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for _, p in sorted(hf.named_parameters()):
            if p.dim() == 1:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))

    class LogitsOnly(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            # An explicit all-ones attention mask keeps transformers' masking
            # utilities off the "packed sequence" path, whose cumsum would
            # become torch-mlir's tm_tensor.scan (not an upstream dialect).
            return self.m(input_ids=input_ids,
                          attention_mask=torch.ones_like(input_ids),
                          use_cache=False).logits

    wrapped = LogitsOnly(hf).eval()
    # torch-mlir's frozen-program import looks buffers up in state_dict only;
    # non-persistent buffers (Llama's rotary inv_freq) are not there and fail
    # with "Could not find state mapping for buffer".  Make them persistent.
    for sub in wrapped.modules():
        sub._non_persistent_buffers_set.clear()
    return wrapped, cfg.to_dict()


def _make_hooks():
    import numpy as np
    from torch_mlir.extras.fx_importer import (
        FxImporterHooks, TORCH_DTYPE_TO_MLIR_TYPE)
    from torch_mlir.ir import DenseElementsAttr, Operation
    import torch

    class _DenseLiteralHooks(FxImporterHooks):
        """Inline tensor literals as DenseElementsAttr instead of dense_resource.

        torch-mlir's default turns every multi-element weight into a
        ``dense_resource<torch_tensor_...>`` whose bytes live in a
        ``{-# dialect_resources #-}`` section after the module.  MLIR 22 parses
        that, but the op is then no longer self-contained (copying a function
        into a test or splitting a file leaves a dangling key) and constant
        folders / matchers that look for DenseElementsAttr skip it.  Plain
        ``dense<"0x...">`` has the same size on disk.
        """

        def resolve_literal(self, gni, literal, info):
            if not isinstance(literal, torch.Tensor):
                return None
            dtype = literal.dtype
            if dtype not in TORCH_DTYPE_TO_MLIR_TYPE or dtype == torch.bfloat16:
                return None
            arr = literal.detach().cpu().contiguous().numpy()
            if arr.ndim == 0 or arr.size == 1:
                return None  # default path already makes a splat DenseElementsAttr
            elem = TORCH_DTYPE_TO_MLIR_TYPE[dtype]()
            attr = DenseElementsAttr.get(np.ascontiguousarray(arr), type=elem,
                                         shape=list(arr.shape))
            vt = gni._cc.create_vtensor_type(dtype, literal.size())
            return Operation.create(name="torch.vtensor.literal", results=[vt],
                                    attributes={"value": attr}).result

    return _DenseLiteralHooks()


def _versions() -> dict:
    import importlib.metadata as md
    out = {}
    for pkg in ("torch", "transformers", "torch-mlir", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def export_model(model: str, out_dir: Path) -> tuple[Path, Path]:
    import torch
    from torch_mlir import fx

    wrapped, cfg = _build_model(model)
    ids = torch.tensor(INPUT_IDS, dtype=torch.int64)
    with torch.no_grad():
        logits = wrapped(ids)
        module = fx.export_and_import(
            wrapped, ids, output_type="linalg-on-tensors", func_name=FUNC_NAME,
            hooks=_make_hooks())
    text = module.operation.get_asm(enable_debug_info=False)
    if "dense_resource" in text or "dialect_resources" in text:
        raise RuntimeError("exported IR still contains dense_resource blobs")

    name = MODELS[model]
    vers = _versions()
    header = (
        f"// {name}: tiny random-weight {model} (seed {SEED}) exported to linalg-on-tensors.\n"
        f"// Generated by python/mhc/export_models.py --model {model}; do not edit.\n"
        f"// torch {vers['torch']}, transformers {vers['transformers']}, "
        f"torch-mlir {vers['torch-mlir']}.\n"
        f"// @{FUNC_NAME}(token ids tensor<1x{len(INPUT_IDS[0])}xi64>) -> logits; "
        f"reference logits in {name}.ref.json.\n"
    )
    mlir_path = out_dir / f"{name}.mlir"
    mlir_path.write_text(header + text)

    ref = {
        "model": model,
        "name": name,
        "seed": SEED,
        "func": FUNC_NAME,
        "input_ids": INPUT_IDS,
        "logits_shape": list(logits.shape),
        "logits": [float(x) for x in logits.reshape(-1).tolist()],
        "atol": DEFAULT_ATOL,
        "versions": vers,
        "config": {k: v for k, v in cfg.items()
                   if isinstance(v, (int, float, str, bool)) or v is None},
    }
    ref_path = out_dir / f"{name}.ref.json"
    ref_path.write_text(json.dumps(ref, indent=1) + "\n")
    return mlir_path, ref_path


# --------------------------------------------------------------------------- #
# Runner module and check (stdlib only + MLIR 22 tools).
# --------------------------------------------------------------------------- #

def _tensor_type(shape, elem):
    return "tensor<" + "x".join(str(d) for d in shape) + "x" + elem + ">"


def emit_runner_module(mlir_text: str, ref: dict) -> str:
    """Returns the model module with a ``@main`` that prints @forward's logits."""
    ids = ref["input_ids"]
    ids_t = _tensor_type([len(ids), len(ids[0])], "i64")
    out_t = _tensor_type(ref["logits_shape"], "f32")
    main = (
        "  func.func private @printMemrefF32(tensor<*xf32>) attributes {llvm.emit_c_interface}\n"
        "  func.func @main() {\n"
        f"    %ids = arith.constant dense<{json.dumps(ids)}> : {ids_t}\n"
        f"    %logits = call @{ref['func']}(%ids) : ({ids_t}) -> {out_t}\n"
        f"    %u = tensor.cast %logits : {out_t} to tensor<*xf32>\n"
        "    call @printMemrefF32(%u) : (tensor<*xf32>) -> ()\n"
        "    return\n"
        "  }\n"
    )
    # The module is the single top-level op; its closing brace is the last '}'
    # line (no resource section follows: weights are inline dense<> attrs).
    body = mlir_text.rstrip()
    if not body.endswith("}") or "{-#" in body:
        raise ValueError("unexpected module layout; cannot append @main")
    return body[:-1] + main + "}\n"


_FLOAT_RE = re.compile(r"[-+]?(?:nan|inf|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")


def parse_printed_memref(out: str) -> list[float]:
    i = out.find("data =")
    if i < 0:
        raise ValueError("no printMemrefF32 output found:\n" + out[:2000])
    return [float(x) for x in _FLOAT_RE.findall(out[i + len("data ="):])]


def printed_memrefs(out: str) -> list[list[float]]:
    """Every memref printed by printMemref* in `out`, in order, each flattened."""
    return [[float(x) for x in _FLOAT_RE.findall(chunk.split("data =", 1)[1])]
            for chunk in out.split("Unranked Memref")[1:]]


def _run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def check_model(model: str, out_dir: Path, bin_dir: Path, atol: float) -> float:
    name = MODELS[model]
    mlir_path = out_dir / f"{name}.mlir"
    ref = json.loads((out_dir / f"{name}.ref.json").read_text())
    mlir_opt = str(bin_dir / "mlir-opt")
    runner = str(bin_dir / "mlir-runner")
    libdir = bin_dir.parent / "lib"
    libs = ",".join(str(libdir / n) for n in
                    ("libmlir_runner_utils.so", "libmlir_c_runner_utils.so"))

    # 1. The committed file parses and verifies as is.
    _run([mlir_opt, str(mlir_path), "-o", os.devnull])
    with tempfile.TemporaryDirectory() as td:
        run_path = Path(td) / f"{name}.run.mlir"
        run_path.write_text(emit_runner_module(mlir_path.read_text(), ref))
        llvm_path = Path(td) / f"{name}.llvm.mlir"
        # 2. Upstream lowering to the LLVM dialect.
        _run([mlir_opt, str(run_path), *LOWERING_PASSES, "-o", str(llvm_path)])
        # 3. Execute.
        res = _run([runner, str(llvm_path), "-e", "main",
                    "-entry-point-result=void", f"-shared-libs={libs}"])
    got = parse_printed_memref(res.stdout)
    want = ref["logits"]
    if len(got) != len(want):
        raise AssertionError(f"{name}: got {len(got)} values, want {len(want)}")
    err = max(abs(a - b) for a, b in zip(got, want))
    status = "OK" if err <= atol else "FAIL"
    print(f"{name}: {status} max|mlir - torch| = {err:.3e} (atol {atol:g}, "
          f"{len(want)} logits, {mlir_path.stat().st_size} bytes)")
    if err > atol:
        raise AssertionError(f"{name}: max abs error {err} > {atol}")
    return err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["gpt2", "llama", "all"], default="all")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    ap.add_argument("--check", action="store_true",
                    help="only verify existing files (no torch needed)")
    ap.add_argument("--no-check", action="store_true",
                    help="export without running the MLIR check afterwards")
    ap.add_argument("--emit-runner-main", action="store_true",
                    help="print the model module plus a @main that prints the logits")
    ap.add_argument("-o", "--output", type=Path, default=None,
                    help="output file for --emit-runner-main (default stdout)")
    ap.add_argument("--mlir-bin-dir", type=Path, default=Path(DEFAULT_MLIR_BIN),
                    help="directory with mlir-opt and mlir-runner (default %(default)s)")
    ap.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    args = ap.parse_args(argv)

    models = list(MODELS) if args.model == "all" else [args.model]

    if args.emit_runner_main:
        if len(models) != 1:
            ap.error("--emit-runner-main needs a single --model")
        name = MODELS[models[0]]
        ref = json.loads((args.out_dir / f"{name}.ref.json").read_text())
        text = emit_runner_module((args.out_dir / f"{name}.mlir").read_text(), ref)
        if args.output:
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
        return 0

    if not args.check:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for m in models:
            mlir_path, ref_path = export_model(m, args.out_dir)
            print(f"wrote {mlir_path} ({mlir_path.stat().st_size} bytes), {ref_path}")
        if args.no_check:
            return 0
        if not (args.mlir_bin_dir / "mlir-opt").exists():
            print(f"note: {args.mlir_bin_dir}/mlir-opt not found; skipping check")
            return 0

    for m in models:
        check_model(m, args.out_dir, args.mlir_bin_dir, args.atol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
