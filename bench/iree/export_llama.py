#!/usr/bin/env python3
"""Exports a random-weight Llama with its weights as function arguments (for IREE).

``LlamaForCausalLM`` built from code (nothing downloaded), eval mode, f32, exported through
torch-mlir to linalg-on-tensors like python/mhc/export_models.py does for the tiny test
models, except that every parameter is an argument of ``@forward`` after the token ids (in
``named_parameters`` order) instead of an inlined constant: the module stays small (code
only), and the weights are generated where the model runs (bench/iree/weights.py, a seeded
numpy generator, so the CPU path here and the GPU machine see the same values).

  .venv/bin/python bench/iree/export_llama.py --out .iree-export/llama-8l.mlir \
      [--layers 8 --hidden 1024 --heads 16 --intermediate 2816 --vocab 1024 --seq 1024]

Writes the module and <out>.json (config, argument names and shapes, versions).
Needs torch, transformers and torch-mlir (see docs/ExportingModels.md).
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))


def build(args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    cfg = transformers.LlamaConfig(
        num_hidden_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
        num_key_value_heads=args.heads, intermediate_size=args.intermediate,
        vocab_size=args.vocab, max_position_embeddings=args.seq, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, use_cache=False, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    # Rotary inv_freq is a non-persistent buffer; torch-mlir's import looks buffers up in
    # state_dict (docs/ExportingModels.md, "what did not work" 2).
    for sub in model.modules():
        sub._non_persistent_buffers_set.clear()
    names = [n for n, _ in model.named_parameters()]

    class WeightsAsArguments(torch.nn.Module):
        """forward(ids, *weights) -> logits: the parameters become function arguments."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, *weights):
            return torch.func.functional_call(
                self.m, dict(zip(names, weights)), args=(),
                kwargs=dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                            use_cache=False)).logits

    return WeightsAsArguments(model).eval(), model, names, cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=1024)
    args = ap.parse_args()

    import torch
    from torch_mlir import fx
    from mhc.export_models import _make_hooks, _versions

    wrapped, model, names, cfg = build(args)
    params = dict(model.named_parameters())
    ids = torch.zeros((1, args.seq), dtype=torch.int64)
    weights = [params[n].detach() for n in names]
    with torch.no_grad():
        module = fx.export_and_import(wrapped, ids, *weights, output_type="linalg-on-tensors",
                                      func_name="forward", hooks=_make_hooks())
    text = module.operation.get_asm(enable_debug_info=False)
    if "dense_resource" in text:
        raise RuntimeError("exported IR still contains dense_resource blobs")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"// Llama {args.layers} layers, C={args.hidden}, T={args.seq}, vocab {args.vocab}, "
                   f"random weights as arguments; bench/iree/export_llama.py.\n" + text)
    meta = {"config": {k: getattr(args, k) for k in ("layers", "hidden", "heads", "intermediate",
                                                      "vocab", "seq")},
            "arguments": [{"name": "input_ids", "shape": [1, args.seq], "dtype": "int64"}]
                         + [{"name": n, "shape": list(params[n].shape), "dtype": "float32"}
                            for n in names],
            "versions": _versions()}
    Path(str(out) + ".json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {out} ({out.stat().st_size // 1024} KB, {len(names)} weight arguments, "
          f"{sum(params[n].numel() for n in names) / 1e6:.1f} M parameters)")


if __name__ == "__main__":
    main()
