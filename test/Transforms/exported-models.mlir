// The committed torch-mlir exports of tiny GPT-2 and Llama parse with MLIR 22,
// lower with upstream passes, run, and reproduce PyTorch's logits (stored
// beside them) within 1e-4.
// RUN: %python %mhc_src_root/python/mhc/export_models.py --check --out-dir %mhc_src_root/test/Transforms/Inputs | FileCheck %s
// CHECK: gpt2-tiny: OK
// CHECK: llama-tiny: OK
