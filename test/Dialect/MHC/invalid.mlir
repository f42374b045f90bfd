// RUN: mhc-opt %s -split-input-file -verify-diagnostics
// One case per verifier error; each names the operand and what is wrong.

func.func @expand_zero_streams(%h: tensor<8x64xbf16>) {
  // expected-error @+1 {{expects 'streams' >= 1, got 0}}
  %x = mhc.expand %h, streams = 0 : tensor<8x64xbf16> -> tensor<8x0x64xbf16>
  return
}

// -----

func.func @expand_wrong_stream_dim(%h: tensor<8x64xbf16>) {
  // expected-error @+1 {{expects the result's stream dim (= 'streams') to be 4, got 2}}
  %x = mhc.expand %h, streams = 4 : tensor<8x64xbf16> -> tensor<8x2x64xbf16>
  return
}

// -----

func.func @expand_wrong_width(%h: tensor<8x64xbf16>) {
  // expected-error @+1 {{expects the result's width C (= the input's) to be 64, got 32}}
  %x = mhc.expand %h, streams = 4 : tensor<8x64xbf16> -> tensor<8x4x32xbf16>
  return
}

// -----

func.func @expand_dynamic_width(%h: tensor<8x?xbf16>) {
  // expected-error @+1 {{expects the trailing dims [C] of input to be static, got 'tensor<8x?xbf16>'}}
  %x = mhc.expand %h, streams = 4 : tensor<8x?xbf16> -> tensor<8x4x64xbf16>
  return
}

// -----

func.func @expand_scalar(%h: tensor<bf16>) {
  // expected-error @+1 {{expects input of shape [C] (rank >= 1), got 'tensor<bf16>'}}
  %x = mhc.expand %h, streams = 4 : tensor<bf16> -> tensor<4x64xbf16>
  return
}

// -----

func.func @expand_leading_mismatch(%h: tensor<8x64xbf16>) {
  // expected-error @+1 {{leading dims of result (9) do not match the leading dims of input (8)}}
  %x = mhc.expand %h, streams = 4 : tensor<8x64xbf16> -> tensor<9x4x64xbf16>
  return
}

// -----

func.func @expand_element_type(%h: tensor<8x64xbf16>) {
  // expected-error @+1 {{expects input and result to have the same element type, got 'bf16' and 'f32'}}
  %x = mhc.expand %h, streams = 4 : tensor<8x64xbf16> -> tensor<8x4x64xf32>
  return
}

// -----

func.func @activation_integer(%h: tensor<8x64xi32>) {
  // expected-error @+1 {{operand #0 must be ranked tensor of bfloat16 type or 16-bit float or 32-bit float values}}
  %x = mhc.expand %h, streams = 4 : tensor<8x64xi32> -> tensor<8x4x64xi32>
  return
}

// -----

func.func @collapse_rank(%x: tensor<64xbf16>) {
  // expected-error @+1 {{expects input of shape [n, C] (rank >= 2), got 'tensor<64xbf16>'}}
  %h = mhc.collapse %x : tensor<64xbf16> -> tensor<64xbf16>
  return
}

// -----

func.func @collapse_width(%x: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{expects the result's width C (= the input's) to be 64, got 65}}
  %h = mhc.collapse %x : tensor<8x4x64xbf16> -> tensor<8x65xbf16>
  return
}

// -----

func.func @collapse_leading(%x: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{leading dims of result (2x8) do not match the leading dims of input (8)}}
  %h = mhc.collapse %x : tensor<8x4x64xbf16> -> tensor<2x8x64xbf16>
  return
}

// -----

func.func @norm_project_fn_shape(%x: tensor<8x4x64xbf16>, %fn: tensor<24x64xf32>) {
  // expected-error @+1 {{expects fn of shape 24x256 ([n*n + 2n, n*C] for n = 4, C = 64), got 'tensor<24x64xf32>'}}
  %m = mhc.norm_project %x, %fn : tensor<8x4x64xbf16>, tensor<24x64xf32> -> tensor<8x24xf32>
  return
}

// -----

func.func @norm_project_mix_count(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>) {
  // expected-error @+1 {{expects the number of mixes M = n*n + 2n to be 24, got 16}}
  %m = mhc.norm_project %x, %fn : tensor<8x4x64xbf16>, tensor<24x256xf32> -> tensor<8x16xf32>
  return
}

// -----

func.func @norm_project_dynamic_streams(%x: tensor<8x?x64xbf16>, %fn: tensor<24x256xf32>) {
  // expected-error @+1 {{expects the trailing dims [n, C] of x to be static, got 'tensor<8x?x64xbf16>'}}
  %m = mhc.norm_project %x, %fn : tensor<8x?x64xbf16>, tensor<24x256xf32> -> tensor<8x24xf32>
  return
}

// -----

func.func @norm_project_negative_eps(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>) {
  // expected-error @+1 {{expects 'eps' to be non-negative, got -1.000000e+00}}
  %m = mhc.norm_project %x, %fn {eps = -1.0 : f32} : tensor<8x4x64xbf16>, tensor<24x256xf32> -> tensor<8x24xf32>
  return
}

// -----

func.func @norm_project_leading(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>) {
  // expected-error @+1 {{leading dims of mix (7) do not match the leading dims of x (8)}}
  %m = mhc.norm_project %x, %fn : tensor<8x4x64xbf16>, tensor<24x256xf32> -> tensor<7x24xf32>
  return
}

// -----

func.func @norm_project_f16_weight(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf16>) {
  // expected-error @+1 {{operand #1 must be ranked tensor of 32-bit float values}}
  %m = mhc.norm_project %x, %fn : tensor<8x4x64xbf16>, tensor<24x256xf16> -> tensor<8x24xf32>
  return
}

// -----

func.func @split_mixes_bad_m(%mix: tensor<8x20xf32>, %s: tensor<3xf32>, %b: tensor<20xf32>) {
  // expected-error @+1 {{expects the number of mixes M to be n*n + 2n for some n >= 1 (3, 8, 15, 24, ...), got 20}}
  %p, %q, %l = mhc.split_mixes %mix, %s, %b : tensor<8x20xf32>, tensor<3xf32>, tensor<20xf32> -> tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_scale(%mix: tensor<8x24xf32>, %s: tensor<2xf32>, %b: tensor<24xf32>) {
  // expected-error @+1 {{expects scale of shape 3 (pre, post, res), got 'tensor<2xf32>'}}
  %p, %q, %l = mhc.split_mixes %mix, %s, %b : tensor<8x24xf32>, tensor<2xf32>, tensor<24xf32> -> tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_base(%mix: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<16xf32>) {
  // expected-error @+1 {{expects base of shape 24 (= M), got 'tensor<16xf32>'}}
  %p, %q, %l = mhc.split_mixes %mix, %s, %b : tensor<8x24xf32>, tensor<3xf32>, tensor<16xf32> -> tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_pre(%mix: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>) {
  // expected-error @+1 {{expects pre to end in [n] with n = 4 (from M = 24), got 'tensor<8x3xf32>'}}
  %p, %q, %l = mhc.split_mixes %mix, %s, %b : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<8x3xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_logits(%mix: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>) {
  // expected-error @+1 {{expects logits to end in [n, n] with n = 4 (from M = 24), got 'tensor<8x4x2xf32>'}}
  %p, %q, %l = mhc.split_mixes %mix, %s, %b : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x2xf32>
  return
}

// -----

func.func @split_mixes_leading(%mix: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>) {
  // expected-error @+1 {{leading dims of post (4) do not match the leading dims of mix (8)}}
  %p, %q, %l = mhc.split_mixes %mix, %s, %b : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<8x4xf32>, tensor<4x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_pre_eps(%mix: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>) {
  // expected-error @+1 {{expects 'pre_eps' to be non-negative}}
  %p, %q, %l = mhc.split_mixes %mix, %s, %b {pre_eps = -1.0e-6 : f32} : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @sinkhorn_not_square(%l: tensor<8x4x3xf32>) {
  // expected-error @+1 {{expects square n x n matrices in the last two dims, got 'tensor<8x4x3xf32>'}}
  %c = mhc.sinkhorn %l : tensor<8x4x3xf32>
  return
}

// -----

func.func @sinkhorn_zero_iterations(%l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'iterations' >= 1, got 0}}
  %c = mhc.sinkhorn %l {iterations = 0 : i64} : tensor<8x4x4xf32>
  return
}

// -----

func.func @sinkhorn_negative_eps(%l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'eps' to be non-negative}}
  %c = mhc.sinkhorn %l {eps = -1.0 : f32} : tensor<8x4x4xf32>
  return
}

// -----

func.func @sinkhorn_rank(%l: tensor<4xf32>) {
  // expected-error @+1 {{expects logits of shape [n, n] (rank >= 2), got 'tensor<4xf32>'}}
  %c = mhc.sinkhorn %l : tensor<4xf32>
  return
}

// -----

func.func @sinkhorn_result_type(%l: tensor<8x4x4xf32>) {
  // expected-error @+2 {{inferred type(s) 'tensor<8x4x4xf32>' are incompatible with return type(s) of operation 'tensor<?x4x4xf32>'}}
  // expected-error @+1 {{failed to infer returned types}}
  %c = "mhc.sinkhorn"(%l) : (tensor<8x4x4xf32>) -> tensor<?x4x4xf32>
  return
}

// -----

func.func @pre_apply_streams(%x: tensor<8x4x64xbf16>, %pre: tensor<8x2xf32>) {
  // expected-error @+1 {{expects the last dim of pre (= n of x) to be 4, got 2}}
  %u = mhc.pre_apply %x, %pre : tensor<8x4x64xbf16>, tensor<8x2xf32> -> tensor<8x64xbf16>
  return
}

// -----

func.func @pre_apply_width(%x: tensor<8x4x64xbf16>, %pre: tensor<8x4xf32>) {
  // expected-error @+1 {{expects the result's width C (= x's) to be 64, got 63}}
  %u = mhc.pre_apply %x, %pre : tensor<8x4x64xbf16>, tensor<8x4xf32> -> tensor<8x63xbf16>
  return
}

// -----

func.func @pre_apply_leading(%x: tensor<8x4x64xbf16>, %pre: tensor<9x4xf32>) {
  // expected-error @+1 {{leading dims of pre (9) do not match the leading dims of x (8)}}
  %u = mhc.pre_apply %x, %pre : tensor<8x4x64xbf16>, tensor<9x4xf32> -> tensor<8x64xbf16>
  return
}

// -----

func.func @pre_apply_element_type(%x: tensor<8x4x64xbf16>, %pre: tensor<8x4xf32>) {
  // expected-error @+1 {{expects x and result to have the same element type, got 'bf16' and 'f16'}}
  %u = mhc.pre_apply %x, %pre : tensor<8x4x64xbf16>, tensor<8x4xf32> -> tensor<8x64xf16>
  return
}

// -----

func.func @post_res_y_width(%y: tensor<8x32xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects the width of y (= C of x) to be 64, got 32}}
  %r = mhc.post_res %y, %x, %p, %c : tensor<8x32xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32> -> tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_post(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x3xf32>, %c: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects the last dim of post (= n of x) to be 4, got 3}}
  %r = mhc.post_res %y, %x, %p, %c : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x3xf32>, tensor<8x4x4xf32> -> tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_comb(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x2x4xf32>) {
  // expected-error @+1 {{expects the source dim of comb (= n of x) to be 4, got 2}}
  %r = mhc.post_res %y, %x, %p, %c : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x2x4xf32> -> tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_comb_leading(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<4x4xf32>) {
  // expected-error @+1 {{leading dims of comb ([]) do not match the leading dims of x (8)}}
  %r = mhc.post_res %y, %x, %p, %c : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<4x4xf32> -> tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_y_type(%y: tensor<8x64xf32>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects y and x to have the same element type, got 'f32' and 'bf16'}}
  %r = mhc.post_res %y, %x, %p, %c : tensor<8x64xf32>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32> -> tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_result(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects the result's stream dim (= n of x) to be 4, got 2}}
  %r = mhc.post_res %y, %x, %p, %c : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32> -> tensor<8x2x64xbf16>
  return
}

// -----

func.func @fused_kind(%x: tensor<8x4xf32>) {
  // expected-error @+1 {{expects kind "pre", "post", "backward", "post_backward" or "pre_backward", got "middle"}}
  %r = mhc.fused "middle" -> tensor<8x4xf32> {
    mhc.yield %x : tensor<8x4xf32>
  }
  return
}

// -----

func.func @fused_yield_types(%x: tensor<8x4xf32>) {
  // expected-error @+1 {{expects mhc.yield to return the result types}}
  %r = mhc.fused "pre" -> tensor<8x5xf32> {
    mhc.yield %x : tensor<8x4xf32>
  }
  return
}

// -----

func.func @expand_negative_streams(%h: tensor<8x64xbf16>) {
  // expected-error @+1 {{expects 'streams' >= 1, got -2}}
  %x = mhc.expand %h, streams = -2 : tensor<8x64xbf16> -> tensor<8x2x64xbf16>
  return
}

// -----

func.func @sinkhorn_negative_iterations(%l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'iterations' >= 1, got -3}}
  %c = mhc.sinkhorn %l {iterations = -3 : i64} : tensor<8x4x4xf32>
  return
}

// -----

// The forward norm_project guards n*C too.
func.func @norm_project_huge(%x: tensor<1x3037000500x1xf32>, %fn: tensor<24x48xf32>) {
  // expected-error @+1 {{expects n*C and n*n + 2n to fit in 64 bits, got n = 3037000500, C = 1}}
  %m = mhc.norm_project %x, %fn : tensor<1x3037000500x1xf32>, tensor<24x48xf32> -> tensor<1x24xf32>
  return
}

// -----

// A huge static M is rejected at once (not by counting up to it).
func.func @split_mixes_huge_m(%m: tensor<8x9223372036854775806xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>) {
  // expected-error @+1 {{expects the number of mixes M to be n*n + 2n for some n >= 1 (3, 8, 15, 24, ...), got 9223372036854775806}}
  %p, %q, %l = mhc.split_mixes %m, %s, %b : tensor<8x9223372036854775806xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

// Gradient ops.
func.func @norm_project_grad_rank(%x: tensor<64xbf16>, %fn: tensor<24x256xf32>, %d: tensor<24xf32>) {
  // expected-error @+1 {{expects x of shape [n, C] (rank >= 2), got 'tensor<64xbf16>'}}
  %dx, %dfn = mhc.norm_project_grad %x, %fn, %d : tensor<64xbf16>, tensor<24x256xf32>, tensor<24xf32>
  return
}

// -----

func.func @norm_project_grad_eps(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>, %d: tensor<8x24xf32>) {
  // expected-error @+1 {{expects 'eps' to be non-negative, got -1.000000e+00}}
  %dx, %dfn = mhc.norm_project_grad %x, %fn, %d {eps = -1.0 : f32} : tensor<8x4x64xbf16>, tensor<24x256xf32>, tensor<8x24xf32>
  return
}

// -----

func.func @norm_project_grad_overflow(%x: tensor<2x4611686018427387904x4xf32>, %fn: tensor<24x256xf32>, %d: tensor<2x24xf32>) {
  // expected-error @+1 {{expects n*C and n*n + 2n to fit in 64 bits, got n = 4611686018427387904, C = 4}}
  %dx, %dfn = mhc.norm_project_grad %x, %fn, %d : tensor<2x4611686018427387904x4xf32>, tensor<24x256xf32>, tensor<2x24xf32>
  return
}

// -----

func.func @norm_project_grad_fn(%x: tensor<8x4x64xbf16>, %fn: tensor<24x64xf32>, %d: tensor<8x24xf32>) {
  // expected-error @+1 {{expects fn of shape 24x256 ([n*n + 2n, n*C] for n = 4, C = 64), got 'tensor<24x64xf32>'}}
  %dx, %dfn = mhc.norm_project_grad %x, %fn, %d : tensor<8x4x64xbf16>, tensor<24x64xf32>, tensor<8x24xf32>
  return
}

// -----

func.func @norm_project_grad_dmix_dynamic(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>, %d: tensor<8x?xf32>) {
  // expected-error @+1 {{expects the trailing dims [M] of dmix to be static, got 'tensor<8x?xf32>'}}
  %dx, %dfn = mhc.norm_project_grad %x, %fn, %d : tensor<8x4x64xbf16>, tensor<24x256xf32>, tensor<8x?xf32>
  return
}

// -----

func.func @norm_project_grad_dmix_width(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>, %d: tensor<8x16xf32>) {
  // expected-error @+1 {{expects the last dim of dmix (M = n*n + 2n) to be 24, got 16}}
  %dx, %dfn = mhc.norm_project_grad %x, %fn, %d : tensor<8x4x64xbf16>, tensor<24x256xf32>, tensor<8x16xf32>
  return
}

// -----

func.func @norm_project_grad_dmix_leading(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>, %d: tensor<2x4x24xf32>) {
  // expected-error @+1 {{leading dims of dmix (2x4) do not match the leading dims of x (8)}}
  %dx, %dfn = mhc.norm_project_grad %x, %fn, %d : tensor<8x4x64xbf16>, tensor<24x256xf32>, tensor<2x4x24xf32>
  return
}

// -----

// A cotangent has exactly its operand's type.
func.func @norm_project_grad_dx_type(%x: tensor<3x4x12xf32>, %fn: tensor<24x48xf32>, %d: tensor<3x24xf32>) {
  // expected-error @+1 {{failed to verify that all of {x, dx} have same type}}
  %dx, %dfn = "mhc.norm_project_grad"(%x, %fn, %d) <{eps = 1.0e-06 : f32}> : (tensor<3x4x12xf32>, tensor<24x48xf32>, tensor<3x24xf32>) -> (tensor<?x4x12xf32>, tensor<24x48xf32>)
  return
}

// -----

func.func @split_mixes_grad_m(%m: tensor<8x20xf32>, %s: tensor<3xf32>, %b: tensor<20xf32>, %p: tensor<8x4xf32>, %l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects the number of mixes M to be n*n + 2n for some n >= 1 (3, 8, 15, 24, ...), got 20}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %p, %l : tensor<8x20xf32>, tensor<3xf32>, tensor<20xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_grad_mix_dynamic(%m: tensor<8x?xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>, %p: tensor<8x4xf32>, %l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects the trailing dims [M] of mix to be static, got 'tensor<8x?xf32>'}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %p, %l : tensor<8x?xf32>, tensor<3xf32>, tensor<24xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_grad_scale(%m: tensor<8x24xf32>, %s: tensor<2xf32>, %b: tensor<24xf32>, %p: tensor<8x4xf32>, %l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects scale of shape 3 (pre, post, res), got 'tensor<2xf32>'}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %p, %l : tensor<8x24xf32>, tensor<2xf32>, tensor<24xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_grad_base(%m: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<16xf32>, %p: tensor<8x4xf32>, %l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects base of shape 24 (= M), got 'tensor<16xf32>'}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %p, %l : tensor<8x24xf32>, tensor<3xf32>, tensor<16xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_grad_dpre(%m: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>, %p: tensor<8x3xf32>, %q: tensor<8x4xf32>, %l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects dpre to end in [n] with n = 4 (from M = 24), got 'tensor<8x3xf32>'}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %q, %l : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<8x3xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_grad_dpost_leading(%m: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>, %p: tensor<8x4xf32>, %q: tensor<4x4xf32>, %l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{leading dims of dpost (4) do not match the leading dims of mix (8)}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %q, %l : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<8x4xf32>, tensor<4x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_grad_dlogits(%m: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>, %p: tensor<8x4xf32>, %l: tensor<8x4x2xf32>) {
  // expected-error @+1 {{expects dlogits to end in [n, n] with n = 4 (from M = 24), got 'tensor<8x4x2xf32>'}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %p, %l : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x2xf32>
  return
}

// -----

func.func @split_mixes_grad_dlogits_rank(%m: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>, %p: tensor<8x4xf32>, %l: tensor<4xf32>) {
  // expected-error @+1 {{expects dlogits of shape [n, n] (rank >= 2), got 'tensor<4xf32>'}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %p, %l : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<4xf32>
  return
}

// -----

func.func @split_mixes_grad_pre_eps(%m: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>, %p: tensor<8x4xf32>, %l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'pre_eps' to be non-negative, got -1.000000e-06}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %p, %l {pre_eps = -1.0e-6 : f32} : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @sinkhorn_grad_square(%l: tensor<8x4x3xf32>) {
  // expected-error @+1 {{expects square n x n matrices in the last two dims, got 'tensor<8x4x3xf32>'}}
  %d = mhc.sinkhorn_grad %l, %l : tensor<8x4x3xf32>
  return
}

// -----

func.func @sinkhorn_grad_rank(%l: tensor<4xf32>) {
  // expected-error @+1 {{expects logits of shape [n, n] (rank >= 2), got 'tensor<4xf32>'}}
  %d = mhc.sinkhorn_grad %l, %l : tensor<4xf32>
  return
}

// -----

func.func @sinkhorn_grad_dynamic_n(%l: tensor<8x?x4xf32>) {
  // expected-error @+1 {{expects the trailing dims [n, n] of logits to be static, got 'tensor<8x?x4xf32>'}}
  %d = mhc.sinkhorn_grad %l, %l : tensor<8x?x4xf32>
  return
}

// -----

func.func @sinkhorn_grad_iterations(%l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'iterations' >= 1, got 0}}
  %d = mhc.sinkhorn_grad %l, %l {iterations = 0 : i64} : tensor<8x4x4xf32>
  return
}

// -----

func.func @sinkhorn_grad_too_many_iterations(%l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'iterations' <= 1000 (the backward replays every normalisation), got 1001}}
  %d = mhc.sinkhorn_grad %l, %l {iterations = 1001 : i64} : tensor<8x4x4xf32>
  return
}

// -----

func.func @sinkhorn_grad_eps(%l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'eps' to be non-negative, got -1.000000e+00}}
  %d = mhc.sinkhorn_grad %l, %l {eps = -1.0 : f32} : tensor<8x4x4xf32>
  return
}

// -----

// dcomb and the result have exactly the logits' type (also in staticness).
func.func @sinkhorn_grad_operand_types(%l: tensor<8x4x4xf32>, %c: tensor<?x4x4xf32>) {
  // expected-error @+1 {{failed to verify that all of {logits, dcomb, dlogits} have same type}}
  %d = "mhc.sinkhorn_grad"(%l, %c) : (tensor<8x4x4xf32>, tensor<?x4x4xf32>) -> tensor<8x4x4xf32>
  return
}

// -----

func.func @pre_apply_grad_rank(%x: tensor<64xbf16>, %p: tensor<4xf32>, %du: tensor<64xbf16>) {
  // expected-error @+1 {{expects x of shape [n, C] (rank >= 2), got 'tensor<64xbf16>'}}
  %dx, %dp = mhc.pre_apply_grad %x, %p, %du : tensor<64xbf16>, tensor<4xf32>, tensor<64xbf16>
  return
}

// -----

func.func @pre_apply_grad_du_rank(%x: tensor<4x64xbf16>, %p: tensor<4xf32>, %du: tensor<bf16>) {
  // expected-error @+1 {{expects du of shape [C] (rank >= 1), got 'tensor<bf16>'}}
  %dx, %dp = mhc.pre_apply_grad %x, %p, %du : tensor<4x64xbf16>, tensor<4xf32>, tensor<bf16>
  return
}

// -----

func.func @pre_apply_grad_pre(%x: tensor<8x4x64xbf16>, %p: tensor<8x2xf32>, %du: tensor<8x64xbf16>) {
  // expected-error @+1 {{expects the last dim of pre (= n of x) to be 4, got 2}}
  %dx, %dp = mhc.pre_apply_grad %x, %p, %du : tensor<8x4x64xbf16>, tensor<8x2xf32>, tensor<8x64xbf16>
  return
}

// -----

func.func @pre_apply_grad_du_width(%x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %du: tensor<8x63xbf16>) {
  // expected-error @+1 {{expects the width of du (= C of x) to be 64, got 63}}
  %dx, %dp = mhc.pre_apply_grad %x, %p, %du : tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x63xbf16>
  return
}

// -----

func.func @pre_apply_grad_pre_leading(%x: tensor<8x4x64xbf16>, %p: tensor<9x4xf32>, %du: tensor<8x64xbf16>) {
  // expected-error @+1 {{leading dims of pre (9) do not match the leading dims of x (8)}}
  %dx, %dp = mhc.pre_apply_grad %x, %p, %du : tensor<8x4x64xbf16>, tensor<9x4xf32>, tensor<8x64xbf16>
  return
}

// -----

func.func @pre_apply_grad_du_leading(%x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %du: tensor<2x8x64xbf16>) {
  // expected-error @+1 {{leading dims of du (2x8) do not match the leading dims of x (8)}}
  %dx, %dp = mhc.pre_apply_grad %x, %p, %du : tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<2x8x64xbf16>
  return
}

// -----

func.func @pre_apply_grad_du_type(%x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %du: tensor<8x64xf32>) {
  // expected-error @+1 {{expects du and x to have the same element type, got 'f32' and 'bf16'}}
  %dx, %dp = mhc.pre_apply_grad %x, %p, %du : tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x64xf32>
  return
}

// -----

func.func @post_res_grad_y_width(%y: tensor<8x32xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{expects the width of y (= C of x) to be 64, got 32}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x32xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_grad_post(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x3xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{expects the last dim of post (= n of x) to be 4, got 3}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x3xf32>, tensor<8x4x4xf32>, tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_grad_comb_source(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x2x4xf32>, %d: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{expects the source dim of comb (= n of x) to be 4, got 2}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x2x4xf32>, tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_grad_comb_destination(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x5xf32>, %d: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{expects the destination dim of comb (= n of x) to be 4, got 5}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x5xf32>, tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_grad_dout_streams(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x2x64xbf16>) {
  // expected-error @+1 {{expects the stream dim of dout (= n of x) to be 4, got 2}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x2x64xbf16>
  return
}

// -----

func.func @post_res_grad_dout_width(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x4x60xbf16>) {
  // expected-error @+1 {{expects the width of dout (= C of x) to be 64, got 60}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x4x60xbf16>
  return
}

// -----

func.func @post_res_grad_dout_rank(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<64xbf16>) {
  // expected-error @+1 {{expects dout of shape [n, C] (rank >= 2), got 'tensor<64xbf16>'}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<64xbf16>
  return
}

// -----

func.func @post_res_grad_y_leading(%y: tensor<7x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{leading dims of y (7) do not match the leading dims of x (8)}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<7x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_grad_post_leading(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{leading dims of post ([]) do not match the leading dims of x (8)}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<4xf32>, tensor<8x4x4xf32>, tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_grad_comb_leading(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<6x4x4xf32>, %d: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{leading dims of comb (6) do not match the leading dims of x (8)}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<6x4x4xf32>, tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_grad_dout_leading(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<9x4x64xbf16>) {
  // expected-error @+1 {{leading dims of dout (9) do not match the leading dims of x (8)}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<9x4x64xbf16>
  return
}

// -----

func.func @post_res_grad_y_type(%y: tensor<8x64xf32>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x4x64xbf16>) {
  // expected-error @+1 {{expects y and x to have the same element type, got 'f32' and 'bf16'}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xf32>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x4x64xbf16>
  return
}

// -----

func.func @post_res_grad_dout_type(%y: tensor<8x64xbf16>, %x: tensor<8x4x64xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x4x64xf16>) {
  // expected-error @+1 {{expects dout and x to have the same element type, got 'f16' and 'bf16'}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x64xbf16>, tensor<8x4x64xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x4x64xf16>
  return
}

// -----

func.func @post_res_grad_activation_type(%y: tensor<8x64xi8>, %x: tensor<8x4x64xi8>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x4x64xi8>) {
  // expected-error @+1 {{operand #0 must be ranked tensor of bfloat16 type or 16-bit float or 32-bit float values}}
  %a:4 = "mhc.post_res_grad"(%y, %x, %p, %c, %d) : (tensor<8x64xi8>, tensor<8x4x64xi8>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x4x64xi8>) -> (tensor<8x64xi8>, tensor<8x4x64xi8>, tensor<8x4xf32>, tensor<8x4x4xf32>)
  return
}

// -----

// Empty streams: n = 0 or C = 0 is an error for every op that has streams
// (the lowerings divide by n*C and read stream 0); token dims may be 0.
func.func @collapse_zero_streams(%x: tensor<8x0x64xbf16>) {
  // expected-error @+1 {{expects at least one stream (n >= 1), got n = 0}}
  %h = mhc.collapse %x : tensor<8x0x64xbf16> -> tensor<8x64xbf16>
  return
}

// -----

func.func @norm_project_zero_streams(%x: tensor<?x0x64xbf16>, %fn: tensor<0x0xf32>) {
  // expected-error @+1 {{expects at least one stream (n >= 1), got n = 0}}
  %m = mhc.norm_project %x, %fn : tensor<?x0x64xbf16>, tensor<0x0xf32> -> tensor<?x0xf32>
  return
}

// -----

func.func @pre_apply_zero_streams(%x: tensor<?x0x64xbf16>, %pre: tensor<?x0xf32>) {
  // expected-error @+1 {{expects at least one stream (n >= 1), got n = 0}}
  %u = mhc.pre_apply %x, %pre : tensor<?x0x64xbf16>, tensor<?x0xf32> -> tensor<?x64xbf16>
  return
}

// -----

func.func @post_res_zero_width(%y: tensor<?x0xbf16>, %x: tensor<?x4x0xbf16>, %p: tensor<?x4xf32>, %c: tensor<?x4x4xf32>) {
  // expected-error @+1 {{expects streams of width C >= 1, got C = 0}}
  %o = mhc.post_res %y, %x, %p, %c : tensor<?x0xbf16>, tensor<?x4x0xbf16>, tensor<?x4xf32>, tensor<?x4x4xf32> -> tensor<?x4x0xbf16>
  return
}

// -----

func.func @expand_zero_width(%h: tensor<8x0xf32>) {
  // expected-error @+1 {{expects streams of width C >= 1, got C = 0}}
  %x = mhc.expand %h, streams = 4 : tensor<8x0xf32> -> tensor<8x4x0xf32>
  return
}

// -----

func.func @sinkhorn_empty(%l: tensor<8x0x0xf32>) {
  // expected-error @+1 {{expects n >= 1 (non-empty n x n matrices), got 'tensor<8x0x0xf32>'}}
  %c = mhc.sinkhorn %l : tensor<8x0x0xf32>
  return
}

// -----

func.func @pre_apply_grad_zero_streams(%x: tensor<8x0x64xbf16>, %pre: tensor<8x0xf32>, %du: tensor<8x64xbf16>) {
  // expected-error @+1 {{expects at least one stream (n >= 1), got n = 0}}
  %dx, %dp = mhc.pre_apply_grad %x, %pre, %du : tensor<8x0x64xbf16>, tensor<8x0xf32>, tensor<8x64xbf16>
  return
}

// -----

func.func @post_res_grad_zero_width(%y: tensor<8x0xbf16>, %x: tensor<8x4x0xbf16>, %p: tensor<8x4xf32>, %c: tensor<8x4x4xf32>, %d: tensor<8x4x0xbf16>) {
  // expected-error @+1 {{expects streams of width C >= 1, got C = 0}}
  %a:4 = mhc.post_res_grad %y, %x, %p, %c, %d : tensor<8x0xbf16>, tensor<8x4x0xbf16>, tensor<8x4xf32>, tensor<8x4x4xf32>, tensor<8x4x0xbf16>
  return
}

// -----

// Huge static sizes: every static tensor has at most 2^48 elements, so that
// token, stream and byte counts cannot overflow int64 in the lowerings.
func.func @pre_apply_huge_tokens(%x: tensor<4611686018427387904x4x64xbf16>, %pre: tensor<4611686018427387904x4xf32>) {
  // expected-error @+1 {{expects at most 2^48 elements in a tensor, got operand #0 of type 'tensor<4611686018427387904x4x64xbf16>'}}
  %u = mhc.pre_apply %x, %pre : tensor<4611686018427387904x4x64xbf16>, tensor<4611686018427387904x4xf32> -> tensor<4611686018427387904x64xbf16>
  return
}

// -----

func.func @collapse_huge(%x: tensor<4294967296x4x65536xf32>) {
  // expected-error @+1 {{expects at most 2^48 elements in a tensor, got operand #0}}
  %h = mhc.collapse %x : tensor<4294967296x4x65536xf32> -> tensor<4294967296x65536xf32>
  return
}

// -----

// Non-finite attributes: eps = inf would make every mix or comb entry 0, a
// confident wrong answer; NaN is no number. (eps = 0 is allowed: see
// docs/Guarantees.md.)
func.func @norm_project_inf_eps(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>) {
  // expected-error @+1 {{expects 'eps' to be finite, got INF}}
  %m = mhc.norm_project %x, %fn {eps = 0x7F800000 : f32} : tensor<8x4x64xbf16>, tensor<24x256xf32> -> tensor<8x24xf32>
  return
}

// -----

func.func @sinkhorn_nan_eps(%l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'eps' to be finite, got nan}}
  %c = mhc.sinkhorn %l {eps = 0x7FC00000 : f32} : tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_inf_post_mult(%mix: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>) {
  // expected-error @+1 {{expects 'post_mult' to be finite, got -INF}}
  %p, %q, %l = mhc.split_mixes %mix, %s, %b {post_mult = 0xFF800000 : f32} : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32> -> tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @split_mixes_grad_inf_pre_eps(%m: tensor<8x24xf32>, %s: tensor<3xf32>, %b: tensor<24xf32>, %p: tensor<8x4xf32>, %l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'pre_eps' to be finite, got INF}}
  %a:3 = mhc.split_mixes_grad %m, %s, %b, %p, %p, %l {pre_eps = 0x7F800000 : f32} : tensor<8x24xf32>, tensor<3xf32>, tensor<24xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4x4xf32>
  return
}

// -----

func.func @sinkhorn_grad_inf_eps(%l: tensor<8x4x4xf32>) {
  // expected-error @+1 {{expects 'eps' to be finite, got INF}}
  %d = mhc.sinkhorn_grad %l, %l {eps = 0x7F800000 : f32} : tensor<8x4x4xf32>
  return
}

// -----

func.func @norm_project_grad_inf_eps(%x: tensor<8x4x64xbf16>, %fn: tensor<24x256xf32>, %d: tensor<8x24xf32>) {
  // expected-error @+1 {{expects 'eps' to be finite, got INF}}
  %dx, %dfn = mhc.norm_project_grad %x, %fn, %d {eps = 0x7F800000 : f32} : tensor<8x4x64xbf16>, tensor<24x256xf32>, tensor<8x24xf32>
  return
}

// -----

func.func @rms_norm_rank(%u: tensor<bf16>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{expects u of shape [C] (rank >= 1), got 'tensor<bf16>'}}
  %o = mhc.rms_norm %u, %w : tensor<bf16>, tensor<64xbf16> -> tensor<bf16>
  return
}

// -----

func.func @rms_norm_dynamic_width(%u: tensor<8x?xbf16>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{expects the trailing dims [C] of u to be static, got 'tensor<8x?xbf16>'}}
  %o = mhc.rms_norm %u, %w : tensor<8x?xbf16>, tensor<64xbf16> -> tensor<8x?xbf16>
  return
}

// -----

func.func @rms_norm_empty_width(%u: tensor<8x0xbf16>, %w: tensor<0xbf16>) {
  // expected-error @+1 {{expects u of width C >= 1, got C = 0}}
  %o = mhc.rms_norm %u, %w : tensor<8x0xbf16>, tensor<0xbf16> -> tensor<8x0xbf16>
  return
}

// -----

func.func @rms_norm_weight_size(%u: tensor<8x64xbf16>, %w: tensor<63xbf16>) {
  // expected-error @+1 {{expects the size of weight (= C of u) to be 64, got 63}}
  %o = mhc.rms_norm %u, %w : tensor<8x64xbf16>, tensor<63xbf16> -> tensor<8x64xbf16>
  return
}

// -----

func.func @rms_norm_weight_rank(%u: tensor<8x64xbf16>, %w: tensor<1x64xbf16>) {
  // expected-error @+1 {{expects weight of shape [C], got 'tensor<1x64xbf16>'}}
  %o = mhc.rms_norm %u, %w : tensor<8x64xbf16>, tensor<1x64xbf16> -> tensor<8x64xbf16>
  return
}

// -----

func.func @rms_norm_weight_type(%u: tensor<8x64xbf16>, %w: tensor<64xf16>) {
  // expected-error @+1 {{expects weight of u's element type or f32, got 'f16' with u of 'bf16'}}
  %o = mhc.rms_norm %u, %w : tensor<8x64xbf16>, tensor<64xf16> -> tensor<8x64xbf16>
  return
}

// -----

func.func @rms_norm_result_type(%u: tensor<8x64xbf16>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{all of {u, result} have same type}}
  %o = "mhc.rms_norm"(%u, %w) : (tensor<8x64xbf16>, tensor<64xbf16>) -> tensor<8x64xf32>
  return
}

// -----

func.func @rms_norm_negative_eps(%u: tensor<8x64xbf16>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{expects 'eps' to be non-negative, got -1}}
  %o = mhc.rms_norm %u, %w {eps = -1.0 : f32} : tensor<8x64xbf16>, tensor<64xbf16> -> tensor<8x64xbf16>
  return
}

// -----

func.func @rms_norm_grad_dout_type(%u: tensor<8x64xbf16>, %w: tensor<64xbf16>, %d: tensor<8x64xf32>) {
  // expected-error @+1 {{expects dout and u to have the same element type, got 'f32' and 'bf16'}}
  %du, %dw = mhc.rms_norm_grad %u, %w, %d : tensor<8x64xbf16>, tensor<64xbf16>, tensor<8x64xf32>
  return
}

// -----

func.func @rms_norm_grad_dout_width(%u: tensor<8x64xbf16>, %w: tensor<64xbf16>, %d: tensor<8x63xbf16>) {
  // expected-error @+1 {{expects the width of dout (= C of u) to be 64, got 63}}
  %du, %dw = mhc.rms_norm_grad %u, %w, %d : tensor<8x64xbf16>, tensor<64xbf16>, tensor<8x63xbf16>
  return
}

// -----

func.func @rms_norm_grad_dout_leading(%u: tensor<8x64xbf16>, %w: tensor<64xbf16>, %d: tensor<9x64xbf16>) {
  // expected-error @+1 {{leading dims of dout (9) do not match the leading dims of u (8)}}
  %du, %dw = mhc.rms_norm_grad %u, %w, %d : tensor<8x64xbf16>, tensor<64xbf16>, tensor<9x64xbf16>
  return
}

// -----

func.func @rms_norm_grad_dout_rank(%u: tensor<8x64xbf16>, %w: tensor<64xbf16>, %d: tensor<2x4x64xbf16>) {
  // expected-error @+1 {{expects dout of u's rank, got 'tensor<2x4x64xbf16>' with u 'tensor<8x64xbf16>'}}
  %du, %dw = mhc.rms_norm_grad %u, %w, %d : tensor<8x64xbf16>, tensor<64xbf16>, tensor<2x4x64xbf16>
  return
}
