# The README's main command (scripts/run-example.sh) prints python/mhc/demo.py's
# summary: the bundled tiny Llama's 4 residual adds all converted, the
# identity-initialised rewrite bit-exact, the mHC run finite with doubly
# stochastic combs (the demo exits non-zero otherwise).
#
# RUN: %python -m mhc.demo --mhc-opt mhc-opt | FileCheck %s
# CHECK: mhc: test/Transforms/Inputs/llama-tiny.mlir
# CHECK: residual adds found / converted  4 / 4, in 1 chain(s)
# CHECK: streams                          4
# CHECK: identity init vs original        max |logits difference| = 0 (bit-exact)
# CHECK: mHC run                          logits finite
# CHECK: comb doubly-stochastic error     max |row sum - 1| = {{.*}}, min entry 0.2
# CHECK: time
