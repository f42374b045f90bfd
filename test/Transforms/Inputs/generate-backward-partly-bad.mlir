// Input of mhc-generate-backward-errors.mlir: @good could be differentiated,
// @bad cannot; the pass must fail without writing @good_forward/_backward.
func.func @good(%x: tensor<8x2x13xf32>) -> tensor<8x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  return %h : tensor<8x13xf32>
}
func.func @bad(%x: tensor<8x2x13xf32>) -> tensor<8x13xf32> {
  %h = mhc.collapse %x : tensor<8x2x13xf32> -> tensor<8x13xf32>
  %s = arith.mulf %h, %h : tensor<8x13xf32>
  return %s : tensor<8x13xf32>
}
