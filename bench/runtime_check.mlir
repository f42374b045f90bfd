// Kernels that exercise the runtime paths the sublayer kernels may need but
// the plain pre_apply check does not (bench_sublayer.py --check-runtime):
//  * @reverse_blocks: 64 KiB of dynamic shared memory, over the 48 KiB a
//    kernel gets without opting in (cuFuncSetAttribute in mgpuLaunchKernel).
//    Each block of 1024 threads reverses its 16384 floats through shared memory.
//  * @cluster_rank: a launch with thread-block clusters (mgpuLaunchClusterKernel,
//    cuLaunchKernelEx); each block writes its rank within the cluster, which is
//    0 everywhere unless the cluster dimension really reached the driver.
module attributes {gpu.container_module} {
  gpu.module @checks {
    gpu.func @reverse_blocks(%x: memref<?xf32>, %y: memref<?xf32>) kernel {
      %c0 = arith.constant 0 : index
      %c1 = arith.constant 1 : index
      %c4 = arith.constant 4 : index
      %c16 = arith.constant 16 : index
      %c1024 = arith.constant 1024 : index
      %c16383 = arith.constant 16383 : index
      %c16384 = arith.constant 16384 : index
      %bid = gpu.block_id x
      %tid = gpu.thread_id x
      %base = arith.muli %bid, %c16384 : index
      %raw = gpu.dynamic_shared_memory : memref<?xi8, #gpu.address_space<workgroup>>
      %smem = memref.view %raw[%c0][] : memref<?xi8, #gpu.address_space<workgroup>> to memref<16384xf32, #gpu.address_space<workgroup>>
      scf.for %k = %c0 to %c16 step %c1 {
        %o = arith.muli %k, %c1024 : index
        %i = arith.addi %o, %tid : index
        %g = arith.addi %base, %i : index
        %v = memref.load %x[%g] : memref<?xf32>
        memref.store %v, %smem[%i] : memref<16384xf32, #gpu.address_space<workgroup>>
      }
      gpu.barrier
      scf.for %k = %c0 to %c16 step %c1 {
        %o = arith.muli %k, %c1024 : index
        %i = arith.addi %o, %tid : index
        %r = arith.subi %c16383, %i : index
        %v = memref.load %smem[%r] : memref<16384xf32, #gpu.address_space<workgroup>>
        %g = arith.addi %base, %i : index
        memref.store %v, %y[%g] : memref<?xf32>
      }
      gpu.return
    }

    gpu.func @cluster_rank(%out: memref<?xi32>) kernel {
      %bid = gpu.block_id x
      %rank = gpu.cluster_block_id x
      %r = arith.index_cast %rank : index to i32
      memref.store %r, %out[%bid] : memref<?xi32>
      gpu.return
    }
  }

  // y[b*16384 + i] = x[b*16384 + 16383 - i]; len(x) must be a multiple of 16384.
  func.func @reverse_blocks(%x: memref<?xf32>, %y: memref<?xf32>) attributes {llvm.emit_c_interface} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c1024 = arith.constant 1024 : index
    %c16384 = arith.constant 16384 : index
    %smem = arith.constant 65536 : i32
    %n = memref.dim %x, %c0 : memref<?xf32>
    %blocks = arith.divui %n, %c16384 : index
    %t0 = gpu.wait async
    %t1 = gpu.launch_func async [%t0] @checks::@reverse_blocks
        blocks in (%blocks, %c1, %c1) threads in (%c1024, %c1, %c1)
        dynamic_shared_memory_size %smem
        args(%x : memref<?xf32>, %y : memref<?xf32>)
    gpu.wait [%t1]
    return
  }

  // out[b] = rank of block b in its cluster of 2 (len(out) blocks, even).
  func.func @cluster_rank(%out: memref<?xi32>) attributes {llvm.emit_c_interface} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c32 = arith.constant 32 : index
    %n = memref.dim %out, %c0 : memref<?xi32>
    %t0 = gpu.wait async
    %t1 = gpu.launch_func async [%t0] @checks::@cluster_rank
        clusters in (%c2, %c1, %c1) blocks in (%n, %c1, %c1) threads in (%c32, %c1, %c1)
        args(%out : memref<?xi32>)
    gpu.wait [%t1]
    return
  }
}
