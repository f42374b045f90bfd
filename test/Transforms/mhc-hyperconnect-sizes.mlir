// Many streams or wide streams: params=arguments only changes types, so it
// works up to the bounds; params=constants would write every parameter out
// and stops at 2^26 elements per parameter with a located error; sizes that
// would overflow are errors, never a crash.
//
// RUN: mhc-opt %s --mhc-hyperconnect="streams=1000" | FileCheck %s --check-prefix=ARGS
// ARGS: func.func @net(%{{.*}}: tensor<4x16xf32>, %{{.*}}: tensor<1002000x16000xf32> {mhc.param = "layer0.fn"}
// ARGS-COUNT-2: mhc.post_res
//
// RUN: not mhc-opt %s --mhc-hyperconnect="streams=1000 params=constants" 2>&1 | FileCheck %s --check-prefix=CONST
// CONST: [[@LINE+13]]:9: error: mhc-hyperconnect: 1000 streams of 'tensor<4x16xf32>' give a stream or a parameter too large (at most 67108864 elements per parameter with params=constants, 2^48 per tensor)
//
// RUN: not mhc-opt %s --mhc-hyperconnect="streams=1025" 2>&1 | FileCheck %s --check-prefix=MANY
// MANY: error: mhc-hyperconnect: streams must be in [1, 1024], got 1025
// RUN: not mhc-opt %s --mhc-hyperconnect="streams=9223372036854775807" 2>&1 | FileCheck %s --check-prefix=HUGE
// HUGE: error: mhc-hyperconnect: streams must be in [1, 1024], got 9223372036854775807
//
// A stream of 2^40 elements widened 1024 times exceeds 2^48:
// RUN: not mhc-opt %S/Inputs/hyperconnect-wide-stream.mlir --mhc-hyperconnect="streams=1024" 2>&1 | FileCheck %s --check-prefix=WIDE
// WIDE: hyperconnect-wide-stream.mlir:4:9: error: mhc-hyperconnect: 1024 streams of 'tensor<1048576x1048576xf32>' give a stream or a parameter too large

func.func @net(%h: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %y1 = math.tanh %h : tensor<4x16xf32>
  %h1 = arith.addf %h, %y1 : tensor<4x16xf32>
  %y2 = math.tanh %h1 : tensor<4x16xf32>
  %h2 = arith.addf %h1, %y2 : tensor<4x16xf32>
  return %h2 : tensor<4x16xf32>
}
