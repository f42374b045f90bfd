// A residual stream of 2^40 elements (mhc-hyperconnect-sizes.mlir).
func.func @wide(%h: tensor<1048576x1048576xf32>) -> tensor<1048576x1048576xf32> {
  %y1 = math.tanh %h : tensor<1048576x1048576xf32>
  %h1 = arith.addf %h, %y1 : tensor<1048576x1048576xf32>
  %y2 = math.tanh %h1 : tensor<1048576x1048576xf32>
  %h2 = arith.addf %h1, %y2 : tensor<1048576x1048576xf32>
  return %h2 : tensor<1048576x1048576xf32>
}
