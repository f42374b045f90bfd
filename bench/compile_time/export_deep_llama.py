#!/usr/bin/env python3
"""Export random-weight Llama models of many depths for the compile-time benchmark.

Each model is ``LlamaForCausalLM`` (hidden 256, 4 heads, intermediate 512,
vocab 256) on a fixed 1 x 16 token input, exported by torch-mlir to
linalg-on-tensors with the weights as function arguments (so the file size
follows the op count, not the weight count):

    func.func @forward(%ids: tensor<1x16xi64>, %w0: ..., ...) -> tensor<1x16x256xf32>

    python bench/compile_time/export_deep_llama.py --layers 2 4 8 16 32 64 128 256 \
        --out-dir bench/compile_time/models

Needs torch, transformers and torch-mlir (see docs/ExportingModels.md). The
files are not committed (50k ops at 256 layers); this script regenerates them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HIDDEN, HEADS, INTERMEDIATE, VOCAB, TOKENS = 256, 4, 512, 256, 16


def build(layers: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=layers, hidden_size=HIDDEN, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, intermediate_size=INTERMEDIATE,
        vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, use_cache=False,
        attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).eval()
    names = [n for n, _ in model.named_parameters()]

    class WeightsAsArguments(torch.nn.Module):
        """forward(ids, *weights): the weights are inputs, not constants."""

        def __init__(self):
            super().__init__()
            self.m = model
            # torch-mlir's frozen import finds buffers only in state_dict
            # (docs/ExportingModels.md, item 2).
            for sub in self.m.modules():
                sub._non_persistent_buffers_set.clear()

        def forward(self, ids, *weights):
            return torch.func.functional_call(
                self.m, dict(zip(names, weights)), (),
                {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "use_cache": False}).logits

    weights = [p.detach().clone() for p in model.parameters()]
    return WeightsAsArguments().eval(), weights


def export(layers: int, out: Path) -> None:
    import torch
    from torch_mlir import fx

    module, weights = build(layers)
    ids = torch.arange(TOKENS, dtype=torch.int64).reshape(1, TOKENS) % VOCAB
    with torch.no_grad():
        mlir = fx.export_and_import(module, ids, *weights,
                                    output_type="linalg-on-tensors",
                                    func_name="forward")
    text = mlir.operation.get_asm(enable_debug_info=False)
    out.write_text(f"// Llama, {layers} layers, hidden {HIDDEN}, weights as "
                   f"arguments; bench/compile_time/export_deep_llama.py\n" + text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, nargs="+",
                    default=[2, 4, 8, 16, 32, 64, 128, 256])
    ap.add_argument("--out-dir", type=Path,
                    default=Path(__file__).resolve().parent / "models")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for layers in args.layers:
        out = args.out_dir / f"llama-{layers}.mlir"
        start = time.time()
        export(layers, out)
        print(f"wrote {out} ({out.stat().st_size} bytes) in "
              f"{time.time() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
