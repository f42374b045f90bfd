// --mhc-scf-to-cf (a step of --mhc-cpu-pipeline): upstream's scf-to-cf
// patterns applied from the last op to the first (linear in the size of a
// function). The output is the same as convert-scf-to-cf's: both runs are
// checked against the same lines.
// RUN: mhc-opt %s --mhc-scf-to-cf | FileCheck %s
// RUN: mhc-opt %s --convert-scf-to-cf | FileCheck %s

// CHECK-LABEL: func.func @loops
// CHECK-NOT:     scf.
// CHECK:         cf.br ^[[COND0:bb[0-9]+]](%{{.*}}, %{{.*}} : index, f32)
// CHECK:       ^[[COND0]](%[[I:.*]]: index, %[[ACC:.*]]: f32):
// CHECK:         arith.cmpi slt, %[[I]]
// CHECK:         cf.cond_br
// CHECK:         cf.br ^[[COND1:bb[0-9]+]](
// CHECK:       ^[[COND1]](
// CHECK:         cf.cond_br
// CHECK:         arith.addf
// CHECK:         cf.cond_br %{{.*}}, ^{{.*}}, ^{{.*}}
// CHECK:         arith.mulf
// CHECK:         return
func.func @loops(%n: index, %x: f32, %c: i1) -> (f32, f32) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %s = scf.for %i = %c0 to %n step %c1 iter_args(%acc = %x) -> f32 {
    %t = scf.for %j = %c0 to %n step %c1 iter_args(%a = %acc) -> f32 {
      %y = arith.addf %a, %x : f32
      scf.yield %y : f32
    }
    scf.yield %t : f32
  }
  %r = scf.if %c -> f32 {
    %m = arith.mulf %s, %x : f32
    scf.yield %m : f32
  } else {
    scf.yield %x : f32
  }
  return %s, %r : f32, f32
}
