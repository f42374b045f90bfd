#!/usr/bin/env python3
"""Compile time and peak memory of mhc's steps on models of growing depth.

For every model ``llama-<L>.mlir`` (bench/compile_time/export_deep_llama.py)
this runs, each as its own ``mhc-opt`` process under ``/usr/bin/time -v`` with
``--mlir-timing``:

  parse      mhc-opt model.mlir                                  (the baseline)
  rewrite    mhc-opt model.mlir --mhc-hyperconnect
  cpu        mhc-opt model.mlir --mhc-cpu-pipeline               (the original model)
  hc+cpu     mhc-opt model.mlir --mhc-hyperconnect --mhc-cpu-pipeline
  gpu        mhc-opt mhc-chain-<L>.mlir --mhc-gpu-pipeline=format=isa

The GPU pipeline compiles mhc ops only (a whole model's linalg stays on the
host and is not its job), so its input is generated here: the 2L mHC
sublayers of an L-layer model with the sublayer F left out (y = u), the
coefficients' parameters as arguments, n = 4, C = 256, 16 tokens.

and records the wall time of the whole process, its peak resident memory, and
the wall time of every pass (--mlir-timing). With ``--per-pass-memory`` the
``hc+cpu`` pipeline is also run one pass per process (bytecode in between), so
that each pass's own peak memory is known.

Results go to a JSON file and a Markdown table with the growth factor per
doubling of depth. A step that runs past ``--timeout`` or ``--max-rss-gb`` is
killed and recorded as such.

    python3 bench/compile_time/measure.py --mhc-opt build/bin/mhc-opt \
        --layers 2 4 8 16 32 64 128 256 --json bench/results/compile-time.json \
        --md bench/results/compile-time.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

STEPS = {
    "parse": [],
    "rewrite": ["--mhc-hyperconnect"],
    "cpu": ["--mhc-cpu-pipeline"],
    "hc+cpu": ["--mhc-hyperconnect", "--mhc-cpu-pipeline"],
    "gpu": ["--mhc-gpu-pipeline=format=isa"],  # input: mhc_chain(L)
}


def mhc_chain(layers, n=4, c=256, tokens=16):
    """The mhc ops of `layers` layers (2 sublayers each), F left out."""
    m = n * n + 2 * n
    x = f"tensor<{tokens}x{n}x{c}xf32>"
    args, body = [f"%h: tensor<{tokens}x{c}xf32>"], []
    body.append(f"    %x0 = mhc.expand %h, streams = {n} : "
                f"tensor<{tokens}x{c}xf32> -> {x}")
    for l in range(2 * layers):
        args += [f"%fn{l}: tensor<{m}x{n * c}xf32>", f"%scale{l}: tensor<3xf32>",
                 f"%base{l}: tensor<{m}xf32>"]
        body += [
            f"    %mix{l} = mhc.norm_project %x{l}, %fn{l} : {x}, "
            f"tensor<{m}x{n * c}xf32> -> tensor<{tokens}x{m}xf32>",
            f"    %pre{l}, %post{l}, %lg{l} = mhc.split_mixes %mix{l}, %scale{l}, "
            f"%base{l} : tensor<{tokens}x{m}xf32>, tensor<3xf32>, tensor<{m}xf32> "
            f"-> tensor<{tokens}x{n}xf32>, tensor<{tokens}x{n}xf32>, "
            f"tensor<{tokens}x{n}x{n}xf32>",
            f"    %comb{l} = mhc.sinkhorn %lg{l} : tensor<{tokens}x{n}x{n}xf32>",
            f"    %u{l} = mhc.pre_apply %x{l}, %pre{l} : {x}, "
            f"tensor<{tokens}x{n}xf32> -> tensor<{tokens}x{c}xf32>",
            f"    %x{l + 1} = mhc.post_res %u{l}, %x{l}, %post{l}, %comb{l} : "
            f"tensor<{tokens}x{c}xf32>, {x}, tensor<{tokens}x{n}xf32>, "
            f"tensor<{tokens}x{n}x{n}xf32> -> {x}"]
    last = 2 * layers
    body += [f"    %out = mhc.collapse %x{last} : {x} -> tensor<{tokens}x{c}xf32>",
             f"    return %out : tensor<{tokens}x{c}xf32>"]
    return ("module {\n  func.func @forward(" + ", ".join(args) +
            f") -> tensor<{tokens}x{c}xf32> {{\n" + "\n".join(body) + "\n  }\n}\n")


def run_measured(cmd, timeout, max_rss_gb):
    """Runs cmd under /usr/bin/time -v, killing it past timeout / max RSS.

    Returns dict(status, wall_s, peak_mb, stderr)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-v", "-o", tf.name, *cmd]
        start = time.time()
        proc = subprocess.Popen(full, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        status = "ok"
        err_chunks = []
        import threading

        reader = threading.Thread(
            target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
        reader.start()
        while proc.poll() is None:
            time.sleep(0.2)
            if time.time() - start > timeout:
                status = "timeout"
            elif _tree_rss_gb(proc.pid) > max_rss_gb:
                status = "memory"
            if status != "ok":
                _kill_tree(proc.pid)
                proc.wait()
                break
        reader.join()
        wall = time.time() - start
        stderr = "".join(err_chunks)
        tf.seek(0)
        report = tf.read()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
    peak_mb = int(m.group(1)) / 1024 if m else None
    if status == "ok" and proc.returncode != 0:
        status = f"exit {proc.returncode}"
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", report)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    cpu = sum(float(x) for x in re.findall(
        r"(?:User|System) time \(seconds\): ([\d.]+)", report))
    return {"status": status, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "peak_mb": round(peak_mb, 1) if peak_mb else None,
            "load": os.getloadavg()[0], "stderr": stderr}


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _tree_rss_gb(pid):
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total / 2**20


def _kill_tree(pid):
    for p in [*_children(pid), pid]:
        try:
            os.kill(p, 9)
        except OSError:
            pass


def parse_timing(stderr):
    """Pass name -> wall seconds from --mlir-timing (repeated passes summed;
    nested analyses, shown indented with '(A)', are skipped)."""
    passes = {}
    for line in stderr.splitlines():
        m = re.match(r"\s+(\d+\.\d+) \(\s*[\d.]+%\)\s+(\S.*)$", line)
        if not m or "(A)" in m.group(2):
            continue
        name = m.group(2).strip()
        passes[name] = round(passes.get(name, 0.0) + float(m.group(1)), 4)
    return passes


def count_ops(path):
    op = re.compile(r'^\s*(?:%[^=]+=\s*)?"?[a-z_]+\.[a-z_0-9.]+[\s"(<{]')
    with open(path) as f:
        return sum(1 for line in f if op.match(line))


def pipeline_passes(mhc_opt, pipeline_flag, sample):
    r = subprocess.run([mhc_opt, sample, pipeline_flag, "--dump-pass-pipeline",
                        "-o", os.devnull], capture_output=True, text=True)
    text = r.stderr[r.stderr.index("builtin.module(") + len("builtin.module("):]
    # Split the top-level comma list (options hold commas in braces).
    passes, depth, cur = [], 0, ""
    for ch in text:
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
            if depth < 0:
                break
        if ch == "," and depth == 0:
            passes.append(cur.strip())
            cur = ""
        else:
            cur += ch
    passes.append(cur.strip())
    return [p for p in passes if p]


def per_pass_memory(mhc_opt, model, passes, timeout, max_rss_gb, workdir):
    """Runs the pipeline one pass per process; returns [(pass, result)]."""
    cur = model
    out = []
    for i, p in enumerate(passes):
        nxt = os.path.join(workdir, f"stage{i}.mlirbc")
        res = run_measured([mhc_opt, cur, f"--pass-pipeline=builtin.module({p})",
                            "--emit-bytecode", "-o", nxt], timeout, max_rss_gb)
        res.pop("stderr")
        # The pass's name: options dropped, nesting kept (func.func(cse)).
        out.append((re.sub(r"\s+|\{[^}]*\}", "", p), res))
        if res["status"] != "ok":
            break
        if cur != model:
            os.remove(cur)
        cur = nxt
    return out


def growth(values):
    """value(L) / value(L/2) for each L with both known."""
    out = {}
    for layers, v in values.items():
        half = values.get(layers // 2)
        if v is not None and half:
            out[layers] = round(v / half, 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mhc-opt", default="build/bin/mhc-opt")
    ap.add_argument("--models-dir", type=Path, default=HERE / "models")
    ap.add_argument("--layers", type=int, nargs="+",
                    default=[2, 4, 8, 16, 32, 64, 128, 256])
    ap.add_argument("--steps", nargs="+", default=list(STEPS),
                    choices=list(STEPS))
    ap.add_argument("--per-pass-memory", type=int, nargs="*", default=[],
                    metavar="L", help="depths whose hc+cpu pipeline is also "
                    "run one pass per process")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each step this many times and keep the run with the "
                         "least CPU time (the machine is shared)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--max-rss-gb", type=float, default=14)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--label", default="", help="free text for the report")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only write --md from an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        results["models"] = {int(k): v for k, v in results["models"].items()}
        (args.md or args.render.with_suffix(".md")).write_text(markdown(results))
        return 0

    if not args.json:
        ap.error("--json is required")
    results = {"command": " ".join([sys.executable, *sys.argv]),
               "label": args.label, "date": time.strftime("%Y-%m-%d %H:%M"),
               "machine": f"{os.cpu_count()} cores", "models": {}}
    cpu_passes = None
    for layers in args.layers:
        model = str(args.models_dir / f"llama-{layers}.mlir")
        entry = {"ops": count_ops(model), "steps": {}}
        results["models"][layers] = entry
        with tempfile.TemporaryDirectory() as td:
            for step in args.steps:
                cmd = [args.mhc_opt, model, *STEPS[step], "--mlir-timing",
                       "-o", os.devnull]
                if step == "gpu":
                    cmd[1] = os.path.join(td, "chain.mlir")
                    Path(cmd[1]).write_text(mhc_chain(layers))
                runs = [run_measured(cmd, args.timeout, args.max_rss_gb)
                        for _ in range(args.repeat)]
                res = min(runs, key=lambda r: (r["status"] != "ok", r["cpu_s"]))
                res["cpu_s_runs"] = [r["cpu_s"] for r in runs]
                res["passes"] = parse_timing(res["stderr"])
                if res["status"] != "ok":
                    res["error"] = res["stderr"][-600:]
                res.pop("stderr")
                entry["steps"][step] = res
                print(f"L={layers:4d} ops={entry['ops']:6d} {step:8s} "
                      f"{res['status']:8s} wall {res['wall_s']:8.2f} s "
                      f"cpu {res['cpu_s']:8.2f} s {res['peak_mb'] or 0:7.0f} MB "
                      f"load {res['load']:.1f}", flush=True)
            if layers in args.per_pass_memory:
                if cpu_passes is None:
                    cpu_passes = pipeline_passes(args.mhc_opt,
                                                 "--mhc-cpu-pipeline", model)
                passes = ["mhc-hyperconnect", *cpu_passes]
                entry["per_pass"] = per_pass_memory(
                    args.mhc_opt, model, passes, args.timeout, args.max_rss_gb, td)
                for name, res in entry["per_pass"]:
                    print(f"    {name:40s} {res['status']:8s} "
                          f"cpu {res['cpu_s']:8.2f} s {res['peak_mb'] or 0:8.0f} MB",
                          flush=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.md:
        args.md.write_text(markdown(results))
    return 0


def markdown(results):
    models = results["models"]
    layers = sorted(models, key=int)
    steps = [s for s in STEPS if any(s in models[l]["steps"] for l in layers)]
    lines = [f"# Compile time by depth ({results['date']}, {results['machine']})",
             "", results["label"], "", "Command:", "", "```",
             results["command"], "```", ""]
    lines += ["Times are CPU seconds (user + system) of the whole mhc-opt process "
              "(parse and print included), from /usr/bin/time -v, the least of "
              "the repeated runs (all in the JSON); the machine is shared, so "
              "wall times (in the JSON) vary with its load. MB is the peak "
              "resident memory.", ""]
    head = "| layers | ops |"
    sep = "|---|---|"
    for s in steps:
        head += f" {s} s | {s} MB |"
        sep += "---|---|"
    lines += [head, sep]

    def cell(l, s, key):
        r = models[l]["steps"].get(s)
        if not r:
            return "–"
        if r["status"] != "ok":
            return r["status"]
        if r.get(key) is None:
            return "–"
        return f"{r[key]:.2f}" if key == "cpu_s" else f"{r[key]:.0f}"

    for l in layers:
        row = f"| {l} | {models[l]['ops']} |"
        for s in steps:
            row += f" {cell(l, s, 'cpu_s')} | {cell(l, s, 'peak_mb')} |"
        lines.append(row)
    lines += ["", "Growth per doubling of depth (value at L / value at L/2):", "",
              head, sep]
    for l in layers[1:]:
        row = f"| {l} | {models[l]['ops'] / models.get(l // 2, models[l])['ops']:.2f} |"
        for s in steps:
            vals = []
            for key in ("cpu_s", "peak_mb"):
                r, h = models[l]["steps"].get(s), models.get(l // 2, {}).get("steps", {}).get(s)
                ok = (r and h and r["status"] == "ok" and h["status"] == "ok"
                      and r.get(key) is not None and h.get(key))
                vals.append(f"{r[key] / h[key]:.2f}" if ok else "–")
            row += f" {vals[0]} | {vals[1]} |"
        lines.append(row)
    # The passes that matter: the largest five at the deepest completed run.
    for s in ("rewrite", "hc+cpu", "gpu"):
        done = [l for l in layers if s in models[l]["steps"]
                and models[l]["steps"][s]["status"] == "ok"]
        if not done:
            continue
        top = models[done[-1]]["steps"][s]["passes"]
        names = [n for n, _ in sorted(top.items(), key=lambda kv: -kv[1])
                 if n not in ("Total", "Rest")][:6]
        lines += ["", f"`{s}`: share of the process's wall time taken by its "
                  f"slowest passes, times its CPU seconds (--mlir-timing reports "
                  f"wall time only; repeated passes summed):", "",
                  "| layers | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for l in done:
            r = models[l]["steps"][s]
            p = r["passes"]
            scale = r.get("cpu_s", r["wall_s"]) / max(p.get("Total", 1e-9), 1e-9)
            lines.append(f"| {l} | " + " | ".join(f"{p.get(n, 0) * scale:.3f}"
                                                   for n in names) + " |")
    for l in layers:
        pp = models[l].get("per_pass")
        if not pp:
            continue
        lines += ["", f"Per-pass processes at {l} layers (`--mhc-hyperconnect` "
                  "then `--mhc-cpu-pipeline`, one pass per process, bytecode in "
                  "between; peak RSS includes holding the IR):", "",
                  "| pass | CPU s | peak MB |", "|---|---|---|"]
        for name, r in pp:
            lines.append(f"| {name} | {r.get('cpu_s', '–') if r['status'] == 'ok' else r['status']}"
                         f" | {r['peak_mb'] or 0:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
