# The residual-chain analysis of --mhc-hyperconnect must do work linear in the
# size of the function (issue 15: it once walked each add's whole upstream
# cone, 4x the time per doubling of depth). Generated Llama-like models of 8
# and 64 layers (RMSNorm, RoPE adds on long-lived cos/sin tables, attention-
# and SwiGLU-shaped matmuls, 2 residual adds per layer) are rewritten with
# remarks=true; the summary remark reports the analysis' work (ops and uses
# visited). Work per op at 64 layers may exceed that at 8 layers by at most
# 25% (a quadratic analysis gives ~8x), and every residual add is converted.
#
# RUN: %python %s mhc-opt | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: layers=8: 16 residual add(s) found, 16 converted
# CHECK: layers=64: 128 residual add(s) found, 128 converted
# CHECK: linear ok
import re
import subprocess
import sys

MHC_OPT = sys.argv[1]
T, C, H = 16, 64, 128  # tokens, width, MLP width
X = f"tensor<{T}x{C}xf32>"
XH = f"tensor<{T}x{H}xf32>"


def model(layers):
    """@forward(h, cos, sin, weights) with `layers` pre-norm blocks."""
    body = []
    n = [0]

    def v():
        n[0] += 1
        return f"%v{n[0]}"

    def rmsnorm(x):
        sq, ms, r, out = v(), v(), v(), v()
        body.extend([
            f"{sq} = arith.mulf {x}, {x} : {X}",
            f"{ms} = linalg.matvec ins({sq}, %ones : {X}, tensor<{C}xf32>) "
            f"outs(%zt : tensor<{T}xf32>) -> tensor<{T}xf32>",
            f"{r} = math.rsqrt {ms} : tensor<{T}xf32>",
            f"{out} = linalg.generic {{indexing_maps = [#row, #col, #row], "
            f"iterator_types = [\"parallel\", \"parallel\"]}} ins({x}, {r} : "
            f"{X}, tensor<{T}xf32>) outs(%e : {X}) {{\n"
            f"  ^bb0(%a: f32, %b: f32, %o: f32):\n"
            f"    %m = arith.mulf %a, %b : f32\n    linalg.yield %m : f32\n  }} -> {X}"])
        return out

    def matmul(x, w, width_in, width_out):
        out = v()
        init = "%zx" if width_out == C else "%zh"
        body.append(f"{out} = linalg.matmul ins({x}, {w} : tensor<{T}x{width_in}xf32>, "
                    f"tensor<{width_in}x{width_out}xf32>) outs({init} : "
                    f"tensor<{T}x{width_out}xf32>) -> tensor<{T}x{width_out}xf32>")
        return out

    h = "%h"
    for _ in range(layers):
        # Attention-shaped block with a RoPE add (q cos + rot(q) sin).
        x = rmsnorm(h)
        q = matmul(x, "%wq", C, C)
        qc, rot, rs, rope = v(), v(), v(), v()
        body += [f"{qc} = arith.mulf {q}, %cos : {X}",
                 f"{rot} = arith.negf {q} : {X}",
                 f"{rs} = arith.mulf {rot}, %sin : {X}",
                 f"{rope} = arith.addf {qc}, {rs} : {X}"]
        att = matmul(rope, "%wo", C, C)
        h1 = v()
        body.append(f"{h1} = arith.addf {h}, {att} : {X}")
        # SwiGLU-shaped MLP.
        x2 = rmsnorm(h1)
        gate, up = matmul(x2, "%wg", C, H), matmul(x2, "%wu", C, H)
        act, prod = v(), v()
        body += [f"{act} = math.tanh {gate} : {XH}",
                 f"{prod} = arith.mulf {act}, {up} : {XH}"]
        down = matmul(prod, "%wd", H, C)
        h2 = v()
        body.append(f"{h2} = arith.addf {down}, {h1} : {X}")
        h = h2
    return f"""#row = affine_map<(d0, d1) -> (d0, d1)>
#col = affine_map<(d0, d1) -> (d0)>
func.func @forward(%h: {X}, %cos: {X}, %sin: {X}, %wq: tensor<{C}x{C}xf32>,
    %wo: tensor<{C}x{C}xf32>, %wg: tensor<{C}x{H}xf32>, %wu: tensor<{C}x{H}xf32>,
    %wd: tensor<{H}x{C}xf32>) -> {X} {{
  %zero = arith.constant 0.0 : f32
  %ones = arith.constant dense<1.0> : tensor<{C}xf32>
  %e = tensor.empty() : {X}
  %eh = tensor.empty() : {XH}
  %et = tensor.empty() : tensor<{T}xf32>
  %zx = linalg.fill ins(%zero : f32) outs(%e : {X}) -> {X}
  %zh = linalg.fill ins(%zero : f32) outs(%eh : {XH}) -> {XH}
  %zt = linalg.fill ins(%zero : f32) outs(%et : tensor<{T}xf32>) -> tensor<{T}xf32>
  """ + "\n  ".join(body) + f"""
  return {h} : {X}
}}
"""


work_per_op = {}
for layers in (8, 64):
    r = subprocess.run([MHC_OPT, "-", "--mhc-hyperconnect=remarks=true",
                        "--mlir-print-op-on-diagnostic=false", "-o", "/dev/null"],
                       input=model(layers), capture_output=True, text=True)
    m = re.search(r"@forward: (\d+ residual add\(s\) found, \d+ converted) .*"
                  r"visited (\d+) ops and uses in a function of (\d+) ops", r.stderr)
    if r.returncode != 0 or not m:
        print(f"layers={layers}: FAIL: no summary remark\n{r.stderr[-2000:]}")
        sys.exit(0)
    steps, ops = int(m.group(2)), int(m.group(3))
    work_per_op[layers] = steps / ops
    print(f"layers={layers}: {m.group(1)}; analysis work {steps} for {ops} ops "
          f"({steps / ops:.2f} per op)")
growth = work_per_op[64] / work_per_op[8]
print(f"work per op at 64 layers / at 8 layers = {growth:.2f} (limit 1.25)")
print("linear ok" if growth <= 1.25 else "linear FAIL")
