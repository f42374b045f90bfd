// RUN: mhc-opt %s --mhc-generate-backward --split-input-file --verify-diagnostics
// A function that cannot be differentiated is a located error, and the module
// is left alone: nothing is printed, not even for the functions that could be.
// RUN: not mhc-opt %S/Inputs/generate-backward-partly-bad.mlir --mhc-generate-backward 2>&1 | FileCheck %s --check-prefix=ATOMIC
// ATOMIC: error: mhc-generate-backward: cannot differentiate 'arith.mulf'
// ATOMIC-NOT: func.func
// RUN: not mhc-opt %S/Inputs/generate-backward-functions.mlir --mhc-generate-backward="functions=missing" 2>&1 | FileCheck %s --check-prefix=MISSING
// MISSING: error: mhc-generate-backward: no function @missing (option 'functions')

func.func @unsupported_op(%x: tensor<8x2x13xf32>) -> tensor<8x2x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  // expected-error @+1 {{mhc-generate-backward: cannot differentiate 'arith.addf' (supported: mhc.expand, mhc.collapse, mhc.norm_project, mhc.split_mixes, mhc.sinkhorn, mhc.pre_apply, mhc.post_res, mhc.rms_norm, arith.constant, and func.call of a function with a vector-Jacobian product; run this pass before --mhc-fuse)}}
  %s = arith.addf %h, %h : tensor<8x13xf32>
  %x2 = mhc.expand %s, streams = 2 : tensor<8x13xf32> -> tensor<8x2x13xf32>
  return %x2 : tensor<8x2x13xf32>
}

// -----

// expected-note @+1 {{callee defined here}}
func.func private @attn(tensor<8x13xf32>) -> tensor<8x13xf32>
func.func @missing_vjp(%x: tensor<8x2x13xf32>) -> tensor<8x2x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  // expected-error @+1 {{mhc-generate-backward: @attn is opaque; its vector-Jacobian product @attn_vjp : '(tensor<8x13xf32>, tensor<8x13xf32>) -> tensor<8x13xf32>' (operands, then cotangents of the results -> cotangents of the operands) must exist; name another function with the callee's 'mhc.vjp' attribute}}
  %y = func.call @attn(%h) : (tensor<8x13xf32>) -> tensor<8x13xf32>
  %x2 = mhc.expand %y, streams = 2 : tensor<8x13xf32> -> tensor<8x2x13xf32>
  return %x2 : tensor<8x2x13xf32>
}

// -----

func.func private @attn(tensor<8x13xf32>) -> tensor<8x13xf32>
// expected-note @+1 {{defined here}}
func.func private @attn_vjp(tensor<8x13xf32>) -> tensor<8x13xf32>
func.func @vjp_type(%x: tensor<8x2x13xf32>) -> tensor<8x2x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  // expected-error @+1 {{mhc-generate-backward: the vector-Jacobian product @attn_vjp of @attn has type '(tensor<8x13xf32>) -> tensor<8x13xf32>', expected '(tensor<8x13xf32>, tensor<8x13xf32>) -> tensor<8x13xf32>'}}
  %y = func.call @attn(%h) : (tensor<8x13xf32>) -> tensor<8x13xf32>
  %x2 = mhc.expand %y, streams = 2 : tensor<8x13xf32> -> tensor<8x2x13xf32>
  return %x2 : tensor<8x2x13xf32>
}

// -----

// A named VJP that does not exist.
// expected-note @+1 {{callee defined here}}
func.func private @ffn(tensor<8x13xf32>) -> tensor<8x13xf32> attributes {mhc.vjp = @ffn_grad}
func.func @named_vjp_missing(%x: tensor<8x2x13xf32>) -> tensor<8x2x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  // expected-error @+1 {{its vector-Jacobian product @ffn_grad : '(tensor<8x13xf32>, tensor<8x13xf32>) -> tensor<8x13xf32>'}}
  %y = func.call @ffn(%h) : (tensor<8x13xf32>) -> tensor<8x13xf32>
  %x2 = mhc.expand %y, streams = 2 : tensor<8x13xf32> -> tensor<8x2x13xf32>
  return %x2 : tensor<8x2x13xf32>
}

// -----

// expected-note @+1 {{callee defined here}}
func.func private @ffn(tensor<8x13xf32>) -> tensor<8x13xf32> attributes {mhc.vjp = "ffn_grad"}
func.func @vjp_attribute_kind(%x: tensor<8x2x13xf32>) -> tensor<8x2x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  // expected-error @+1 {{mhc-generate-backward: the 'mhc.vjp' attribute of @ffn must name a function (@name), got "ffn_grad"}}
  %y = func.call @ffn(%h) : (tensor<8x13xf32>) -> tensor<8x13xf32>
  %x2 = mhc.expand %y, streams = 2 : tensor<8x13xf32> -> tensor<8x2x13xf32>
  return %x2 : tensor<8x2x13xf32>
}

// -----

func.func private @count(tensor<8x13xf32>) -> tensor<8xi32>
func.func private @count_vjp(tensor<8x13xf32>, tensor<8xi32>) -> tensor<8x13xf32>
func.func @call_integer_result(%x: tensor<8x2x13xf32>) -> tensor<8x2x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  // expected-error @+1 {{mhc-generate-backward: the operands and results of a differentiated call must be ranked float tensors, got 'tensor<8xi32>'}}
  %n = func.call @count(%h) : (tensor<8x13xf32>) -> tensor<8xi32>
  return %x : tensor<8x2x13xf32>
}

// -----

// expected-error @+1 {{mhc-generate-backward: @branchy has several blocks; only straight-line functions can be differentiated}}
func.func @branchy(%x: tensor<8x2x13xf32>) -> tensor<8x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  cf.br ^next
^next:
  return %h : tensor<8x13xf32>
}

// -----

// expected-error @+1 {{mhc-generate-backward: argument 1 of @integer_argument is not a ranked float tensor: 'index'}}
func.func @integer_argument(%x: tensor<8x2x13xf32>, %k: index) -> tensor<8x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  return %h : tensor<8x13xf32>
}

// -----

// expected-error @+1 {{mhc-generate-backward: result 1 of @integer_result is not a ranked float tensor: 'tensor<8xi32>'}}
func.func @integer_result(%x: tensor<8x2x13xf32>) -> (tensor<8x13xf32>, tensor<8xi32>) {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  %k = arith.constant dense<1> : tensor<8xi32>
  return %h, %k : tensor<8x13xf32>, tensor<8xi32>
}

// -----

func.func @taken_forward() {
  return
}
// expected-error @+1 {{mhc-generate-backward: cannot generate @taken_forward for @taken: the name is taken}}
func.func @taken(%x: tensor<8x2x13xf32>) -> tensor<8x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  return %h : tensor<8x13xf32>
}

// -----

func.func @too_many_iterations(%l: tensor<8x4x4xf32>) -> tensor<8x4x4xf32> {
  // expected-error @+1 {{mhc-generate-backward: sinkhorn_grad supports at most 1000 iterations, got 5000}}
  %c = mhc.sinkhorn %l {iterations = 5000 : i64} : tensor<8x4x4xf32>
  return %c : tensor<8x4x4xf32>
}

// -----

// Fused groups are for the GPU path; differentiate first, then fuse.
func.func @fused(%x: tensor<8x4x16xf32>, %pre: tensor<8x4xf32>) -> tensor<8x16xf32> {
  // expected-error @+1 {{mhc-generate-backward: cannot differentiate 'mhc.fused'}}
  %u = mhc.fused "pre" -> tensor<8x16xf32> {
    %v = mhc.pre_apply %x, %pre : tensor<8x4x16xf32>, tensor<8x4xf32> -> tensor<8x16xf32>
    mhc.yield %v : tensor<8x16xf32>
  }
  return %u : tensor<8x16xf32>
}

// -----

// Gradient ops are not differentiated again.
func.func @second_order(%l: tensor<8x4x4xf32>, %d: tensor<8x4x4xf32>) -> tensor<8x4x4xf32> {
  // expected-error @+1 {{mhc-generate-backward: cannot differentiate 'mhc.sinkhorn_grad'}}
  %g = mhc.sinkhorn_grad %l, %d : tensor<8x4x4xf32>
  return %g : tensor<8x4x4xf32>
}
