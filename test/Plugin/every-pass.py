# Stock mlir-opt with the plugin behaves exactly as mhc-opt, for every mhc pass
# and pipeline: same output, same diagnostics, same exit status, on that
# pass's own lit test input (every split). The passes are read from the .td
# files and the pipeline registrations, so a new pass without an input here
# fails this test.
#
# RUN: %python %s %mhc_src_root mhc-opt mlir-opt %mhc_plugin | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: every mhc pass and pipeline: {{[0-9]+}} of {{[0-9]+}} identical through the plugin
import re
import subprocess
import sys
from pathlib import Path

src, mhc_opt, mlir_opt, plugin = Path(sys.argv[1]), *sys.argv[2:5]

# The input of each pass: its lit test (named after the flag), unless listed.
INPUTS = {
    "convert-mhc-to-linalg": "test/Conversion/MHCToLinalg/mhc-to-linalg.mlir",
    "mhc-gpu-pipeline": "test/Conversion/MHCToGPU/gpu-pipeline.mlir",
}
# Options that keep a run short (PTX text instead of a ptxas run).
OPTIONS = {"mhc-gpu-pipeline": "{format=isa}"}


def passes():
    """(flag, anchor op or None) of every pass in the .td files."""
    found = []
    for td in sorted((src / "include").rglob("Passes.td")):
        for name, anchor in re.findall(r'Pass<"([^"]+)"(?:,\s*"([^"]+)")?>', td.read_text()):
            found.append((name, anchor or None))
    for cpp in sorted((src / "lib/Pipelines").glob("*.cpp")):
        for name in re.findall(r'PassPipelineRegistration<[^>]*>\(\s*"([^"]+)"', cpp.read_text()):
            found.append((name, None))
    return found


def input_for(flag):
    if flag in INPUTS:
        return src / INPUTS[flag]
    hits = sorted(src.glob(f"test/**/{flag}.mlir"))
    return hits[0] if hits else None


def normalise(text):
    # Compile times recorded in gpu.binary properties differ run to run.
    return re.sub(r"LLVMIRToISATimeInMs = \d+", "LLVMIRToISATimeInMs = N", text)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    err = p.stderr.replace(mlir_opt, "TOOL").replace(mhc_opt, "TOOL")
    return p.returncode, normalise(p.stdout), normalise(err)


found = passes()
same = 0
for flag, anchor in found:
    path = input_for(flag)
    if path is None:
        print(f"FAIL {flag}: no input (add test/<dir>/{flag}.mlir or an INPUTS entry)")
        continue
    step = flag + OPTIONS.get(flag, "")
    nest = {"func::FuncOp": "func.func", "::mlir::gpu::GPUModuleOp": "gpu.module"}
    if anchor in nest:
        step = f"{nest[anchor]}({step})"
    args = [str(path), "--split-input-file", f"--pass-pipeline=builtin.module({step})"]
    ref = run([mhc_opt, *args])
    got = run([mlir_opt, f"--load-dialect-plugin={plugin}", f"--load-pass-plugin={plugin}", *args])
    if got != ref:
        print(f"FAIL {flag}: mlir-opt + plugin differs from mhc-opt on {path.name} "
              f"(exit {got[0]} vs {ref[0]})\n{got[2][-2000:]}")
    else:
        same += 1
        print(f"ok {flag} on {path.name} (exit {ref[0]})")
print(f"every mhc pass and pipeline: {same} of {len(found)} identical through the plugin")
