//===- Passes.td - mhc lowerings ---------------------------*- tablegen -*-===//
#ifndef MHC_CONVERSION_PASSES_TD
#define MHC_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def ConvertMHCToLinalg : Pass<"convert-mhc-to-linalg"> {
  let summary = "Lower mhc ops to tensor-level linalg, arith and math";
  let description = [{
    The portable reference lowering: every mhc op becomes linalg.generic ops
    on tensors with f32 accumulation, rounding back to the activation type
    (bf16/f16) once per output element. Handles any number of static or
    dynamic leading dims. The result bufferizes and lowers with upstream
    passes (see --mhc-cpu-pipeline).
  }];
  let dependentDialects = ["::mlir::arith::ArithDialect",
                           "::mlir::linalg::LinalgDialect",
                           "::mlir::math::MathDialect",
                           "::mlir::tensor::TensorDialect"];
}

def MHCSelectSchedule : Pass<"mhc-select-schedule", "ModuleOp"> {
  let summary = "Choose each GPU kernel's schedule and write it into the IR";
  let description = [{
    For every `mhc.fused` group and every mhc op outside one (each becomes
    one GPU kernel or a few), chooses the schedule `--convert-mhc-to-gpu`
    will obey (one per kernel) and attaches it as
    `mhc.schedule = #mhc.schedule<tile_tokens, ...>` (an array for several)
    (docs/GPU.md, "Schedule"). A root that already carries a schedule keeps
    it: schedules can be written or edited by hand between this pass and the
    lowering. Groups the GPU lowering cannot take are diagnosed here.

    A function attribute `mhc.max_tokens = N : i64` says the function is
    meant for at most N tokens (a hint: its kernels stay correct at any
    token count); with N <= 4096 its forward kernels take 16 tokens per
    block, so that small token counts still spread over the SMs (mhc.torch
    compiles such a variant of each forward op for T <= 4096).

    A forward group with a `norm_project` gets two schedules: a small
    kernel that prepares fn once per call (split into bf16 head and
    remainder, laid out in the tensor cores' fragment order: one 16-byte
    load per fragment), then the group's kernel, which reads that instead
    of reading and splitting fn for every tile of tokens (docs/GPU.md,
    "The prepared fn"). `prepare-fn=false` keeps one kernel per forward
    group.
  }];
  let dependentDialects = ["::mlir::mhc::MHCDialect"];
  let options = [
    Option<"chip", "chip", "std::string", /*default=*/"\"sm_90\"",
           "Target chip (sm_80 or newer; see docs/GPU.md for the list)">,
    Option<"tileTokens", "tile-tokens", "int64_t", /*default=*/"0",
           "Tokens per block of the norm_project kernels: 0 = auto (32 for "
           "n <= 4, else 16), or a multiple of 16 (a tuning knob; too large a "
           "tile exceeds the 48 KB of shared memory and is an error)">,
    Option<"prepareFn", "prepare-fn", "bool", /*default=*/"true",
           "Let groups with a norm_project prepare fn once per call in a "
           "kernel of their own: false keeps one kernel per forward group "
           "(the IREE fast route)">,
  ];
}

def ConvertMHCToGPU : Pass<"convert-mhc-to-gpu", "ModuleOp"> {
  let summary = "Lower mhc ops and mhc.fused groups to GPU kernels and host launches";
  let description = [{
    Turns every `mhc.fused` group (and any remaining mhc op) into GPU
    kernels in a `gpu.module @mhc_kernels`, scheduled for NVIDIA GPUs as its
    `mhc.schedule` attribute says (`--mhc-select-schedule`; a root without
    one gets the default schedule): 16-byte vector loads and stores, f32
    accumulation, warp-shuffle and block reductions, the Sinkhorn iterations
    in registers, the norm_project product on tensor cores (bf16 mma.sync
    m16n8k16 from a shared tile, fn split into bf16 hi + lo for ~f32
    accuracy) over a tile of tokens so that fn is read once per tile, C
    walked in ~256-byte chunks per row. An impossible schedule is an error
    naming the field. The host side becomes `bufferization.to_buffer` +
    `memref.alloc` + `gpu.launch_func` (kernel ABI: index T, then one 1-D
    memref per input and per output) + `bufferization.to_tensor`. See
    docs/GPU.md.
  }];
  let dependentDialects = ["::mlir::gpu::GPUDialect",
                           "::mlir::arith::ArithDialect",
                           "::mlir::math::MathDialect",
                           "::mlir::memref::MemRefDialect",
                           "::mlir::scf::SCFDialect",
                           "::mlir::vector::VectorDialect",
                           "::mlir::nvgpu::NVGPUDialect",
                           "::mlir::NVVM::NVVMDialect",
                           "::mlir::LLVM::LLVMDialect",
                           "::mlir::tensor::TensorDialect",
                           "::mlir::bufferization::BufferizationDialect"];
  let options = [
    Option<"chip", "chip", "std::string", /*default=*/"\"sm_90\"",
           "Target chip (sm_80 or newer: the projection uses bf16 mma.sync); "
           "a bad value is an error">,
  ];
}

def MHCGPUCheckTarget : Pass<"mhc-gpu-check-target", "ModuleOp"> {
  let summary = "Check that the toolchain can build the GPU target";
  let description = [{
    Fails with a located error, before anything is compiled, when `chip`,
    `features`, `format` and `toolkit` cannot produce a binary: an unknown
    or too old chip, a PTX version the chip does not support, a toolkit
    without libdevice (the kernels' expf/rsqrtf would stay unresolved and
    gpu-module-to-binary would still exit 0) or whose ptxas cannot assemble
    for the chip (formats bin and fatbin). The first step of
    --mhc-gpu-pipeline.
  }];
  let options = [
    Option<"chip", "chip", "std::string", /*default=*/"\"sm_90\"",
           "Target chip">,
    Option<"features", "features", "std::string", /*default=*/"\"\"",
           "PTX features; empty = the chip's default (+ptx80 up to sm_90a)">,
    Option<"format", "format", "::mlir::mhc::GPUBinaryFormat",
           /*default=*/"::mlir::mhc::GPUBinaryFormat::Fatbin",
           "What gpu-module-to-binary will produce",
           [{::llvm::cl::values(
             clEnumValN(::mlir::mhc::GPUBinaryFormat::Mlir, "mlir",
                        "no binary: the gpu.module stays (NVVM dialect)"),
             clEnumValN(::mlir::mhc::GPUBinaryFormat::Llvm, "llvm",
                        "LLVM bitcode of the device code (no PTX)"),
             clEnumValN(::mlir::mhc::GPUBinaryFormat::Isa, "isa", "PTX text"),
             clEnumValN(::mlir::mhc::GPUBinaryFormat::Bin, "bin", "cubin"),
             clEnumValN(::mlir::mhc::GPUBinaryFormat::Fatbin, "fatbin",
                        "fat binary"))}]>,
    Option<"toolkit", "toolkit", "std::string",
           /*default=*/"\"/usr/local/cuda\"", "CUDA toolkit path">,
  ];
}

def MHCGPUHostMemory : Pass<"mhc-gpu-host-memory", "ModuleOp"> {
  let summary = "Put the host code's buffers on the device, on one stream";
  let description = [{
    After bufferization of the GPU path's host code: every `memref.alloc`
    outside the gpu.modules becomes `gpu.alloc` (its `memref.dealloc`s are
    dropped), and every constant global the host code reads
    (`memref.get_global`, e.g. a weight) is copied into a `gpu.alloc` where
    it is read; each is freed with `gpu.dealloc` after its last use unless
    the function returns it (then the caller owns it). A call of a declared
    function (a host function such as `printMemrefF32`) gets host copies of
    its memref arguments that are device memory (a `gpu.alloc`, or what a
    function of the module returned), made after the stream is synchronized
    and freed after the call (what the callee writes into them does not
    come back); other arguments are passed as they are. Every allocation,
    copy, launch and free of a function is put on one stream in program
    order (`gpu.wait async` at entry, `gpu.wait` before each return); every
    call synchronizes the stream first and starts a new one after. Function
    declarations, and functions that already order their GPU work with
    async tokens (hand-written GPU host code), are left alone. Errors: a
    host `memref.load`/`memref.store` of a device buffer or a host-side
    `memref.copy` (they would dereference device pointers;
    `--mhc-gpu-host-kernels` turns them into kernels first), async tokens
    mixed with synchronous GPU ops in one function, allocations or global
    reads in nested control flow, a strided view of a device buffer passed
    to a host function.
  }];
  let dependentDialects = ["::mlir::gpu::GPUDialect",
                           "::mlir::memref::MemRefDialect"];
}

def MHCGPUHostKernels : Pass<"mhc-gpu-host-kernels", "ModuleOp"> {
  let summary = "Run the host functions' remaining loops and memory accesses as GPU kernels";
  let description = [{
    After bufferization and `--convert-linalg-to-parallel-loops` of the GPU
    path's host code, everything that is not an mhc kernel (the tensor math
    between mhc ops: a model's matmuls, norms and activations, a test's
    `math.tanh`, the casts before printing) is loops over buffers that live
    on the device. This pass makes each top-level one a `gpu.launch`
    (outlined into kernels by `--gpu-kernel-outlining`):

    * `scf.parallel` -> one thread per iteration of its flattened iteration
      space, 256 threads a block, the last dimension fastest (neighbouring
      threads touch neighbouring elements); a nested `scf.for` (a reduction
      or a matmul's k loop) runs inside the thread;
    * `memref.copy` -> a parallel copy loop, then as above;
    * any other op that loads or stores memref elements (a full reduction's
      `scf.for`, a rank-0 store) -> a one-thread kernel.

    Correct rather than fast: the mhc ops keep their own kernels. Errors, at
    the op: host code that uses a loaded element (e.g. a `tensor.extract`
    whose scalar feeds host control flow), element accesses outside the
    function's entry block, and parallel loops with reductions.
  }];
  let dependentDialects = ["::mlir::gpu::GPUDialect",
                           "::mlir::arith::ArithDialect",
                           "::mlir::scf::SCFDialect"];
}

def MHCOutlineKernels : Pass<"mhc-outline-kernels", "ModuleOp"> {
  let summary = "Outline every kernel root into a function of its own";
  let description = [{
    Every kernel root (an `mhc.fused` group or an mhc op outside one, after
    `--mhc-fuse` and `--mhc-select-schedule`) becomes a private function
    `@mhc_<kind>_<i>`, named as `--convert-mhc-to-gpu` names the root's
    kernel, and a `func.call` of it where the root was. The function's
    arguments are the kernel's inputs and its results the kernel's outputs,
    in the order of the kernel ABI (docs/GPU.md), so a compiler that does
    not know mhc can launch mhc's kernel in the call's place; when the token
    count is static it is recorded as `mhc.tokens`. With `kernels-only`,
    only the outlined functions are kept, public: the module that
    `--mhc-gpu-pipeline` compiles into those kernels. Used by the IREE fast
    route (bench/iree/fast_route.py).
  }];
  let dependentDialects = ["::mlir::func::FuncDialect"];
  let options = [
    Option<"kernelsOnly", "kernels-only", "bool", /*default=*/"false",
           "Keep only the outlined functions (made public)">,
  ];
}

def MHCGPUIREEKernels : Pass<"mhc-gpu-iree-kernels", "::mlir::gpu::GPUModuleOp"> {
  let summary = "Add an entry with IREE's CUDA dispatch ABI to every mhc kernel";
  let description = [{
    On a gpu.module lowered to NVVM: for every kernel `@k` with mhc's ABI
    (i64 T, then per buffer a 1-D memref descriptor: allocated and aligned
    pointers, offset, size, stride) adds a kernel `@k_iree` taking what
    IREE's CUDA runtime passes to an external dispatch: one device pointer
    per binding (the buffers, in the same order), then 32-bit push
    constants: T and each buffer's element count. Its body is a copy of
    `@k`'s, entered with the descriptors rebuilt (offset 0, stride 1), so
    both entries compute the same. Launch bounds and the kernel attributes
    are copied. A kernel with another signature is an error. Run by
    `--mhc-gpu-pipeline="iree-kernels=1"` (the IREE fast route,
    bench/iree/fast_route.py).
  }];
  let dependentDialects = ["::mlir::LLVM::LLVMDialect"];
}

#endif // MHC_CONVERSION_PASSES_TD
