// RUN: mhc-opt %s --convert-mhc-to-linalg --split-input-file --verify-diagnostics

// Tensors with an encoding (sparse, blocked layouts, ...) have no meaning for
// the dense generics of this lowering.
func.func @encoded(%x: tensor<8x4x16xf32, "blocked">) -> tensor<8x16xf32, "blocked"> {
  // expected-error @below {{'mhc.collapse' op cannot be lowered to linalg: tensors with an encoding are not supported, got 'tensor<8x4x16xf32, "blocked">'}}
  %h = mhc.collapse %x : tensor<8x4x16xf32, "blocked"> -> tensor<8x16xf32, "blocked">
  return %h : tensor<8x16xf32, "blocked">
}

// -----

func.func @encoded_inside_fused(%x: tensor<8x4x16xf32>, %pre: tensor<8x4xf32, "scratch">) -> tensor<8x16xf32> {
  %u = mhc.fused "pre" -> tensor<8x16xf32> {
    // expected-error @below {{'mhc.pre_apply' op cannot be lowered to linalg: tensors with an encoding are not supported, got 'tensor<8x4xf32, "scratch">'}}
    %v = mhc.pre_apply %x, %pre : tensor<8x4x16xf32>, tensor<8x4xf32, "scratch"> -> tensor<8x16xf32>
    mhc.yield %v : tensor<8x16xf32>
  }
  return %u : tensor<8x16xf32>
}
