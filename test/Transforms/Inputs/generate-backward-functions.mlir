// Input of mhc-generate-backward.mlir's `functions` option test: two functions
// with mhc ops and one without.
func.func @first(%h: tensor<13xf32>) -> tensor<2x13xf32> {
  %x = mhc.expand %h, streams = 2 : tensor<13xf32> -> tensor<2x13xf32>
  return %x : tensor<2x13xf32>
}
func.func @other(%x: tensor<2x13xf32>) -> tensor<13xf32> {
  %h = mhc.collapse %x : tensor<2x13xf32> -> tensor<13xf32>
  return %h : tensor<13xf32>
}
func.func @plain(%a: tensor<13xf32>) -> tensor<13xf32> {
  return %a : tensor<13xf32>
}
