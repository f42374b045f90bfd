# The fuzzer's reproducers (test/fuzz/Inputs/*.fuzz: the inputs of the bugs fuzzing found, in
# mhc-fuzz's format, "// pipeline: ..." then MLIR) replayed through mhc-opt: each must end with
# success, or with an error that names a line and column of the input -- never a crash. In the
# sanitizer build (where mhc-opt runs under ASan + UBSan) mhc-fuzz replays them too, checking the
# fuzzer's own promises (valid IR after every pass, round trips). Inputs/harness/ holds the
# reproducers of bugs in mhc-fuzz itself (e.g. it handed MLIR's parser a buffer without the NUL
# that files have): raw bytes, replayed through mhc-fuzz only.
#
# RUN: %python %s %mhc_tools_dir %S/Inputs | FileCheck %s
# CHECK-NOT: FAIL
# CHECK: [[N:[0-9]+]] of [[N]] reproducers handled
import os
import re
import subprocess
import sys
from pathlib import Path

tools, inputs = Path(sys.argv[1]), sorted(Path(sys.argv[2]).glob("*.fuzz"))
ok = 0
for path in inputs:
    header, _, source = path.read_text().partition("\n")
    pipeline = header.removeprefix("// pipeline:").strip()
    r = subprocess.run([str(tools / "mhc-opt"), "-", f"--pass-pipeline=builtin.module({pipeline})",
                        "-o", "/dev/null"], input=source, capture_output=True, text=True)
    located = re.search(r"^<stdin>:\d+:\d+: error: ", r.stderr, re.M)
    good = r.returncode == 0 or (r.returncode == 1 and located)
    first = next((l for l in r.stderr.splitlines() if "error:" in l), "")
    print(f"{'ok' if good else 'FAIL'}: {path.name}: exit {r.returncode} {first[:160]}")
    ok += bool(good)
fuzzer = tools / "mhc-fuzz"
if fuzzer.exists():
    # The fuzzer links its own ASan runtime: not the one preloaded into this python.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    harness = sorted(Path(sys.argv[2]).glob("harness/*.fuzz"))
    r = subprocess.run([str(fuzzer), *map(str, inputs + harness)], capture_output=True, text=True,
                       env=env)
    print(f"{'ok' if r.returncode == 0 else 'FAIL'}: mhc-fuzz replay: exit {r.returncode}",
          r.stderr[-2000:] if r.returncode else "")
print(f"{ok} of {len(inputs)} reproducers handled")
