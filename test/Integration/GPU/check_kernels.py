# Device check of the generated kernels (every op, fused and single, a few
# shapes) against python/mhc/reference.py on seeded random data; the full
# sweep and the timings are `test/Integration/GPU/harness/check_kernels.py` without --quick
# (see bench/results/README.md).
# REQUIRES: cuda, ptxas
# RUN: rm -rf %t && mkdir -p %t
# RUN: %python %mhc_src_root/test/Integration/GPU/harness/build_cubins.py --mhc-opt mhc-opt --out %t --quick
# RUN: %python %mhc_src_root/test/Integration/GPU/harness/check_kernels.py --cubins %t --json %t/out.json --Ts 1,1000 --no-timing | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: failures: 0
