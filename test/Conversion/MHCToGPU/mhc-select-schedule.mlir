// RUN: mhc-opt %s --mhc-fuse --mhc-select-schedule | FileCheck %s
// RUN: mhc-opt %s --mhc-fuse --mhc-select-schedule="tile-tokens=16" | FileCheck %s --check-prefix=TT16
// RUN: not mhc-opt %s --mhc-fuse --mhc-select-schedule="tile-tokens=40" 2>&1 | FileCheck %s --check-prefix=TT40
// RUN: not mhc-opt %s --mhc-fuse --mhc-select-schedule="tile-tokens=64" 2>&1 | FileCheck %s --check-prefix=TT64
// RUN: not mhc-opt %s --mhc-select-schedule="chip=sm_75" 2>&1 | FileCheck %s --check-prefix=CHIP
// RUN: mhc-opt %s --mhc-fuse --mhc-select-schedule="prepare-fn=false" | FileCheck %s --check-prefix=NOPREP

// Schedule selection alone: what --mhc-select-schedule writes on each kernel
// root (--convert-mhc-to-gpu's lowering of a given schedule is tested in
// convert-mhc-to-gpu.mlir).

// Post kernel (post_res + the next norm_project), bf16: 4 warps over 32
// tokens, 128 columns (256 bytes) per chunk, 8 bf16 per 16-byte vector,
// compiled for 4 blocks per SM; before it the fn prepare kernel (256
// threads, nothing else: it does not tile the tokens). prepare-fn=false:
// the kernel alone.
// CHECK-LABEL: func.func @post
// CHECK: mhc.fused "post"
// CHECK: mhc.schedule = [#mhc.schedule<tile_tokens = 0, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>, #mhc.schedule<tile_tokens = 32, chunk_columns = 128, threads = 128, vector_width = 8, blocks_per_sm = 4>]
// TT16-LABEL: func.func @post
// TT16: mhc.schedule = [#mhc.schedule<tile_tokens = 0, {{.*}}>, #mhc.schedule<tile_tokens = 16, chunk_columns = 128, threads = 128, vector_width = 8, blocks_per_sm = 4>]
// NOPREP-LABEL: func.func @post
// NOPREP: mhc.schedule = #mhc.schedule<tile_tokens = 32, chunk_columns = 128, threads = 128, vector_width = 8, blocks_per_sm = 4>
// TT40: error: 'mhc.fused' op schedule: tile_tokens must be a multiple of 16 (tensor-core row tiles) in a norm_project kernel, got 40
// TT64: error: 'mhc.fused' op schedule: tile_tokens needs 78080 bytes of shared memory per block (limit 49152); use fewer tile_tokens or chunk_columns
func.func @post(%y: tensor<?x64xbf16>, %x: tensor<?x4x64xbf16>, %post: tensor<?x4xf32>,
                %comb: tensor<?x4x4xf32>, %fn: tensor<24x256xf32>) -> (tensor<?x4x64xbf16>, tensor<?x24xf32>) {
  %xn = mhc.post_res %y, %x, %post, %comb : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
  %mix = mhc.norm_project %xn, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %xn, %mix : tensor<?x4x64xbf16>, tensor<?x24xf32>
}

// Pre kernel without a projection, f32: 256 threads over 64 tokens, no chunk
// loop, 4 f32 per vector.
// CHECK-LABEL: func.func @pre
// CHECK: mhc.fused "pre"
// CHECK: mhc.schedule = #mhc.schedule<tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 4, blocks_per_sm = 0>
func.func @pre(%x: tensor<?x4x64xf32>, %mix: tensor<?x24xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>) -> tensor<?x64xf32> {
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x64xf32>, tensor<?x4xf32> -> tensor<?x64xf32>
  return %u : tensor<?x64xf32>
}

// A lone norm_project with n = 8 (80 mixes: 10 column tiles) on f16: 16
// tokens a block (registers); the f16 tile is split into bf16 hi + lo, so a
// chunk holds n * 32 = 256 projection inputs.
// CHECK-LABEL: func.func @wide
// CHECK: mhc.norm_project {{.*}}mhc.schedule = [#mhc.schedule<tile_tokens = 0, {{.*}}>, #mhc.schedule<tile_tokens = 16, chunk_columns = 32, threads = 128, vector_width = 8, blocks_per_sm = 4>]
func.func @wide(%x: tensor<?x8x100xf16>, %fn: tensor<80x800xf32>) -> tensor<?x80xf32> {
  %mix = mhc.norm_project %x, %fn : tensor<?x8x100xf16>, tensor<80x800xf32> -> tensor<?x80xf32>
  return %mix : tensor<?x80xf32>
}

// Coefficient-only and elementwise kernels.
// CHECK-LABEL: func.func @others
// CHECK: mhc.sinkhorn {{.*}}mhc.schedule = #mhc.schedule<tile_tokens = 256, chunk_columns = 0, threads = 256, vector_width = 4, blocks_per_sm = 0>
// CHECK: mhc.expand {{.*}}mhc.schedule = #mhc.schedule<tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 8, blocks_per_sm = 0>
func.func @others(%l: tensor<?x4x4xf32>, %h: tensor<?x64xbf16>) -> (tensor<?x4x4xf32>, tensor<?x4x64xbf16>) {
  %c = mhc.sinkhorn %l : tensor<?x4x4xf32>
  %x = mhc.expand %h, streams = 4 : tensor<?x64xbf16> -> tensor<?x4x64xbf16>
  return %c, %x : tensor<?x4x4xf32>, tensor<?x4x64xbf16>
}

// A function marked for at most 4096 tokens (mhc.max_tokens: a hint, e.g.
// mhc.torch's small-T variants) gets 16 tokens per block in its forward
// kernels, with and without a projection, so that small T still fills the
// SMs; above 4096 the hint changes nothing.
// CHECK-LABEL: func.func @few_tokens
// CHECK: mhc.fused "post"
// CHECK: mhc.schedule = [#mhc.schedule<tile_tokens = 0, {{.*}}>, #mhc.schedule<tile_tokens = 16, chunk_columns = 128, threads = 128, vector_width = 8, blocks_per_sm = 4>]
// CHECK: mhc.fused "pre"
// CHECK: mhc.schedule = #mhc.schedule<tile_tokens = 16, chunk_columns = 0, threads = 256, vector_width = 4, blocks_per_sm = 0>
// CHECK-LABEL: func.func @many_tokens
// CHECK: mhc.schedule = [#mhc.schedule<tile_tokens = 0, {{.*}}>, #mhc.schedule<tile_tokens = 32,
// CHECK: mhc.schedule = #mhc.schedule<tile_tokens = 64,
func.func @few_tokens(%y: tensor<?x64xbf16>, %x: tensor<?x4x64xbf16>, %post: tensor<?x4xf32>,
                      %comb: tensor<?x4x4xf32>, %fn: tensor<24x256xf32>, %x2: tensor<?x4x64xf32>,
                      %mix2: tensor<?x24xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>)
    -> (tensor<?x4x64xbf16>, tensor<?x24xf32>, tensor<?x64xf32>) attributes {mhc.max_tokens = 4096 : i64} {
  %xn = mhc.post_res %y, %x, %post, %comb : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
  %mix = mhc.norm_project %xn, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre, %p2, %l = mhc.split_mixes %mix2, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %u = mhc.pre_apply %x2, %pre : tensor<?x4x64xf32>, tensor<?x4xf32> -> tensor<?x64xf32>
  return %xn, %mix, %u : tensor<?x4x64xbf16>, tensor<?x24xf32>, tensor<?x64xf32>
}
func.func @many_tokens(%y: tensor<?x64xbf16>, %x: tensor<?x4x64xbf16>, %post: tensor<?x4xf32>,
                       %comb: tensor<?x4x4xf32>, %fn: tensor<24x256xf32>, %x2: tensor<?x4x64xf32>,
                       %mix2: tensor<?x24xf32>, %scale: tensor<3xf32>, %base: tensor<24xf32>)
    -> (tensor<?x4x64xbf16>, tensor<?x24xf32>, tensor<?x64xf32>) attributes {mhc.max_tokens = 4097 : i64} {
  %xn = mhc.post_res %y, %x, %post, %comb : tensor<?x64xbf16>, tensor<?x4x64xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x64xbf16>
  %mix = mhc.norm_project %xn, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  %pre, %p2, %l = mhc.split_mixes %mix2, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %u = mhc.pre_apply %x2, %pre : tensor<?x4x64xf32>, tensor<?x4xf32> -> tensor<?x64xf32>
  return %xn, %mix, %u : tensor<?x4x64xbf16>, tensor<?x24xf32>, tensor<?x64xf32>
}

// A schedule already in the IR (chosen before, or by hand) is kept.
// CHECK-LABEL: func.func @by_hand
// CHECK: mhc.schedule = #mhc.schedule<tile_tokens = 128, chunk_columns = 0, threads = 128, vector_width = 4, blocks_per_sm = 2>
func.func @by_hand(%x: tensor<?x4x64xf32>) -> tensor<?x64xf32> {
  %h = mhc.collapse %x {mhc.schedule = #mhc.schedule<tile_tokens = 128, chunk_columns = 0, threads = 128, vector_width = 4, blocks_per_sm = 2>} : tensor<?x4x64xf32> -> tensor<?x64xf32>
  return %h : tensor<?x64xf32>
}

// The backward groups (test/Transforms/Inputs/backward-sublayer.mlir, C =
// 64): one kernel for the first half, [rows, tokens, cols, params] for the
// others. rows: 16 tokens a block, 256-byte row runs (16 lanes a row), two
// blocks per SM (four for pre_backward's rows, which has n + 1
// accumulators); tokens (rows of <= 4 KB: the token pass in a kernel of its
// own): 64 tokens of n = 4 lanes, 256 threads; cols: 64 columns of every
// stream a block in tiles of 32 tokens (the tiles fit 48 KB; bf16 x leaves
// registers for them), 8 warps, one block per SM (its registers hold the
// next tile's loads), the tokens split 32 ways (C = 64: one column chunk);
// params: 256 threads.
// RUN: mhc-opt %S/../../Transforms/Inputs/backward-sublayer.mlir --mhc-fuse --mhc-select-schedule | FileCheck %s --check-prefix=BWD
// BWD-LABEL: func.func @hc_post_backward
// BWD: mhc.schedule = #mhc.schedule<tile_tokens = 16, chunk_columns = 128, threads = 256, vector_width = 8, blocks_per_sm = 2>
// BWD-LABEL: func.func @hc_pre_backward
// BWD: mhc.schedule = [#mhc.schedule<tile_tokens = 16, chunk_columns = 128, threads = 256, vector_width = 8, blocks_per_sm = 4>, #mhc.schedule<tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>, #mhc.schedule<tile_tokens = 32, chunk_columns = 64, threads = 256, vector_width = 8, blocks_per_sm = 1, token_splits = 32>, #mhc.schedule<tile_tokens = 1, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>]
// BWD-LABEL: func.func @hc_sublayer_backward
// BWD: mhc.schedule = [#mhc.schedule<tile_tokens = 16, chunk_columns = 128, threads = 256, vector_width = 8, blocks_per_sm = 2>, #mhc.schedule<tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>,

// Rows of 4 KB (C = 2048 bf16) still get the token kernel; wider ones (C =
// 4096: 8 KB, where the row loads hide the token pass) keep it in the rows
// kernel: [rows, cols, params], the tokens split 2 ways (64 column chunks).
// RUN: sed -e 's/x64xbf16/x2048xbf16/g' -e 's/24x256/24x8192/g' %S/../../Transforms/Inputs/backward-sublayer.mlir | mhc-opt --mhc-fuse --mhc-select-schedule | FileCheck %s --check-prefix=BWD-2048
// BWD-2048-LABEL: func.func @hc_sublayer_backward
// BWD-2048: mhc.schedule = [#mhc.schedule<tile_tokens = 16, {{.*}}>, #mhc.schedule<tile_tokens = 64, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>, #mhc.schedule<{{.*}}>, #mhc.schedule<{{.*}}>]
// RUN: sed -e 's/x64xbf16/x4096xbf16/g' -e 's/24x256/24x16384/g' %S/../../Transforms/Inputs/backward-sublayer.mlir | mhc-opt --mhc-fuse --mhc-select-schedule | FileCheck %s --check-prefix=BWD-4096
// BWD-4096-LABEL: func.func @hc_pre_backward
// BWD-4096: mhc.schedule = [#mhc.schedule<tile_tokens = 16, chunk_columns = 128, threads = 256, vector_width = 8, blocks_per_sm = 4>, #mhc.schedule<tile_tokens = 32, chunk_columns = 64, threads = 256, vector_width = 8, blocks_per_sm = 1, token_splits = 2>, #mhc.schedule<tile_tokens = 1, chunk_columns = 0, threads = 256, vector_width = 1, blocks_per_sm = 0>]

// f16 activations: x enters the products as head + remainder, which takes the
// registers a 32-token tile would need (n = 4), so the cols tile stays at 16.
// RUN: sed 's/bf16/f16/g' %S/../../Transforms/Inputs/backward-sublayer.mlir | mhc-opt --mhc-fuse --mhc-select-schedule | FileCheck %s --check-prefix=BWD-F16
// BWD-F16-LABEL: func.func @hc_pre_backward
// BWD-F16: #mhc.schedule<tile_tokens = 16, chunk_columns = 64, threads = 256, vector_width = 8, blocks_per_sm = 1, token_splits = 32>

// CHIP: error: mhc-select-schedule: chip sm_75 is not supported; the kernels need sm_80 or newer (bf16 mma.sync)
