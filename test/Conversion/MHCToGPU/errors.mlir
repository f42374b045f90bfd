// RUN: not mhc-opt %s --split-input-file --convert-mhc-to-gpu="chip=sm_70" 2>&1 | FileCheck %s --check-prefix=OLD
// RUN: not mhc-opt %s --split-input-file --convert-mhc-to-gpu="chip=gfx90a" 2>&1 | FileCheck %s --check-prefix=BAD
// RUN: not mhc-opt %s --split-input-file --convert-mhc-to-gpu 2>&1 | FileCheck %s
// RUN: not mhc-opt %s --split-input-file --mhc-outline-kernels 2>&1 | FileCheck %s --check-prefix=OUTLINE

// OLD: error: convert-mhc-to-gpu: chip sm_70 is not supported; the kernels need sm_80 or newer
// BAD: error: convert-mhc-to-gpu: bad chip 'gfx90a', expected one of sm_80, {{.*}}sm_90a, sm_100

// A hand-written group the kernels cannot take: two post_res in one kernel.
// CHECK: error: 'mhc.fused' op holds two ops of the same kind; a kernel takes at most one of each
func.func @two_post(%y: tensor<?x8xf32>, %x: tensor<?x2x8xf32>, %p: tensor<?x2xf32>, %c: tensor<?x2x2xf32>) -> tensor<?x2x8xf32> {
  %r = mhc.fused "post" -> tensor<?x2x8xf32> {
    %a = mhc.post_res %y, %x, %p, %c : tensor<?x8xf32>, tensor<?x2x8xf32>, tensor<?x2xf32>, tensor<?x2x2xf32> -> tensor<?x2x8xf32>
    %b = mhc.post_res %y, %a, %p, %c : tensor<?x8xf32>, tensor<?x2x8xf32>, tensor<?x2xf32>, tensor<?x2x2xf32> -> tensor<?x2x8xf32>
    mhc.yield %b : tensor<?x2x8xf32>
  }
  return %r : tensor<?x2x8xf32>
}

// -----

// Impossible hand-written schedules are errors naming the field.
// CHECK: error: 'mhc.pre_apply' op schedule: threads must be a multiple of 32 in [32, 1024], got 100
func.func @threads(%x: tensor<?x4x64xbf16>, %pre: tensor<?x4xf32>) -> tensor<?x64xbf16> {
  %u = mhc.pre_apply %x, %pre {mhc.schedule = #mhc.schedule<tile_tokens = 64, chunk_columns = 0, threads = 100, vector_width = 8, blocks_per_sm = 0>} : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  return %u : tensor<?x64xbf16>
}

// -----

// CHECK: error: 'mhc.pre_apply' op schedule: vector_width must be 8 (16-byte accesses of 'bf16'), got 4
func.func @vector(%x: tensor<?x4x64xbf16>, %pre: tensor<?x4xf32>) -> tensor<?x64xbf16> {
  %u = mhc.pre_apply %x, %pre {mhc.schedule = #mhc.schedule<tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 4, blocks_per_sm = 0>} : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  return %u : tensor<?x64xbf16>
}

// -----

// CHECK: error: 'mhc.pre_apply' op schedule: chunk_columns must be 0: this kernel has no chunk loop, got 128
func.func @no_chunks(%x: tensor<?x4x64xbf16>, %pre: tensor<?x4xf32>) -> tensor<?x64xbf16> {
  %u = mhc.pre_apply %x, %pre {mhc.schedule = #mhc.schedule<tile_tokens = 64, chunk_columns = 128, threads = 256, vector_width = 8, blocks_per_sm = 0>} : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
  return %u : tensor<?x64xbf16>
}

// -----

// CHECK: error: 'mhc.norm_project' op schedule: chunk_columns must be a multiple of 16 whose vectors (8 columns each) are a power of two <= 32 per row, got 96
func.func @chunk(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>) -> tensor<?x24xf32> {
  %m = mhc.norm_project %x, %fn {mhc.schedule = #mhc.schedule<tile_tokens = 32, chunk_columns = 96, threads = 128, vector_width = 8, blocks_per_sm = 4>} : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %m : tensor<?x24xf32>
}

// -----

// CHECK: error: 'mhc.norm_project' op schedule: tile_tokens needs 72960 bytes of shared memory per block (limit 49152); use fewer tile_tokens or chunk_columns
func.func @shared_memory(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>) -> tensor<?x24xf32> {
  %m = mhc.norm_project %x, %fn {mhc.schedule = #mhc.schedule<tile_tokens = 64, chunk_columns = 128, threads = 128, vector_width = 8, blocks_per_sm = 4>} : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %m : tensor<?x24xf32>
}

// -----

// Two schedules: [fn prepare kernel, kernel], only for a norm_project group;
// the prepare kernel does not tile the tokens.
// CHECK: error: 'mhc.collapse' op schedule: expects one #mhc.schedule (one kernel): only a group with a norm_project has an fn prepare kernel
func.func @prepare_without_projection(%x: tensor<?x4x64xf32>) -> tensor<?x64xf32> {
  %h = mhc.collapse %x {mhc.schedule = [#mhc.schedule<tile_tokens = 0, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>, #mhc.schedule<tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 4, blocks_per_sm = 0>]} : tensor<?x4x64xf32> -> tensor<?x64xf32>
  return %h : tensor<?x64xf32>
}

// -----

// CHECK: error: 'mhc.norm_project' op schedule: the fn prepare kernel's fields other than threads must be tile_tokens = 0, chunk_columns = 0, vector_width = 1, blocks_per_sm = 0 (it does not tile the tokens)
func.func @prepare_tiles(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>) -> tensor<?x24xf32> {
  %m = mhc.norm_project %x, %fn {mhc.schedule = [#mhc.schedule<tile_tokens = 32, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>, #mhc.schedule<tile_tokens = 32, chunk_columns = 64, threads = 128, vector_width = 8, blocks_per_sm = 4>]} : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %m : tensor<?x24xf32>
}

// -----

// CHECK: error: 'mhc.norm_project' op schedule: the fn prepare kernel's threads must be a multiple of 32 in [32, 1024], got 2048
func.func @prepare_threads(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>) -> tensor<?x24xf32> {
  %m = mhc.norm_project %x, %fn {mhc.schedule = [#mhc.schedule<tile_tokens = 0, chunk_columns = 0, threads = 2048, vector_width = 1, blocks_per_sm = 0>, #mhc.schedule<tile_tokens = 32, chunk_columns = 64, threads = 128, vector_width = 8, blocks_per_sm = 4>]} : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %m : tensor<?x24xf32>
}

// -----

// CHECK: error: 'mhc.norm_project' op schedule: expects one #mhc.schedule (one kernel), or two (fn prepare kernel, kernel), got 3
func.func @three_schedules(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>) -> tensor<?x24xf32> {
  %m = mhc.norm_project %x, %fn {mhc.schedule = [#mhc.schedule<tile_tokens = 0, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>, #mhc.schedule<tile_tokens = 0, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>, #mhc.schedule<tile_tokens = 32, chunk_columns = 64, threads = 128, vector_width = 8, blocks_per_sm = 4>]} : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %m : tensor<?x24xf32>
}

// -----

// CHECK: error: 'mhc.sinkhorn' op schedule: tile_tokens must be <= threads (128): the coefficients take one thread per token, got 256
func.func @per_token(%l: tensor<?x4x4xf32>) -> tensor<?x4x4xf32> {
  %c = mhc.sinkhorn %l {mhc.schedule = #mhc.schedule<tile_tokens = 256, chunk_columns = 0, threads = 128, vector_width = 4, blocks_per_sm = 0>} : tensor<?x4x4xf32>
  return %c : tensor<?x4x4xf32>
}

// -----

// CHECK: error: 'mhc.collapse' op schedule: blocks_per_sm must be >= 0 with blocks_per_sm * threads <= 2048, got 16
func.func @occupancy(%x: tensor<?x4x64xf32>) -> tensor<?x64xf32> {
  %h = mhc.collapse %x {mhc.schedule = #mhc.schedule<tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 4, blocks_per_sm = 16>} : tensor<?x4x64xf32> -> tensor<?x64xf32>
  return %h : tensor<?x64xf32>
}

// -----

// The schedule attribute is checked by the dialect.
// CHECK: error: expects 'mhc.schedule' to be a #mhc.schedule or a non-empty array of them (one per kernel), got 3 : i64
func.func @not_a_schedule(%x: tensor<?x4x64xf32>) -> tensor<?x64xf32> {
  %h = mhc.collapse %x {mhc.schedule = 3} : tensor<?x4x64xf32> -> tensor<?x64xf32>
  return %h : tensor<?x64xf32>
}

// -----

// So is the token hint: a positive integer on a function.
// CHECK: error: expects 'mhc.max_tokens' to be a positive integer, got 0 : i64
func.func @no_tokens(%x: tensor<?x4x64xf32>) -> tensor<?x64xf32> attributes {mhc.max_tokens = 0 : i64} {
  %h = mhc.collapse %x : tensor<?x4x64xf32> -> tensor<?x64xf32>
  return %h : tensor<?x64xf32>
}

// -----

// CHECK: error: 'mhc.max_tokens' belongs on a function
func.func @hint_on_an_op(%x: tensor<?x4x64xf32>) -> tensor<?x64xf32> {
  %h = mhc.collapse %x {mhc.max_tokens = 64 : i64} : tensor<?x4x64xf32> -> tensor<?x64xf32>
  return %h : tensor<?x64xf32>
}

// -----

// A hand-written group with nothing to compute is an error, not a kernel.
// CHECK: error: 'mhc.fused' op holds no op to compute: a kernel group needs at least one mhc op
func.func @empty_group(%x: tensor<?x4x64xbf16>) -> tensor<?x4x64xbf16> {
  %r = mhc.fused "pre" -> tensor<?x4x64xbf16> {
    mhc.yield %x : tensor<?x4x64xbf16>
  }
  return %r : tensor<?x4x64xbf16>
}

// -----

// CHECK: error: 'arith.addf' op cannot be placed in a GPU kernel
func.func @arith_group(%x: tensor<?x4x64xbf16>) -> tensor<?x4x64xbf16> {
  %r = mhc.fused "post" -> tensor<?x4x64xbf16> {
    %s = arith.addf %x, %x : tensor<?x4x64xbf16>
    mhc.yield %s : tensor<?x4x64xbf16>
  }
  return %r : tensor<?x4x64xbf16>
}

// -----

// The per-token Sinkhorn unrolls n*n values: the GPU path stops at 16
// streams (compile time grows with n^3), the CPU path has no limit.
// CHECK: error: 'mhc.sinkhorn' op has 32 streams; the GPU kernels take at most 16 (the CPU path has no limit)
func.func @many_streams(%l: tensor<?x32x32xf32>) -> tensor<?x32x32xf32> {
  %c = mhc.sinkhorn %l : tensor<?x32x32xf32>
  return %c : tensor<?x32x32xf32>
}

// -----

// A static token count must fit in one launch: 2^40 tokens in tiles of 64
// are 2^34 blocks.
// CHECK: error: 'mhc.pre_apply' op schedule: tile_tokens gives 17179869184 blocks for 1099511627776 tokens; a launch takes at most 2^31 - 1
func.func @too_many_tokens(%x: tensor<1099511627776x4x64xbf16>, %pre: tensor<1099511627776x4xf32>) -> tensor<1099511627776x64xbf16> {
  %u = mhc.pre_apply %x, %pre : tensor<1099511627776x4x64xbf16>, tensor<1099511627776x4xf32> -> tensor<1099511627776x64xbf16>
  return %u : tensor<1099511627776x64xbf16>
}

// -----

// mhc ops in a module nested inside the one the pass runs on (the fuzzer
// found this: the kernels went to the outer module, the launches stayed in
// the inner one, whose symbol table lacks them).
// CHECK: error: convert-mhc-to-gpu: an mhc op inside a nested module; run convert-mhc-to-gpu on that module
// OUTLINE: error: mhc-outline-kernels: an mhc op inside a nested module; run mhc-outline-kernels on that module
module {
  module {
    func.func @nested(%x: tensor<?x4x64xbf16>, %p: tensor<?x4xf32>) -> tensor<?x64xbf16> {
      %u = mhc.pre_apply %x, %p : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
      return %u : tensor<?x64xbf16>
    }
  }
}

// The backward's token kernel ([rows, tokens, cols, params]): its schedule
// edited by hand after --mhc-select-schedule (C = 64 gives it a token kernel
// of 64 tokens, 256 threads) is checked field by field, at the group.
// RUN: mhc-opt %S/../../Transforms/Inputs/backward-sublayer.mlir --mhc-fuse --mhc-select-schedule | sed 's/tile_tokens = 64, chunk_columns = 0, threads = 256/tile_tokens = 64, chunk_columns = 0, threads = 32/' | not mhc-opt --convert-mhc-to-gpu 2>&1 | FileCheck %s --check-prefix=TOKENS-THREADS
// RUN: mhc-opt %S/../../Transforms/Inputs/backward-sublayer.mlir --mhc-fuse --mhc-select-schedule | sed 's/tile_tokens = 64, chunk_columns = 0, threads = 256/tile_tokens = 512, chunk_columns = 0, threads = 512/' | not mhc-opt --convert-mhc-to-gpu 2>&1 | FileCheck %s --check-prefix=TOKENS-SHARED
// RUN: mhc-opt %S/../../Transforms/Inputs/backward-sublayer.mlir --mhc-fuse --mhc-select-schedule | sed 's/tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 1/tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 8/' | not mhc-opt --convert-mhc-to-gpu 2>&1 | FileCheck %s --check-prefix=TOKENS-VECTOR
// RUN: mhc-opt %S/../../Transforms/Inputs/backward-sublayer.mlir --mhc-fuse --mhc-select-schedule | sed -E 's/(#mhc.schedule<tile_tokens = 64, chunk_columns = 0[^>]*>), /\1, \1, /' | not mhc-opt --convert-mhc-to-gpu 2>&1 | FileCheck %s --check-prefix=TOKENS-COUNT
// RUN: mhc-opt %S/../../Transforms/Inputs/backward-sublayer.mlir --mhc-fuse --mhc-select-schedule | sed 's/threads = 256, vector_width = 1, blocks_per_sm = 0>, #mhc.schedule<tile_tokens = 32/threads = 256, vector_width = 1, blocks_per_sm = 9>, #mhc.schedule<tile_tokens = 32/' | not mhc-opt --convert-mhc-to-gpu 2>&1 | FileCheck %s --check-prefix=TOKENS-OCCUPANCY
// TOKENS-OCCUPANCY: error: 'mhc.fused' op schedule of the tokens kernel: blocks_per_sm must be >= 0 with blocks_per_sm * threads <= 2048, got 9
// RUN: mhc-opt %S/../../Transforms/Inputs/backward-sublayer.mlir --mhc-fuse --mhc-select-schedule | sed 's/tile_tokens = 64, chunk_columns = 0, threads = 256/tile_tokens = 0, chunk_columns = 0, threads = 256/' | not mhc-opt --convert-mhc-to-gpu 2>&1 | FileCheck %s --check-prefix=TOKENS-TILE
// TOKENS-TILE: error: 'mhc.fused' op schedule of the tokens kernel: tile_tokens must be >= 1, got 0
// TOKENS-THREADS: <stdin>:13:12: error: 'mhc.fused' op schedule of the tokens kernel: threads must be a multiple of 32 <= 1024 and >= tile_tokens (a thread a token at least), got 32
// TOKENS-SHARED: error: 'mhc.fused' op schedule of the tokens kernel: tile_tokens needs 106496 bytes of shared memory (limit 49152)
// TOKENS-VECTOR: error: 'mhc.fused' op schedule of the tokens kernel: vector_width must be 1, with chunk_columns and token_splits 0 (the kernel reads no rows), got vector_width = 8, chunk_columns = 0, token_splits = 0
// TOKENS-COUNT: error: 'mhc.fused' op schedule: expects 3 or 4 schedules ([rows, cols, params] or [rows, tokens, cols, params]), got 5

// -----

// The pre-norm's gradient has GPU kernels inside a sublayer's backward group
// only (docs/PreNorm.md), not alone.
// CHECK: error: 'mhc.rms_norm_grad' op has no GPU kernel outside a (pre_)backward group (the CPU path, --mhc-cpu-pipeline, computes it)
func.func @rms_norm_grad(%u: tensor<?x64xbf16>, %w: tensor<64xbf16>, %d: tensor<?x64xbf16>) -> tensor<?x64xbf16> {
  %du, %dw = mhc.rms_norm_grad %u, %w, %d : tensor<?x64xbf16>, tensor<64xbf16>, tensor<?x64xbf16>
  return %du : tensor<?x64xbf16>
}

// -----

// A hand-written group whose rms_norm reads another u than its pre_apply's.
// CHECK: error: 'mhc.fused' op unsupported group: rms_norm must read u from the group's pre_apply or from memory, and its weight from memory
func.func @norm_of_other_u(%x: tensor<?x4x64xbf16>, %p: tensor<?x4xf32>, %v: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> (tensor<?x64xbf16>, tensor<?x64xbf16>) {
  %r:2 = mhc.fused "pre" -> tensor<?x64xbf16>, tensor<?x64xbf16> {
    %u = mhc.pre_apply %x, %p : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
    %o = mhc.rms_norm %v, %w : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
    mhc.yield %u, %o : tensor<?x64xbf16>, tensor<?x64xbf16>
  }
  return %r#0, %r#1 : tensor<?x64xbf16>, tensor<?x64xbf16>
}

// -----

// A sublayer backward group with the pre-norm's gradient (as --mhc-fuse forms it from
// --mhc-generate-backward's output) whose norm weight is f32 under bf16 activations: the
// backward kernels read the weight in the activations' type only (docs/PreNorm.md).
// CHECK: error: 'mhc.rms_norm_grad' op has no GPU kernel yet for a weight of another type than the activations' (the CPU path, --mhc-cpu-pipeline, computes it)
func.func private @attn_vjp(tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
func.func @prenorm_backward_group(%arg0: tensor<?x4x64xbf16>, %arg1: tensor<24x256xf32>, %arg2: tensor<3xf32>, %arg3: tensor<24xf32>, %arg4: tensor<64xf32>, %arg5: tensor<?x24xf32> {mhc.saved = "sublayer 0: mix"}, %arg6: tensor<?x64xbf16> {mhc.saved = "rms_norm 0: result"}, %arg7: tensor<?x64xbf16> {mhc.saved = "call 0 (@attn): result 0"}, %arg8: tensor<?x4x64xbf16> {mhc.cotangent_of = 0 : i64}) -> (tensor<?x4x64xbf16> {mhc.gradient_of = 0 : i64}, tensor<24x256xf32> {mhc.gradient_of = 1 : i64}, tensor<3xf32> {mhc.gradient_of = 2 : i64}, tensor<24xf32> {mhc.gradient_of = 3 : i64}, tensor<64xf32> {mhc.gradient_of = 4 : i64}) {
  %0:3 = mhc.fused "post_backward" -> tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> {
    %pre, %post, %logits = mhc.split_mixes %arg5, %arg2, %arg3 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
    %3 = mhc.sinkhorn %logits : tensor<?x4x4xf32>
    %dy, %dx, %dpost, %dcomb = mhc.post_res_grad %arg7, %arg0, %post, %3, %arg8 : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>
    mhc.yield %dy, %dpost, %dcomb : tensor<?x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>
  }
  %1 = call @attn_vjp(%arg6, %0#0) : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %2:5 = mhc.fused "pre_backward" -> tensor<64xf32>, tensor<3xf32>, tensor<24xf32>, tensor<24x256xf32>, tensor<?x4x64xbf16> {
    %pre, %post, %logits = mhc.split_mixes %arg5, %arg2, %arg3 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
    %3 = mhc.sinkhorn %logits : tensor<?x4x4xf32>
    %dy, %dx, %dpost, %dcomb = mhc.post_res_grad %arg7, %arg0, %post, %3, %arg8 : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32>, tensor<?x4x64xbf16>
    %4 = mhc.pre_apply %arg0, %pre : tensor<?x4x64xbf16>, tensor<?x4xf32> -> tensor<?x64xbf16>
    %du, %dweight = mhc.rms_norm_grad %4, %arg4, %1 : tensor<?x64xbf16>, tensor<64xf32>, tensor<?x64xbf16>
    %dx_0, %dpre = mhc.pre_apply_grad %arg0, %pre, %du : tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x64xbf16>
    %5 = mhc.sinkhorn_grad %logits, %0#2 : tensor<?x4x4xf32>
    %dmix, %dscale, %dbase = mhc.split_mixes_grad %arg5, %arg2, %arg3, %dpre, %0#1, %5 : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
    %dx_1, %dfn = mhc.norm_project_grad %arg0, %arg1, %dmix : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<?x24xf32>
    %6 = arith.addf %dx, %dx_0 : tensor<?x4x64xbf16>
    %7 = arith.addf %6, %dx_1 : tensor<?x4x64xbf16>
    mhc.yield %dweight, %dscale, %dbase, %dfn, %7 : tensor<64xf32>, tensor<3xf32>, tensor<24xf32>, tensor<24x256xf32>, tensor<?x4x64xbf16>
  }
  return %2#4, %2#3, %2#1, %2#2, %2#0 : tensor<?x4x64xbf16>, tensor<24x256xf32>, tensor<3xf32>, tensor<24xf32>, tensor<64xf32>
}
