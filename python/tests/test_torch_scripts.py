"""The H200 scripts in their --smoke form (tiny sizes, CPU): they run end to end and write what
the lead's runs will be read from."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args, timeout=600, returncode=0):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_block_bench_smoke(tmp_path):
    out = tmp_path / "block.json"
    text = run("bench/block_bench.py", "--smoke", "--json", str(out), "--peers",
               str(tmp_path / "no-peers-here"))
    result = json.loads(out.read_text())
    rows = {(r["variant"], r["mode"]): r for r in result["rows"]}
    for variant in ("plain", "mhc", "mhc_recompute"):
        assert rows[(variant, "eager")]["ms"] > 0, rows[(variant, "eager")]
    assert rows[("mhc", "eager")]["overhead_pct"] != 0
    # A peer that cannot load is recorded, not fatal.
    assert "not found" in rows[("te_triton", "eager")]["error"]
    table = text[text.index("block fwd+bwd"):].splitlines()      # the table is printed last
    assert table[1].split()[:3] == ["C", "mode", "variant"] and len(table) == 2 + len(rows)


def test_block_bench_interleaved_smoke(tmp_path):
    out = tmp_path / "block.json"
    run("bench/block_bench.py", "--smoke", "--json", str(out), "--peers", "none",
        "--providers", "", "--interleave", "3")
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["plain", "mhc", "mhc_recompute"]
    for r in rows:     # every variant timed in each of the 3 rounds
        assert len(r["ms_rounds"]) == 3 and r["ms"] > 0 and "interleaved" in r["timer"], r
    # one whole pair of rounds (forward + backward order); the plain block has none
    assert "overhead_pairs_pct" not in rows[0]
    assert all(len(r["overhead_pairs_pct"]) == 1 for r in rows[1:])
    assert all("overhead_after_round0_pct" in r for r in rows[1:])


@pytest.mark.parametrize("flag, variant, leaves_lost", [("--norm-free", "mhc_norm_free", 2),
                                                        ("--fused-norm", "mhc_fused_norm", 0)])
def test_block_bench_norm_variants_smoke(tmp_path, flag, variant, leaves_lost):
    """--norm-free adds the mHC block without its sublayers' norms: a different step (fewer
    kernels, the two norms' weights get no gradient), timed like the others; --fused-norm the
    mHC block with its sublayers' norms given to the HyperConnections (HyperConnection(norm=...)):
    the same model and leaves as mhc's, every one with a gradient."""
    out = tmp_path / "block.json"
    run("bench/block_bench.py", "--smoke", "--json", str(out), "--peers", "none",
        "--providers", "", flag)
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["plain", "mhc", "mhc_recompute", variant]
    assert rows[-1]["ms"] > 0, rows
    assert rows[-1]["leaves_with_grad"] == rows[1]["leaves_with_grad"] - leaves_lost, rows
    assert rows[-1]["leaves"] == rows[1]["leaves"], rows


def test_block_bench_round_pairs():
    """The per-pair overhead sums a forward-order and a backward-order round, so a zig-zag from
    the variants' order cancels; an odd last round is left out."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("block_bench", REPO / "bench" / "block_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pairs = bench.round_pair_overheads([11.0, 9.5, 11.5, 9.0, 50.0], [10.0, 9.0, 10.0, 10.0, 1.0])
    assert pairs == pytest.approx([(20.5 / 19 - 1) * 100, (20.5 / 20 - 1) * 100])
    assert bench.round_pair_overheads([1.0], [1.0]) is None
    assert bench.round_pair_overheads([1.0, 2.0], [1.0]) is None


def test_block_bench_steady_overhead():
    """The overhead without round 0 is the ratio of the later rounds' medians: a first round that
    favours one side (the plain block timed first on a cool GPU) does not move it."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("block_bench", REPO / "bench" / "block_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    steady = bench.steady_overhead([10.7, 10.6, 10.8, 10.5], [9.0, 10.0, 10.0, 9.9])
    assert steady == pytest.approx((10.6 / 10.0 - 1) * 100)
    assert bench.steady_overhead([1.0], [1.0]) is None
    assert bench.steady_overhead([1.0, 2.0], [1.0]) is None


def test_block_bench_round_warmup_is_recorded(tmp_path):
    out = tmp_path / "block.json"
    run("bench/block_bench.py", "--smoke", "--json", str(out), "--peers", "none",
        "--providers", "", "--interleave", "2", "--round-warmup", "3")
    rows = json.loads(out.read_text())["rows"]
    assert all("after 3 untimed" in r["timer"] and len(r["ms_rounds"]) == 2 for r in rows), rows


def test_round_bias_reads_the_switch(tmp_path):
    """round_bias.py on made-up rounds: plain 10 ms after itself (even rounds after the first)
    and 12 after mhc (odd ones), mhc 11 after plain and 11.5 after mhc_recompute -- 0% over the
    second half's rounds, yet 15% each after (the equivalent of) itself."""
    result = {"blocks": 1, "rows": [
        {"variant": v, "mode": "compile", "C": 64, "ms_rounds": rounds}
        for v, rounds in (("plain", [8.0, 12.0, 10.0, 12.0, 10.0, 12.0]),
                          ("mhc", [11.0, 11.5] * 3), ("mhc_recompute", [11.0] * 6))]}
    good, other = tmp_path / "good.json", tmp_path / "other.json"
    good.write_text(json.dumps(result))
    text = run("bench/round_bias.py", str(good))
    cells = text.splitlines()[1].split()
    assert cells[1:4] == ["64", "1", f"{(67.5 / 64 - 1) * 100:.2f}"], text
    assert cells[4:7] == ["10.00", "/", "12.00"], text
    assert cells[7:] == ["0.00", "15.00"], text       # late: rounds 3-5; steady: 11.5 over 10
    result["rows"].reverse()                         # mhc no longer in the middle
    other.write_text(json.dumps(result))
    run("bench/round_bias.py", str(other), returncode=1)


def test_stability_study_smoke_and_plots(tmp_path):
    out = tmp_path / "stability.json"
    run("examples/stability_study.py", "--smoke", "--json", str(out))
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"baseline", "hc", "mhc"}
    first = {v: r["train"][0]["loss"] for v, r in result["variants"].items()}
    # Same seed, sublayer weights and first batch: the variants start from nearly the same loss.
    assert max(first.values()) - min(first.values()) < 0.1, first
    for v in ("hc", "mhc"):
        g = result["variants"][v]["eval"][-1]["gains"]
        assert len(g["single_forward"]) == 4 and len(g["composite_backward"]) == 4   # 2 blocks x 2
    mhc_gains = result["variants"]["mhc"]["eval"][-1]["gains"]
    # Doubly stochastic comb: every column sums to 1 (the last Sinkhorn step), so the max
    # absolute row sum of H_res = comb^T is 1 up to the Sinkhorn eps.
    assert all(abs(v - 1) < 1e-3 for v in mhc_gains["single_forward"])
    text = run("examples/plot_stability.py", str(out), "--out", str(tmp_path / "plots"))
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "plots" / "gains.png").stat().st_size > 0
    except ImportError:
        assert "matplotlib is not installed" in text


def test_stability_schedule_covers_each_run():
    """The learning-rate factor over a run's progress (its steps, or its time under --minutes):
    a linear warm-up over the first 5% to the peak, then a cosine down to 0 at the end."""
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from stability_study import lr_factor
    finally:
        sys.path.remove(str(REPO / "examples"))
    assert 0 < lr_factor(0.0) < 0.05
    assert abs(lr_factor(0.025) - 0.52) < 0.01                   # half way through the warm-up
    assert abs(lr_factor(0.05) - 1.0) < 0.01                     # the peak
    assert abs(lr_factor(0.5) - 0.5) < 1e-9 and lr_factor(1.0) < 1e-12
    after = [lr_factor(p / 100) for p in range(5, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))       # only down after the warm-up


def test_check_torch_backend_smoke(tmp_path):
    out = tmp_path / "check.json"
    run("bench/check_torch_backend.py", "--smoke", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["ok"] and len(result["results"]) == 2
    checks = result["results"][0]["checks"]
    assert "hc_pre_backward[0]" in checks and "module_recompute.dfn" in checks


def test_check_fold_dy_smoke(tmp_path):
    """The compiled stack's fold check (mhc's pass without Inductor) on the CPU: with the fold and
    without, bit-identical, and the backward graphs hold the ops the fold should leave."""
    out = tmp_path / "fold.json"
    text = run("bench/check_fold_dy.py", "--smoke", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["ok"] and result["compiler"] == "passes", text[-2000:]
    assert result["deterministic"] and result["repeat_differing_leaves"] == []
    assert result["calls_fold"]["hc_joint_backward_lower"] == 2
    assert result["calls_no_fold"] == {"hc_post_backward": 4, "hc_pre_backward": 4}


def test_check_fold_dy_names_a_nondeterministic_block(tmp_path):
    """A block whose gradient changes from step to step (as flash attention's atomic dq does on
    a GPU) fails the check, and the report names it as the block's own nondeterminism (two steps
    of one compile differ), not the fold's. The noise is a hook on leaf 1's gradient."""
    out = tmp_path / "fold.json"
    script = f"""
import sys, torch
sys.path.insert(0, "bench")
import check_fold_dy
real_stack = check_fold_dy.stack
def noisy_stack(*args):
    f, x, grad, leaves = real_stack(*args)
    leaves[1].register_hook(lambda g: g + torch.rand_like(g) * 1e-6)
    return f, x, grad, leaves
check_fold_dy.stack = noisy_stack
sys.exit(check_fold_dy.main(["--smoke", "--json", {str(out)!r}]))
"""
    text = run("-c", script, returncode=1)
    result = json.loads(out.read_text())
    assert result["repeat_differing_leaves"] == [1] and result["differing_leaves"] == [1]
    assert "the block's own nondeterminism" in text


def test_torch_compile_depth(tmp_path):
    """The whole example model compiled at four blocks: no implicit fallback for the mhc ops
    (inductor_fallbacks), compiled equal to eager within float rounding."""
    text = run("bench/torch_compile_depth.py", "--blocks", "4")
    line = next(t for t in text.splitlines() if t.startswith("4 blocks"))
    assert "implicit-fallback messages 0," in line
    assert float(line.rsplit(" ", 1)[1]) < 1e-4


def test_check_torch_compile_smoke(tmp_path):
    out = tmp_path / "compile.json"
    run("bench/check_torch_compile.py", "--smoke", "--recompute", "0", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["ok"] and len(result["rows"]) == 1
    row = result["rows"][0]
    # Every leaf (stream input, mHC parameters, sublayer weights) has a gradient on both sides.
    assert row["leaves"] == len(row["grads"]) >= 10
    assert all("err" in g for g in row["grads"])


def test_compare_kernel_sets_needs_common_sets(tmp_path):
    """The bit-identity check of two kernel caches (GPU only) refuses caches with no kernel set
    in common instead of reporting '0 results differ'."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proc = subprocess.run([sys.executable, "bench/compare_kernel_sets.py", "--a", str(tmp_path / "a"),
                           "--b", str(tmp_path / "b"), "--json", str(tmp_path / "out.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no kernel set is in both caches" in proc.stderr
    assert not (tmp_path / "out.json").exists()
