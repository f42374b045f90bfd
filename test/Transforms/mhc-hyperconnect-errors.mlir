// Bad options and bad input for --mhc-hyperconnect: a clear error, non-zero exit.
//
// RUN: not mhc-opt %s --mhc-hyperconnect="streams=0" 2>&1 | FileCheck %s --check-prefix=STREAMS
// STREAMS: error: mhc-hyperconnect: streams must be in [1, 1024], got 0
// RUN: not mhc-opt %s --mhc-hyperconnect="mode=foo" 2>&1 | FileCheck %s --check-prefix=MODE
// MODE: for the --mode option: Cannot find option named 'foo'!
// RUN: not mhc-opt %s --mhc-hyperconnect="init=zero" 2>&1 | FileCheck %s --check-prefix=INIT
// INIT: for the --init option: Cannot find option named 'zero'!
// RUN: not mhc-opt %s --mhc-hyperconnect="params=globals" 2>&1 | FileCheck %s --check-prefix=PARAMS
// PARAMS: for the --params option: Cannot find option named 'globals'!
// RUN: not mhc-opt %s --mhc-hyperconnect="iterations=0" 2>&1 | FileCheck %s --check-prefix=ITERS
// ITERS: error: mhc-hyperconnect: iterations must be >= 1, got 0
// RUN: not mhc-opt %s --mhc-hyperconnect="min-blocks=0" 2>&1 | FileCheck %s --check-prefix=MINB
// MINB: error: mhc-hyperconnect: min-blocks must be >= 1, got 0
// RUN: not mhc-opt %s --mhc-hyperconnect="mode=mhc init=identity" 2>&1 | FileCheck %s --check-prefix=MHCID
// MHCID: error: mhc-hyperconnect: init=identity needs mode=hc or mode=static-hc
//
// params=arguments would change the signature of a function that is called:
// RUN: not mhc-opt %s --mhc-hyperconnect 2>&1 | FileCheck %s --check-prefix=CALLERS
// CALLERS: [[@LINE+8]]:1: error: mhc-hyperconnect: @net has callers and params=arguments would change its signature; use params=constants
// With params=constants the caller is fine:
// RUN: mhc-opt %s --mhc-hyperconnect="params=constants" | FileCheck %s --check-prefix=CONST
// CONST: func.func @net(%{{.*}}: tensor<4x16xf32>) -> tensor<4x16xf32>
// CONST-COUNT-2: mhc.post_res
// CONST: func.func @caller
// CONST: call @net

func.func @net(%h: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %y1 = math.tanh %h : tensor<4x16xf32>
  %h1 = arith.addf %h, %y1 : tensor<4x16xf32>
  %y2 = math.tanh %h1 : tensor<4x16xf32>
  %h2 = arith.addf %h1, %y2 : tensor<4x16xf32>
  return %h2 : tensor<4x16xf32>
}

func.func @caller(%h: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %r = call @net(%h) : (tensor<4x16xf32>) -> tensor<4x16xf32>
  return %r : tensor<4x16xf32>
}
