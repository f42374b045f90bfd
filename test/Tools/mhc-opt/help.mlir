// The driver lists the mhc passes and pipelines with their descriptions.
// RUN: mhc-opt --help | FileCheck %s
// CHECK-DAG: --convert-mhc-to-gpu {{ *}}- Lower mhc ops
// CHECK-DAG: --convert-mhc-to-linalg {{ *}}- Lower mhc ops to tensor-level linalg
// CHECK-DAG: --mhc-cpu-pipeline
// CHECK-DAG: --mhc-fuse {{ *}}- Group mhc ops into the kernels
// CHECK-DAG: --mhc-gpu-pipeline
// CHECK-DAG: --mhc-hyperconnect {{ *}}- Rewrite an ordinary residual network
// CHECK-DAG: --streams=<long>
