// A hand-written GPU kernel in the upstream gpu dialect: mHC's pre_apply,
//   u[t, c] = sum_i pre[t, i] * x[t, i, c]   (f32 accumulation, stored as bf16)
// for n = 4 streams and any token count T and width C.
// It needs no mhc pass, so it compiles with the upstream pipeline today:
//   python -m mhc.compiler gpu examples/aot/pre_apply_gpu.mlir -o out/libpre_apply.so --pipeline upstream
// and is the runtime's end-to-end check on the GPU (bench/bench_sublayer.py --check-runtime).
// One thread per (t, c); grid (ceil(C / 256), T).
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @pre_apply(%x: memref<?x4x?xbf16>, %pre: memref<?x4xf32>,
                        %u: memref<?x?xbf16>) kernel {
      %c0 = arith.constant 0 : index
      %c1 = arith.constant 1 : index
      %c2 = arith.constant 2 : index
      %c3 = arith.constant 3 : index
      %c256 = arith.constant 256 : index
      %bx = gpu.block_id x
      %t = gpu.block_id y
      %tx = gpu.thread_id x
      %base = arith.muli %bx, %c256 : index
      %c = arith.addi %base, %tx : index
      %width = memref.dim %u, %c1 : memref<?x?xbf16>
      %inside = arith.cmpi ult, %c, %width : index
      scf.if %inside {
        %x0 = memref.load %x[%t, %c0, %c] : memref<?x4x?xbf16>
        %x1 = memref.load %x[%t, %c1, %c] : memref<?x4x?xbf16>
        %x2 = memref.load %x[%t, %c2, %c] : memref<?x4x?xbf16>
        %x3 = memref.load %x[%t, %c3, %c] : memref<?x4x?xbf16>
        %p0 = memref.load %pre[%t, %c0] : memref<?x4xf32>
        %p1 = memref.load %pre[%t, %c1] : memref<?x4xf32>
        %p2 = memref.load %pre[%t, %c2] : memref<?x4xf32>
        %p3 = memref.load %pre[%t, %c3] : memref<?x4xf32>
        %f0 = arith.extf %x0 : bf16 to f32
        %f1 = arith.extf %x1 : bf16 to f32
        %f2 = arith.extf %x2 : bf16 to f32
        %f3 = arith.extf %x3 : bf16 to f32
        %s0 = arith.mulf %p0, %f0 : f32
        %s1 = math.fma %p1, %f1, %s0 : f32
        %s2 = math.fma %p2, %f2, %s1 : f32
        %s3 = math.fma %p3, %f3, %s2 : f32
        %r = arith.truncf %s3 : f32 to bf16
        memref.store %r, %u[%t, %c] : memref<?x?xbf16>
      }
      gpu.return
    }
  }

  // Host entry point: u = pre_apply(x, pre); all three are device buffers the
  // caller owns (destination-passing style). Runs on the runtime's current
  // stream (mhcRuntimeSetStream).
  func.func @pre_apply(%x: memref<?x4x?xbf16>, %pre: memref<?x4xf32>,
                       %u: memref<?x?xbf16>) attributes {llvm.emit_c_interface} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c256 = arith.constant 256 : index
    %tokens = memref.dim %u, %c0 : memref<?x?xbf16>
    %width = memref.dim %u, %c1 : memref<?x?xbf16>
    %blocks = arith.ceildivui %width, %c256 : index
    %t0 = gpu.wait async
    %t1 = gpu.launch_func async [%t0] @kernels::@pre_apply
        blocks in (%blocks, %tokens, %c1) threads in (%c256, %c1, %c1)
        args(%x : memref<?x4x?xbf16>, %pre : memref<?x4xf32>, %u : memref<?x?xbf16>)
    gpu.wait [%t1]
    return
  }
}
