//===- MHCAttrs.td - mhc dialect attributes ----------------*- tablegen -*-===//
#ifndef MHC_ATTRS_TD
#define MHC_ATTRS_TD

include "mhc/Dialect/MHC/IR/MHCDialect.td"
include "mlir/IR/AttrTypeBase.td"

def MHC_ScheduleAttr : AttrDef<MHC_Dialect, "Schedule"> {
  let mnemonic = "schedule";
  let summary = "the GPU schedule of one kernel (tile, chunk, threads, vectors)";
  let description = [{
    How `--convert-mhc-to-gpu` lays out the kernel of one `mhc.fused` group
    (or of a lone mhc op), attached to it as the discardable attribute
    `mhc.schedule`. `--mhc-select-schedule` writes it; the lowering obeys
    whatever it finds, so a schedule can be written by hand. Fields:

    * `tile_tokens`: tokens per thread block (a block owns a tile of tokens);
    * `chunk_columns`: columns of C per step of the streaming chunk loop of
      post_res / norm_project kernels (0: the kernel has no chunk loop);
    * `threads`: threads per block (a multiple of 32);
    * `vector_width`: elements per 16-byte vector access of the activations;
    * `blocks_per_sm`: the minimum number of resident blocks per SM the
      kernel is compiled for (`.minnctapersm`; 0: no constraint);
    * `token_splits` (optional, default 0): for kernels whose blocks own a
      range of columns and walk the tokens (the backward's column pass), the
      number of token ranges the tokens are split into (the grid's second
      dim); 0 for the token-tiled kernels.

    A group that becomes several kernels (the backward; a forward group
    whose fn is prepared by a kernel of its own) carries an array with one
    schedule per kernel, in launch order.

    ```mlir
    %r = mhc.fused "post" -> ... {...} {mhc.schedule = #mhc.schedule<
        tile_tokens = 32, chunk_columns = 128, threads = 128, vector_width = 8,
        blocks_per_sm = 4>}
    ```
  }];
  let parameters = (ins "int64_t":$tile_tokens, "int64_t":$chunk_columns,
                        "int64_t":$threads, "int64_t":$vector_width,
                        "int64_t":$blocks_per_sm,
                        DefaultValuedParameter<"int64_t", "0">:$token_splits);
  let assemblyFormat = "`<` struct(params) `>`";
}

#endif // MHC_ATTRS_TD
