// RUN: mhc-opt %s --mhc-fuse --convert-mhc-to-gpu --split-input-file | FileCheck %s

// One sublayer in steady state: the "pre" kernel (split_mixes + sinkhorn +
// pre_apply) and the "post" kernel (post_res + the next norm_project), which
// reads fn as the fn prepare kernel launched before it leaves it.

// CHECK: module attributes {gpu.container_module}
// CHECK-LABEL: func.func @steady
// Host side: buffers in, device buffers out, one launch per group; T is the
// product of the token dims, the grid covers T in tiles of 64 tokens.
// CHECK:     %[[T:.*]] = tensor.dim %{{.*}}, %c0
// CHECK:     bufferization.to_buffer %{{.*}} read_only
// CHECK:     memref.alloc(%{{.*}}) : memref<?x4x4xf32>
// CHECK:     arith.ceildivui %{{.*}}, %c64
// CHECK:     gpu.launch_func  @mhc_kernels::@mhc_pre_0 blocks in ({{.*}}) threads in (%c256, %c1{{.*}}, %c1{{.*}})  args(%{{.*}} : index, %{{.*}} : memref<?xf32>
// CHECK:     bufferization.to_tensor %{{.*}} restrict writable
// The prepared fn: 2 chunks x 32 k16 steps x 3 n8 tiles x 32 lanes x 4
// words, one thread per lane and fragment (6144 in blocks of 256), then the
// post kernel with it as its last argument.
// CHECK:     %[[PREP:.*]] = memref.alloc(%c24576) : memref<?xi32>
// CHECK:     gpu.launch_func  @mhc_kernels::@mhc_post_1_prepare_fn blocks in (%c24, %{{.*}}) threads in (%c256{{.*}}) args(%{{.*}} : index, %{{.*}} : memref<?xf32>, %[[PREP]] : memref<?xi32>)
// CHECK:     gpu.launch_func  @mhc_kernels::@mhc_post_1 blocks in {{.*}}, %[[PREP]] : memref<?xi32>)
// CHECK:     return

// Kernels: 256 threads, shared-memory tiles 16-byte aligned.
// CHECK:      gpu.module @mhc_kernels
// CHECK:      gpu.func @mhc_pre_0(%{{.*}}: index, %{{.*}}: memref<?xf32>, %{{.*}}: memref<?xf32>, %{{.*}}: memref<?xf32>, %{{.*}}: memref<?xbf16>, %{{.*}}: memref<?xf32>, %{{.*}}: memref<?xf32>, %{{.*}}: memref<?xbf16>)
// CHECK-SAME:   workgroup(%{{.*}}: memref<256xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64})
// CHECK-SAME:   kernel
// CHECK-SAME:   known_block_size = array<i32: 256, 1, 1>
// Sinkhorn: the n x n matrix in registers, the iterations in one loop.
// CHECK:        math.exp
// CHECK:        scf.for %{{.*}} = %c1{{.*}} to %c20{{.*}} step %c1{{.*}} iter_args({{.*}}) -> (f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32, f32)
// CHECK:        gpu.barrier
// pre_apply: 16-byte vector loads with a scalar fallback for tails; a bf16
// vector widens to f32 as 32-bit words: w << 16 and w & 0xffff0000.
// CHECK:        vector.load %{{.*}} {alignment = 16 : i64} : memref<?xbf16>, vector<8xbf16>
// CHECK:        memref.load %{{.*}} : memref<?xbf16>
// CHECK:        vector.bitcast %{{.*}} : vector<8xbf16> to vector<4xi32>
// CHECK:        arith.shli %{{.*}}, %{{.*}} : vector<4xi32>
// CHECK:        arith.andi %{{.*}}, %{{.*}} : vector<4xi32>
// CHECK:        vector.shuffle %{{.*}}, %{{.*}} [0, 4, 1, 5, 2, 6, 3, 7] : vector<4xf32>, vector<4xf32>
// CHECK:        vector.store %{{.*}} {alignment = 16 : i64} : memref<?xbf16>, vector<8xbf16>
// CHECK:        gpu.return

// The fn prepare kernel: a lane's fragment of one k16 step and n8 tile as
// bf16 head and remainder words of two fn pairs, stored in one 16-byte store.
// CHECK:      gpu.func @mhc_post_1_prepare_fn(%{{.*}}: index, %{{.*}}: memref<?xf32>, %{{.*}}: memref<?xi32>) kernel attributes {known_block_size = array<i32: 256, 1, 1>}
// CHECK:        arith.cmpi ult, %{{.*}}, %c6144
// CHECK-COUNT-2: arith.truncf %{{.*}} : vector<2xf32> to vector<2xbf16>
// CHECK:        vector.store %{{.*}} {alignment = 16 : i64} : memref<?xi32>, vector<4xi32>
// CHECK:        gpu.return

// CHECK:      gpu.func @mhc_post_1(
// CHECK-SAME:   workgroup(%{{.*}}: memref<{{[0-9]+}}xbf16, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}
// CHECK-SAME:   known_block_size = array<i32: 128, 1, 1>
// CHECK-SAME:   nvvm.minctasm = 4 : i32
// The chunk's items in batches (a loop), post_res stores x_next and puts the
// rounded values (exact in bf16) into the shared tile.
// CHECK:        scf.for
// CHECK:        vector.store %{{.*}} {alignment = 16 : i64} : memref<?xbf16>, vector<8xbf16>
// CHECK:        arith.truncf %{{.*}} : vector<8xf32> to vector<8xbf16>
// CHECK:        vector.store %{{.*}} {alignment = 16 : i64} : memref<{{[0-9]+}}xbf16, #gpu.address_space<workgroup>>, vector<8xbf16>
// CHECK:        gpu.barrier
// The projection on tensor cores: a prepared fn fragment per 16-byte load
// (no fn alignment check, no split), A fragments by ldmatrix, bf16
// m16n8k16 products.
// CHECK-NOT:    memref.extract_aligned_pointer_as_index %arg5
// CHECK:        vector.load %{{.*}} {alignment = 16 : i64} : memref<?xi32>, vector<4xi32>
// CHECK-NOT:    arith.truncf %{{.*}} : vector<2xf32> to vector<2xbf16>
// CHECK:        nvgpu.ldmatrix %{{.*}} {numTiles = 4 : i32, transpose = false}
// CHECK:        nvvm.mma.sync {{.*}}multiplicandAPtxType = #nvvm.mma_type<bf16>{{.*}}shape = #nvvm.shape<m = 16, n = 8, k = 16>
// Sums of squares: a shuffle tree over the threads of a token row.
// CHECK:        gpu.shuffle  xor

// CHECK:        math.rsqrt
// CHECK:        gpu.return
func.func @steady(%x: tensor<?x4x256xbf16>, %mix: tensor<?x24xf32>, %scale: tensor<3xf32>,
                  %base: tensor<24xf32>, %y: tensor<?x256xbf16>, %fn: tensor<24x1024xf32>)
    -> (tensor<?x256xbf16>, tensor<?x4x256xbf16>, tensor<?x24xf32>) {
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %c = mhc.sinkhorn %l : tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x256xbf16>, tensor<?x4xf32> -> tensor<?x256xbf16>
  %xn = mhc.post_res %y, %x, %post, %c : tensor<?x256xbf16>, tensor<?x4x256xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x256xbf16>
  %mix2 = mhc.norm_project %xn, %fn : tensor<?x4x256xbf16>, tensor<24x1024xf32> -> tensor<?x24xf32>
  return %u, %xn, %mix2 : tensor<?x256xbf16>, tensor<?x4x256xbf16>, tensor<?x24xf32>
}

// -----

// Standalone ops become their own kernels; C = 100 is not a multiple of the
// vector width, so only the scalar path is emitted; several token dims
// multiply into T.
// CHECK-LABEL: func.func @standalone
// CHECK:     %[[D0:.*]] = tensor.dim %arg0, %c0
// CHECK:     %[[D1:.*]] = tensor.dim %arg0, %c1
// CHECK:     arith.muli %{{.*}}, %[[D1]]
// CHECK:     gpu.launch_func  @mhc_kernels::@mhc_expand_0
// CHECK:     gpu.launch_func  @mhc_kernels::@mhc_collapse_1
// CHECK:     gpu.func @mhc_expand_0
// CHECK-NOT:   vector.load
// CHECK:       gpu.return
func.func @standalone(%h: tensor<2x?x100xf16>) -> tensor<2x?x100xf16> {
  %x = mhc.expand %h, streams = 3 : tensor<2x?x100xf16> -> tensor<2x?x3x100xf16>
  %h2 = mhc.collapse %x : tensor<2x?x3x100xf16> -> tensor<2x?x100xf16>
  return %h2 : tensor<2x?x100xf16>
}

// -----

// f32 activations are not exact in bf16: the projection input goes into two
// bf16 tiles (head and remainder) and each k16 step does three products
// (A_hi*fn_lo, A_lo*fn_hi, A_hi*fn_hi). 64-column chunks (256 bytes of f32)
// for n = 4 give tiles of 32 x (256 + 8) bf16. Under a schedule without the
// fn prepare kernel (here by hand) the kernel reads and splits fn itself:
// in 8-byte pairs only when fn's base pointer is 8-byte aligned (checked at
// run time; the products are versioned on it, scalar loads otherwise).
// CHECK-NOT:   gpu.func @mhc_norm_project_0_prepare_fn
// CHECK-LABEL: gpu.func @mhc_norm_project_0(
// CHECK-SAME:   workgroup(%[[HI:.*]] : memref<8448xbf16, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}, %[[LO:.*]] : memref<8448xbf16, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}
// CHECK:        memref.extract_aligned_pointer_as_index
// CHECK:        arith.remui %{{.*}}, %c8
// CHECK:        arith.subf %{{.*}} : vector<4xf32>
// CHECK:        vector.store %{{.*}}, %[[LO]][%{{.*}}] {alignment = 8 : i64} : memref<8448xbf16, #gpu.address_space<workgroup>>, vector<4xbf16>
// CHECK:        scf.if %{{.*}} -> (f32, f32
// CHECK:          vector.load %{{.*}} {alignment = 8 : i64} : memref<?xf32>, vector<2xf32>
// CHECK:          nvgpu.ldmatrix %[[HI]]
// CHECK:          nvgpu.ldmatrix %[[LO]]
// CHECK-COUNT-3:  nvvm.mma.sync
// CHECK:        } else {
// CHECK-NOT:      vector.load {{.*}}vector<2xf32>
// CHECK:          memref.load
// CHECK:          nvvm.mma.sync
// CHECK:        }
func.func @project_f32(%x: tensor<?x4x256xf32>, %fn: tensor<24x1024xf32>) -> tensor<?x24xf32> {
  %mix = mhc.norm_project %x, %fn {mhc.schedule = #mhc.schedule<tile_tokens = 32, chunk_columns = 64, threads = 128, vector_width = 4, blocks_per_sm = 4>} : tensor<?x4x256xf32>, tensor<24x1024xf32> -> tensor<?x24xf32>
  return %mix : tensor<?x24xf32>
}

// -----

// The lowering obeys a hand-written schedule (selection is tested alone in
// mhc-select-schedule.mlir): a projection kernel of 16 tokens, 64-column
// chunks, 256 threads and no occupancy constraint.
// CHECK-LABEL: func.func @by_hand
// CHECK:     arith.ceildivui %{{.*}}, %c16
// CHECK:     gpu.launch_func  @mhc_kernels::@mhc_norm_project_0 {{.*}} threads in (%c256
// CHECK:     gpu.func @mhc_norm_project_0
// The bf16 tile: 16 rows of 4 streams x 64 columns + 8 columns of padding.
// CHECK-SAME:   workgroup(%{{.*}}: memref<4224xbf16, #gpu.address_space<workgroup>>
// CHECK-SAME:   known_block_size = array<i32: 256, 1, 1>
// CHECK-NOT:    nvvm.minctasm
// CHECK:        gpu.return
func.func @by_hand(%x: tensor<?x4x256xbf16>, %fn: tensor<24x1024xf32>) -> tensor<?x24xf32> {
  %m = mhc.norm_project %x, %fn {mhc.schedule = #mhc.schedule<tile_tokens = 16, chunk_columns = 64, threads = 256, vector_width = 8, blocks_per_sm = 0>} : tensor<?x4x256xbf16>, tensor<24x1024xf32> -> tensor<?x24xf32>
  return %m : tensor<?x24xf32>
}

// -----

// A static 0 token dim next to a dynamic one: the flattened buffers are
// dynamic (0 * ? is only known at run time to be 0), and the launch covers
// T = 0 with one block that writes nothing.
// CHECK-LABEL: func.func @zero_next_to_dynamic
// CHECK:     memref.collapse_shape %{{.*}} {{\[}}[0, 1, 2, 3]] : memref<0x?x4x64xbf16> into memref<?xbf16>
// CHECK:     memref.collapse_shape %{{.*}} {{\[}}[0, 1, 2]] : memref<0x?x4xf32> into memref<?xf32>
// CHECK:     memref.collapse_shape %{{.*}} {{\[}}[0, 1, 2]] : memref<0x?x64xbf16> into memref<?xbf16>
// CHECK:     gpu.launch_func @mhc_kernels::@mhc_pre_apply_{{[0-9]+}}
func.func @zero_next_to_dynamic(%x: tensor<0x?x4x64xbf16>, %pre: tensor<0x?x4xf32>) -> tensor<0x?x64xbf16> {
  %u = mhc.pre_apply %x, %pre : tensor<0x?x4x64xbf16>, tensor<0x?x4xf32> -> tensor<0x?x64xbf16>
  return %u : tensor<0x?x64xbf16>
}

// -----

// norm_project's factor r = rsqrt(sumsq / K + eps) is computed once per token
// into the shared sums; where the f32 sum overflowed (+inf) one thread
// re-reads the token's row and sums the squares of 2^-96 x instead (the CPU
// lowering's numerics, docs/Guarantees.md); mix = dot * r.
// CHECK-LABEL: gpu.func @mhc_norm_project_0(
// CHECK:       scf.for %[[T:.*]] = %thread_id_x to %c32{{.*}} step %c128
// CHECK:         %[[S:.*]] = memref.load %[[SS:.*]][%[[T]]] : memref<32xf32, #gpu.address_space<workgroup>>
// CHECK:         %[[OVER:.*]] = arith.cmpf oeq, %[[S]], %{{.*}} : f32
// CHECK:         %[[R:.*]] = scf.if %[[OVER]] -> (f32) {
// CHECK:           scf.for {{.*}} to %c256{{.*}} step %c1{{.*}} iter_args
// CHECK:             memref.load %arg1[%{{.*}}] : memref<?xbf16>
// CHECK:             arith.mulf %{{.*}}, %cst{{.*}} : f32
// CHECK:           math.rsqrt
// CHECK:         } else {
// CHECK:           math.rsqrt
// CHECK:         memref.store %[[R]], %[[SS]][%[[T]]]
// CHECK:       gpu.barrier
// CHECK:       memref.load %[[SS]]
// CHECK-NOT:   math.rsqrt
// CHECK:       gpu.return
func.func @norm_project_overflow_free(%x: tensor<?x4x64xbf16>, %fn: tensor<24x256xf32>) -> tensor<?x24xf32> {
  %m = mhc.norm_project %x, %fn : tensor<?x4x64xbf16>, tensor<24x256xf32> -> tensor<?x24xf32>
  return %m : tensor<?x24xf32>
}

// -----

// The backward groups (test/Transforms/Inputs/backward-sublayer.mlir).
// RUN: mhc-opt %S/../../Transforms/Inputs/backward-sublayer.mlir --mhc-fuse --convert-mhc-to-gpu | FileCheck %s --check-prefix=BWD
// First half: one rows kernel (x, dout, y, post in; dy, dpost, dcomb out),
// 16-token tiles.
// BWD-LABEL: func.func @hc_post_backward
// BWD:     arith.ceildivui %{{.*}}, %c16
// BWD:     gpu.launch_func  @mhc_kernels::@mhc_post_backward_0_rows {{.*}} threads in (%c256
// BWD-NOT: gpu.launch_func
// BWD:     return
// The whole sublayer (C = 64: rows of 128 bytes, so the token pass is a
// kernel of its own): rows, tokens, cols and params, with the per-token
// record [T x 45], the token blocks' partial sums [blocks of 64 x 27], the
// token splits' partial dfn [32 x 24 x 256] and the row sums [T x 25]
// between them (allocated by the host, freed after their last launch by
// --mhc-gpu-host-memory).
// BWD-LABEL: func.func @hc_sublayer_backward
// BWD:     %[[TILES:.*]] = arith.ceildivui %{{.*}}, %c64
// BWD:     %[[BLOCKS:.*]] = arith.maxui %[[TILES]]
// BWD:     %[[RECN:.*]] = arith.muli %{{.*}}, %c45
// BWD:     %[[REC:.*]] = memref.alloc(%[[RECN]]) : memref<?xf32>
// BWD:     %[[PARAMN:.*]] = arith.muli %[[BLOCKS]], %c27
// BWD:     %[[PARAM:.*]] = memref.alloc(%[[PARAMN]]) : memref<?xf32>
// BWD:     %[[DFN:.*]] = memref.alloc(%c196608) : memref<?xf32>
// BWD:     %[[SUMSN:.*]] = arith.muli %{{.*}}, %c25
// BWD:     %[[SUMS:.*]] = memref.alloc(%[[SUMSN]]) : memref<?xf32>
// BWD:     gpu.launch_func  @mhc_kernels::@mhc_backward_2_rows {{.*}} threads in (%c256{{.*}} %[[SUMS]] : memref<?xf32>)
// BWD:     gpu.launch_func  @mhc_kernels::@mhc_backward_2_tokens blocks in (%[[BLOCKS]], {{.*}} threads in (%c256{{.*}} %[[SUMS]] : memref<?xf32>, %[[REC]] : memref<?xf32>, %[[PARAM]] : memref<?xf32>)
// BWD:     gpu.launch_func  @mhc_kernels::@mhc_backward_2_cols blocks in (%c1{{.*}}, %c32, %c1{{.*}}) threads in (%c256
// BWD:     gpu.launch_func  @mhc_kernels::@mhc_backward_2_params blocks in (%c51
// The rows kernel keeps only post in shared memory (16 tokens x 4) and
// stores each row's sums straight to memory; the token kernel reads them
// back (64 tokens x 25) and walks each token's Sinkhorn iterations with n =
// 4 lanes (a row or column each: 64 tokens x 2 matrices x 16 in shared
// memory, warp syncs between the steps), keeping each lane's divisors (39
// steps) in private memory, not the iterates; the cols kernel stages token
// tiles (records, x, dout, du, dm^T; rows padded against bank conflicts) in
// shared memory and multiplies on the tensor cores (its layout is checked
// below).
// BWD:     gpu.func @mhc_backward_2_rows
// BWD-SAME:  workgroup(%{{.*}} : memref<64xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64})
// BWD-SAME:  nvvm.minctasm = 2
// BWD-NOT:   nvvm.bar.warp.sync
// BWD:       memref.store %{{.*}}, %arg9[%{{.*}}] : memref<?xf32>
// BWD-NOT:   nvvm.bar.warp.sync
// BWD:     gpu.func @mhc_backward_2_tokens
// BWD-SAME:  workgroup(%{{.*}} : memref<1600xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}, %{{.*}} : memref<1728xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}, %{{.*}} : memref<2048xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64})
// BWD-SAME:  private(%{{.*}} : memref<39xf32, #gpu.address_space<private>>)
// BWD:       scf.for %{{.*}} = %thread_id_x to %c1600{{.*}} step %c256
// BWD:         memref.load %arg5[%{{.*}}] : memref<?xf32>
// BWD:       gpu.barrier
// BWD:       nvvm.bar.warp.sync
// The token stage's norm factor r as the forward computes it: where the
// token's f32 sum of squares overflowed, a re-read of its row x (%arg1, K =
// 256 elements) scaled by 2^-96.
// BWD:       %[[OVER:.*]] = arith.cmpf oeq, %[[SUMSQ:.*]], %{{.*}} : f32
// BWD-NEXT:  %[[R:.*]] = scf.if %[[OVER]] -> (f32) {
// BWD:         arith.constant 1.26217745E-29 : f32
// BWD:         scf.for {{.*}} to %c256{{.*}} step %c1{{.*}} iter_args
// BWD:           memref.load %arg1[%{{.*}}] : memref<?xbf16>
// BWD:         math.rsqrt
// BWD:       } else {
// BWD:         math.rsqrt
// 2 dS = -(sum dmix mix) r^2 / K; for an overflowed token (r ~ 1e-30) r
// multiplies twice, since r * r would underflow to 0 in f32.
// BWD:       %[[OVER2:.*]] = arith.cmpf oeq, %[[SUMSQ]], %{{.*}} : f32
// BWD-NEXT:  %[[QR:.*]] = arith.mulf %[[Q:.*]], %[[R]] : f32
// BWD-NEXT:  %[[QRR:.*]] = arith.mulf %[[QR]], %[[R]] : f32
// BWD-NEXT:  %[[RR:.*]] = arith.mulf %[[R]], %[[R]] : f32
// BWD-NEXT:  %[[QRR2:.*]] = arith.mulf %[[Q]], %[[RR]] : f32
// BWD-NEXT:  %[[PICK:.*]] = arith.select %[[OVER2]], %[[QRR]], %[[QRR2]] : f32
// BWD-NEXT:  arith.negf %[[PICK]] : f32
// The cols kernel's shared memory, per tile of 32 tokens: the records'
// comb/pre/dS (32 tokens x 21, padded to 24 for vector loads), the x, dout
// (32 x 264) and du (32 x 72) tiles, and dm^T as head and remainder (32
// padded mixes x 40). fn's B fragments are read from global memory into
// registers at the start (no shared copy of fn's slice). The dm fragments
// come from dm^T by transposing ldmatrix (head, remainder).
// BWD:     gpu.func @mhc_backward_2_cols
// BWD-SAME:  workgroup(%{{.*}} : memref<768xf32, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}, %{{.*}} : memref<8448xbf16, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}, %{{.*}} : memref<8448xbf16, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}, %{{.*}} : memref<2304xbf16, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}, %{{.*}} : memref<1280xbf16, #gpu.address_space<workgroup>> {llvm.align = 16 : i64}, %{{.*}} : memref<1280xbf16, #gpu.address_space<workgroup>> {llvm.align = 16 : i64})
// BWD:       nvgpu.ldmatrix %[[DMHI:.*]][%{{.*}}] {numTiles = 4 : i32, transpose = true} : memref<1280xbf16, #gpu.address_space<workgroup>> -> vector<4x2xbf16>
// BWD:       nvgpu.ldmatrix %[[DMLO:.*]][%{{.*}}] {numTiles = 4 : i32, transpose = true} : memref<1280xbf16, #gpu.address_space<workgroup>> -> vector<4x2xbf16>
// BWD:       nvvm.mma.sync
// BWD:     gpu.func @mhc_backward_2_params
// The dy fold (hc_joint_backward_lower): the sublayer's own dy is unused, so
// its rows kernel stores none (x, dout, y, du in; mix, scale, base; the
// row sums out), and the cols kernel takes the lower sublayer's
// post (f32) and writes its dy. post_lower is staged with the tile's records
// (their rows padded from 24 to 28 floats: 32 x 28), loaded a tile ahead like
// them; per token and vector of columns the store loop reads it from shared
// memory and sums dx of each stream as stored times post_lower[j] in the rows
// kernel's order.
// BWD:     gpu.func @mhc_backward_3_rows(%arg0: index, %arg1: memref<?xbf16>, %arg2: memref<?xbf16>, %arg3: memref<?xbf16>, %arg4: memref<?xbf16>, %arg5: memref<?xf32>, %arg6: memref<?xf32>, %arg7: memref<?xf32>, %arg8: memref<?xf32>)
// BWD:     gpu.func @mhc_backward_3_cols(%arg0: index, %arg1: memref<?xbf16>, %arg2: memref<?xbf16>, %arg3: memref<?xbf16>, %arg4: memref<?xf32>, %arg5: memref<?xf32>, %arg6: memref<?xbf16>, %arg7: memref<?xf32>, %arg8: memref<?xf32>, %arg9: memref<?xbf16>) workgroup(%[[REC:.*]] : memref<896xf32, #gpu.address_space<workgroup>>
// BWD:       memref.load %arg8[%{{.*}}] : memref<?xf32>
// BWD:       %[[POSTS:.*]] = vector.load %[[REC]][%{{.*}}] {alignment = 16 : i64} : memref<896xf32, #gpu.address_space<workgroup>>, vector<4xf32>
// BWD:       %[[DX0:.*]] = vector.load %{{.*}} : memref<8448xbf16, #gpu.address_space<workgroup>>, vector<8xbf16>
// BWD:       vector.store %[[DX0]], %arg6
// BWD:       arith.mulf
// BWD-COUNT-3: math.fma
// BWD:       vector.store %{{.*}}, %arg9[%{{.*}}] {alignment = 16 : i64} : memref<?xbf16>, vector<8xbf16>
// BWD:     gpu.func @mhc_pre_backward_4_cols({{.*}}, %arg8: memref<?xf32>, %arg9: memref<?xbf16>)

// The pre-norm's gradient in the pre_backward group (docs/PreNorm.md): rows
// reads g and the norm's weight instead of du, makes u again from x and pre
// (a second shared per-token buffer) and forms r with the overflow-free
// factor; cols adds dweight partials per token split (its last argument);
// params sums them after dfn's blocks (24 + 1 + 27 = 52 blocks; 51 without).
// RUN: mhc-opt %S/../../Transforms/Inputs/prenorm-backward-sublayer.mlir --mhc-fuse --convert-mhc-to-gpu | FileCheck %s --check-prefix=PNB
// PNB-LABEL: func.func @prenorm_backward
// PNB:     gpu.launch_func  @mhc_kernels::@mhc_post_backward_0_rows
// PNB:     call @attn_vjp
// PNB:     gpu.launch_func  @mhc_kernels::@mhc_pre_backward_1_rows
// PNB:     gpu.launch_func  @mhc_kernels::@mhc_pre_backward_1_tokens
// PNB:     gpu.launch_func  @mhc_kernels::@mhc_pre_backward_1_cols {{.*}} %[[DWP:.*]] : memref<?xf32>)
// PNB:     gpu.launch_func  @mhc_kernels::@mhc_pre_backward_1_params blocks in (%c52{{.*}} %[[DWP]] : memref<?xf32>, %{{.*}} : memref<?xbf16>)
// PNB:     gpu.func @mhc_pre_backward_1_rows(%arg0: index, %arg1: memref<?xbf16>, %arg2: memref<?xbf16>, %arg3: memref<?xbf16>, {{.*}} workgroup(%arg10 : memref<64xf32, {{.*}}, %arg11 : memref<64xf32,
// PNB:       memref.load %arg3
// PNB:       %[[PLAIN:.*]] = math.rsqrt
// PNB-NEXT:  %[[TINY:.*]] = arith.constant 1.26217745E-29 : f32
// PNB:       %[[RESCUED:.*]] = math.rsqrt
// PNB-NEXT:  %[[SCALED:.*]] = arith.mulf %[[TINY]], %[[RESCUED]] : f32
// PNB:       %[[INF:.*]] = arith.cmpf oeq
// PNB-NEXT:  arith.select %[[INF]], %[[SCALED]], %[[PLAIN]] : f32
// PNB:     gpu.func @mhc_pre_backward_1_tokens
// PNB:     gpu.func @mhc_pre_backward_1_cols({{.*}}, %arg9: memref<?xf32>)
// PNB:     gpu.func @mhc_pre_backward_1_params({{.*}}, %arg6: memref<?xf32>, %arg7: memref<?xbf16>)

// -----

// rms_norm alone (docs/PreNorm.md): one warp a token row (the 8 warps of a
// 64-token tile step through its rows). A row of whole vectors with every
// pointer aligned keeps u in registers: pass 1 walks the row from the lane's
// own column (4 vectors of 8 a step: 1024 columns), summing the squares and
// the 2^-96-scaled squares and carrying the lane's 16 vectors; two 32-lane
// shuffle trees give r with the overflow rescue; pass 2 writes u * r * weight
// from the carried vectors (an f32 weight here: element loads). Other rows
// (the else branch) read u back, 8 vectors at a time (2048 columns a step).
// CHECK-LABEL: func.func @norm_alone
// CHECK:       gpu.launch_func  @mhc_kernels::@mhc_rms_norm_0 blocks in ({{.*}}) threads in (%c256, {{.*}}) args(%{{.*}} : index, %{{.*}} : memref<?xbf16>, %{{.*}} : memref<?xf32>, %{{.*}} : memref<?xbf16>)
// CHECK-LABEL: gpu.func @mhc_rms_norm_0(
// CHECK:         scf.for %{{.*}} = %{{.*}} to %c64{{.*}} step %c8
// CHECK:           scf.if
// CHECK:             scf.for %{{.*}} = %{{.*}} to %c4096{{.*}} step %c1024 iter_args({{.*}}) -> (f32, f32{{(, vector<8xbf16>){16} *}})
// CHECK:               vector.load %arg1
// CHECK:               vector.reduction <add>
// CHECK-COUNT-10:    gpu.shuffle  xor
// CHECK:             math.rsqrt
// CHECK:             math.rsqrt
// CHECK:             arith.select
// CHECK:             scf.for %{{.*}} = %{{.*}} to %c4096{{.*}} step %c1024{{.*}} iter_args({{.*}}) -> (vector<8xbf16>{{(, vector<8xbf16>){15} *}})
// CHECK-NOT:           vector.load %arg1
// CHECK:               memref.load %arg2
// CHECK:               vector.store %{{.*}}, %arg3
// CHECK:           } else {
// CHECK:             scf.for %{{.*}} = %{{.*}} to %c4096{{.*}} step %c1024 iter_args({{.*}}) -> (f32, f32)
// CHECK:               vector.load %arg1
// CHECK:               vector.reduction <add>
// CHECK-COUNT-10:    gpu.shuffle  xor
// CHECK:             math.rsqrt
// CHECK:             math.rsqrt
// CHECK:             arith.select
// CHECK:             scf.for %{{.*}} = %{{.*}} to %c4096{{.*}} step %c2048
// CHECK:               vector.load %arg1
// CHECK:               memref.load %arg2
// CHECK:               vector.store %{{.*}}, %arg3
func.func @norm_alone(%u: tensor<?x4096xbf16>, %w: tensor<4096xf32>) -> tensor<?x4096xbf16> {
  %o = mhc.rms_norm %u, %w : tensor<?x4096xbf16>, tensor<4096xf32> -> tensor<?x4096xbf16>
  return %o : tensor<?x4096xbf16>
}

// -----

// In the pre group: pass 1 makes u from the streams and stores it into the
// output when nothing else reads u (the kernel has no u argument), then
// pass 2 reads it back from there.
// CHECK-LABEL: func.func @pre_norm
// CHECK:       gpu.func @mhc_pre_0(%{{.*}}: index, %[[X:.*]]: memref<?xbf16>, %{{.*}}: memref<?xf32>, %{{.*}}: memref<?xf32>, %{{.*}}: memref<?xf32>, %[[W:.*]]: memref<?xbf16>, %{{.*}}: memref<?xf32>, %[[O:.*]]: memref<?xbf16>, %{{.*}}: memref<?xi32>)
// CHECK:         gpu.barrier
// CHECK:         scf.for %{{.*}} = %{{.*}} to %c32{{.*}} step %c4
// CHECK:           scf.for {{.*}} iter_args({{.*}}) -> (f32, f32)
// CHECK:             vector.load %[[X]]
// CHECK:             vector.store %{{.*}}, %[[O]]
// CHECK-COUNT-5:   gpu.shuffle  xor
// CHECK:           scf.for
// CHECK:             vector.load %[[O]]
// CHECK:             vector.load %[[W]]
// CHECK:             vector.store %{{.*}}, %[[O]]
func.func @pre_norm(%x: tensor<?x4x8192xbf16>, %fn: tensor<24x32768xf32>, %scale: tensor<3xf32>,
                    %base: tensor<24xf32>, %w: tensor<8192xbf16>) -> (tensor<?x4xf32>, tensor<?x8192xbf16>) {
  %mix = mhc.norm_project %x, %fn : tensor<?x4x8192xbf16>, tensor<24x32768xf32> -> tensor<?x24xf32>
  %pre, %post, %l = mhc.split_mixes %mix, %scale, %base
      : tensor<?x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<?x4xf32>, tensor<?x4xf32>, tensor<?x4x4xf32>
  %u = mhc.pre_apply %x, %pre : tensor<?x4x8192xbf16>, tensor<?x4xf32> -> tensor<?x8192xbf16>
  %o = mhc.rms_norm %u, %w : tensor<?x8192xbf16>, tensor<8192xbf16> -> tensor<?x8192xbf16>
  return %post, %o : tensor<?x4xf32>, tensor<?x8192xbf16>
}
