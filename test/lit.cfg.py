# -*- Python -*-
import os
import shutil
import subprocess

import lit.formats
from lit.llvm import llvm_config
from lit.llvm.subst import ToolSubst

config.name = "MHC"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".py", ".c"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.mhc_obj_root, "test")
# Inputs/ holds data for tests, not tests.
config.excludes = ["Inputs", "harness", "CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py",
                   "make_corpus.py"]

config.substitutions.append(("%PATH%", config.environment["PATH"]))
config.substitutions.append(("%mlir_lib_dir", config.mlir_lib_dir))
config.substitutions.append(("%mhc_lib_dir", config.mhc_lib_dir))
# The mlir-opt plugin (tools/mhc-plugin), for tests through stock mlir-opt.
config.substitutions.append(
    ("%mhc_plugin", os.path.join(config.mhc_lib_dir, "MHCPlugin.so")))
config.substitutions.append(("%mhc_src_root", config.mhc_src_root))
config.substitutions.append(("%mhc_tools_dir", config.mhc_tools_dir))
config.substitutions.append(
    ("%python", ("env LD_PRELOAD=" + config.asan_runtime +
                 " ASAN_OPTIONS=detect_leaks=0 " if config.mhc_sanitize else "")
     + config.python_executable))
config.substitutions.append(
    ("%runner_utils",
     os.path.join(config.mlir_lib_dir, "libmlir_runner_utils.so")))
config.substitutions.append(
    ("%c_runner_utils",
     os.path.join(config.mlir_lib_dir, "libmlir_c_runner_utils.so")))

llvm_config.with_system_environment(["HOME", "INCLUDE", "LIB", "TMP", "TEMP"])
llvm_config.use_default_substitutions()

# %clang builds helper libraries; %clang_exe builds test programs that link
# the runtime libraries (instrumented like them in the sanitizer build).
sanitize_flags = ""
if config.mhc_sanitize:
    sanitize_flags = (" -fsanitize=address,undefined -fno-sanitize-recover=all"
                      " -shared-libsan -Wl,-rpath," +
                      os.path.dirname(config.asan_runtime))
config.substitutions.append(("%clang_exe", config.clang + sanitize_flags))
config.substitutions.append(("%clang", config.clang))

# Tests run the tools we just built, then the LLVM tools (mlir-runner, ...).
tool_dirs = [config.mhc_tools_dir, config.llvm_tools_dir]
tools = ["mhc-opt", "mhc-capi-test", "mlir-translate"]
llvm_config.add_tool_substitutions(tools, tool_dirs)
# In the sanitizer build, the uninstrumented hosts of mhc's instrumented code
# -- mlir-runner (runtime libraries), stock mlir-opt (the plugin) and python
# -- get the sanitizer runtime preloaded, without leak checks (Python's and
# the JIT's leaks are not ours). Each becomes a one-word wrapper script, so
# that tests can pass it on as an argument.
for host in ("mlir-runner", "mlir-opt"):
    path = os.path.join(config.llvm_tools_dir, host)
    if config.mhc_sanitize:
        wrapper = os.path.join(config.mhc_obj_root, "test", host + "-asan")
        os.makedirs(os.path.dirname(wrapper), exist_ok=True)
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\nLD_PRELOAD=%s ASAN_OPTIONS=detect_leaks=0 "
                    "exec %s \"$@\"\n" % (config.asan_runtime, path))
        os.chmod(wrapper, 0o755)
        path = wrapper
    config.substitutions.append((r"(?<![-/\w])%s\b" % host, path))
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.with_environment("PYTHONPATH",
                             os.path.join(config.mhc_src_root, "python"),
                             append_path=True)

# GPU execution tests need a visible CUDA device; compilation tests do not.
def _has_cuda_device():
    if os.environ.get("MHC_FORCE_NO_CUDA"):
        return False
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True,
                             timeout=20)
    except Exception:
        return False
    return out.returncode == 0 and "GPU" in out.stdout

if _has_cuda_device():
    config.available_features.add("cuda")
if os.path.exists(os.path.join(config.cuda_home, "bin", "ptxas")):
    config.available_features.add("ptxas")
# numpy is installed by scripts/install-deps.sh; the feature lets a partial
# set-up skip the numerical checks instead of failing them.
if subprocess.run([config.python_executable, "-c", "import numpy"],
                  capture_output=True).returncode == 0:
    config.available_features.add("numpy")
