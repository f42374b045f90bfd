"""The cuda backend's kernel cache and launcher, on the CPU: key and folder layout, manifest
validation, loading without mhc-opt, building through the compiler hook, and the executor
launching a hand-written manifest through libmhc_runtime_mock.so's mhcLaunchFlat (which packs the
kernel parameters like the real runtime and logs what each kernel would receive)."""

import ctypes
import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

import mhc.torch  # noqa: F401
from mhc import compiler
from mhc.torch import build_cache, kernels
from mhc.torch.kernels import KernelKey, KernelSet, ManifestError, KernelsMissing

REPO = Path(__file__).resolve().parents[2]
N, C = 4, 64
KEY = KernelKey(n=N, C=C, dtype="bf16", chip="sm_90")


def mock_library() -> Path:
    build = os.environ.get("MHC_BUILD_DIR")
    candidates = ([Path(build) / "lib"] if build else []) + sorted(REPO.glob("build*/lib"))
    for c in candidates:
        if (c / "libmhc_runtime_mock.so").is_file():
            return c / "libmhc_runtime_mock.so"
    raise AssertionError("libmhc_runtime_mock.so is not built: run scripts/build.sh")


@pytest.fixture(scope="module")
def mock():
    os.environ["MHC_MOCK_QUIET"] = "1"
    return kernels.load_runtime(mock_library())


@pytest.fixture(params=["python", "native"])
def launch_path(request):
    """Both launch paths of KernelSet.run: ctypes from Python (_OpPlan) and C++ (mhc.torch.native,
    which must build here: CI has a C++ compiler)."""
    if request.param == "native":
        from mhc.torch import native
        assert native.load() is not None, f"the C++ launch path did not build: {native.failure()}"
    return request.param


def open_set(folder, mock, launch_path, manifest=None):
    ks = KernelSet(write_set(folder, manifest), KEY, runtime=mock)
    if launch_path == "python":
        ks._native = False
    return ks


def hand_manifest(key=KEY):
    """What the compiler side is expected to write: two pre kernels with a per-block scratch, one
    post kernel, and backward kernels that accumulate parameter gradients into zeroed buffers."""
    return {
        "schema": kernels.SCHEMA,
        "key": key.as_dict(),
        "cubin": "kernels.cubin",
        "provenance": {"note": "hand-written for tests"},
        "ops": {
            "hc_pre": {
                "scratch": {"sqrsum": {"shape": ["T"], "dtype": "f32"}},
                "launches": [
                    {"kernel": "pre_norm", "block": [128, 1, 1], "grid": {"tokens_per_block": 32},
                     "smem": 0, "buffers": ["x", "fn", "mix", "sqrsum"]},
                    {"kernel": "pre_apply", "block": [256, 1, 1],
                     "grid": {"tokens_per_block": 64, "y": 2, "z": 1}, "smem": 0,
                     "buffers": ["mix", "scale", "base", "x", "post", "comb", "u"]}]},
            "hc_post": {
                "launches": [
                    {"kernel": "post", "block": [128, 1, 1], "grid": {"tokens_per_block": 32},
                     "smem": 65536, "buffers": ["y", "x", "post", "comb", "x_next"]}]},
            "hc_post_backward": {
                "launches": [
                    {"kernel": "post_bwd", "block": [256, 1, 1], "grid": {"tokens_per_block": 16},
                     "buffers": ["y", "x", "post", "comb", "dx_next", "dy", "dpost", "dcomb"]}]},
            "hc_pre_backward": {
                "scratch": {"dfn_partial": {"shape": ["blocks:32", "M", "nC"], "dtype": "f32"},
                            "dmix": {"shape": ["T", "M"], "dtype": "f32"}},
                "zero": ["dscale", "dbase"],
                "launches": [
                    {"kernel": "pre_bwd_coef", "block": [256, 1, 1], "grid": {"tokens_per_block": 256},
                     "buffers": ["mix", "scale", "base", "x", "du", "dpost", "dcomb", "dmix",
                                 "dscale", "dbase"]},
                    {"kernel": "pre_bwd_dx", "block": [128, 1, 1], "grid": {"tokens_per_block": 32},
                     "buffers": ["x", "fn", "mix", "dmix", "du", "dx_next", "scale", "base", "dx",
                                 "dfn_partial"]},
                    {"kernel": "pre_bwd_dfn", "block": [256, 1, 1], "grid": {"x": 24, "y": 8},
                     "buffers": ["dfn_partial", "dfn"]}]},
        },
    }


def write_set(folder: Path, manifest=None, cubin=b"\x7fELF not a real cubin"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest or hand_manifest()))
    if cubin is not None:
        (folder / "kernels.cubin").write_bytes(cubin)
    return folder


def inputs(T=100, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    M = N * N + 2 * N
    x = torch.randn(T, N, C, generator=g).to(dtype)
    fn = torch.randn(M, N * C, generator=g) * 0.1
    scale, base = torch.rand(3, generator=g), torch.randn(M, generator=g)
    return x, fn, scale, base


LAUNCH = re.compile(r"mhcLaunchFlat\((\w+), grid \((\d+),(\d+),(\d+)\), block \((\d+),(\d+),(\d+)\), "
                    r"smem (\d+), ([\w-]+), (\d+) params\) T=(\d+) buffers \[(.*)\]")


def launches(rt):
    out = []
    for line in rt.mock_log().splitlines():
        m = LAUNCH.search(line)
        if m:
            bufs = [b.split(":") for b in m.group(12).split(", ")] if m.group(12) else []
            out.append(dict(kernel=m.group(1), grid=tuple(map(int, m.group(2, 3, 4))),
                            block=tuple(map(int, m.group(5, 6, 7))), smem=int(m.group(8)),
                            params=int(m.group(10)), T=int(m.group(11)),
                            buffers=[(int(p, 16), int(nb.split()[0])) for p, nb in bufs],
                            bad=any("BAD" in nb for _, nb in bufs)))
    return out


# ------------------------------------------------------------------------------------------------

def test_key_and_folder_layout(tmp_path):
    assert KEY.folder(tmp_path) == tmp_path / mhc_version() / "sm_90" / "n4-C64-bf16-r20-eps1e-06-pre1e-06-pm2"
    assert KernelKey(4, 64, torch.bfloat16) == KernelKey(4, 64, "bfloat16") == KEY
    assert KernelKey(4, 64, "f32", iterations=10).folder_name() == "n4-C64-f32-r10-eps1e-06-pre1e-06-pm2"
    assert KernelKey.from_dict(KEY.as_dict()) == KEY
    with pytest.raises(ValueError, match="bf16, f16 and f32"):
        KernelKey(4, 64, "f64")
    with pytest.raises(ValueError, match="sm_90"):
        KernelKey(4, 64, "bf16", chip="hopper")


def mhc_version():
    import mhc
    return mhc.__version__


@pytest.mark.parametrize("op", list(kernels.OP_BUFFERS))
def test_random_arguments_fit_each_op(op):
    """random_arguments gives each op's buffers in their layout's shape and dtype, coefficients
    in [0, 1), fn scaled, and the same values for the same seed."""
    n, C, T = 3, 10, 5
    args = kernels.random_arguments(op, T, n, C, torch.Generator().manual_seed(1),
                                    act_dtype=torch.bfloat16, fn_scale=0.01)
    names = kernels.OP_BUFFERS[op][0]
    assert len(args) == len(names)
    for name, t in zip(names, args):
        assert tuple(t.shape) == tuple(kernels.buffer_shape(name, (T,), n, C)), name
        assert t.dtype == (torch.bfloat16 if kernels.BUFFER_LAYOUT[name][1] == "A"
                           else torch.float32), name
        if name in ("post", "comb", "scale", "post_lower"):
            assert 0 <= t.min() and t.max() < 1, name
        if name in ("fn", "fn_next"):
            assert t.abs().max() < 0.1, name
    again = kernels.random_arguments(op, T, n, C, torch.Generator().manual_seed(1),
                                     act_dtype=torch.bfloat16, fn_scale=0.01)
    assert all(torch.equal(a, b) for a, b in zip(args, again))


def test_valid_manifest_passes(tmp_path):
    write_set(tmp_path)
    assert kernels.load_manifest(tmp_path, KEY)["key"] == KEY.as_dict()


def _broken(edit):
    m = hand_manifest()
    edit(m)
    return m


BROKEN = [
    ("schema", lambda m: m.update(schema="mhc.torch.kernels/0"), "schema"),
    ("key mismatch", lambda m: m["key"].update(C=128), "expected"),
    ("unknown key field", lambda m: m["key"].update(colour=1), "unknown fields"),
    ("unknown op", lambda m: m["ops"].update(hc_mid=m["ops"]["hc_post"]), "unknown op"),
    ("unknown buffer", lambda m: m["ops"]["hc_post"]["launches"][0]["buffers"].append("z"), "'z' is not"),
    ("result never written",
     lambda m: m["ops"]["hc_post"]["launches"][0]["buffers"].remove("x_next"), "not passed to any"),
    ("grid both", lambda m: m["ops"]["hc_post"]["launches"][0]["grid"].update(x=3), "exactly one"),
    ("grid none", lambda m: m["ops"]["hc_post"]["launches"][0].update(grid={"y": 1}), "exactly one"),
    ("block too big", lambda m: m["ops"]["hc_post"]["launches"][0].update(block=[1024, 2, 1]), "1024"),
    ("scratch symbol", lambda m: m["ops"]["hc_pre"]["scratch"]["sqrsum"].update(shape=["K"]), "blocks:K"),
    ("scratch dtype", lambda m: m["ops"]["hc_pre"]["scratch"]["sqrsum"].update(dtype="f8"), "dtype"),
    ("scratch named like a result", lambda m: m["ops"]["hc_pre"]["scratch"].update(
        u={"shape": ["T"], "dtype": "f32"}), "name of an argument"),
    ("zero an input", lambda m: m["ops"]["hc_pre_backward"].update(zero=["x"]), "zero must list"),
    ("smem", lambda m: m["ops"]["hc_post"]["launches"][0].update(smem=-1), "out of range"),
    ("no launches", lambda m: m["ops"]["hc_post"].update(launches=[]), "non-empty"),
    ("cubin path", lambda m: m.update(cubin="../x.cubin"), "file name"),
    ("few_tokens without max_T", lambda m: m["ops"]["hc_post"].update(
        few_tokens={"launches": m["ops"]["hc_post"]["launches"]}), "few_tokens.max_T: expected an integer"),
    ("few_tokens max_T 0", lambda m: m["ops"]["hc_post"].update(
        few_tokens={"max_T": 0, "launches": m["ops"]["hc_post"]["launches"]}), "out of range"),
    ("few_tokens nested", lambda m: m["ops"]["hc_post"].update(few_tokens={
        "max_T": 8, "launches": m["ops"]["hc_post"]["launches"],
        "few_tokens": {"max_T": 4, "launches": m["ops"]["hc_post"]["launches"]}}), "unknown fields"),
    ("few_tokens bad launch", lambda m: m["ops"]["hc_post"].update(few_tokens={
        "max_T": 8, "launches": [{**m["ops"]["hc_post"]["launches"][0], "buffers": ["y"]}]}),
     "not passed to any"),
]


@pytest.mark.parametrize("what,edit,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_manifest_is_rejected(tmp_path, what, edit, message):
    write_set(tmp_path, _broken(edit))
    with pytest.raises(ManifestError, match=message):
        kernels.load_manifest(tmp_path, KEY)


def test_missing_cubin_and_manifest(tmp_path):
    write_set(tmp_path, cubin=None)
    with pytest.raises(ManifestError, match="missing or empty"):
        kernels.load_manifest(tmp_path, KEY)
    with pytest.raises(KernelsMissing, match="no manifest.json"):
        kernels.load_manifest(tmp_path / "nothing")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        kernels.load_manifest(tmp_path)


def test_executor_hc_pre_launches(tmp_path, mock, launch_path):
    ks = open_set(tmp_path, mock, launch_path)
    x, fn, scale, base = inputs(T=100)
    mock.mock_clear_log()
    u, post, comb, mix = ks.run("hc_pre", x, fn, scale, base, 20, 1e-6, 1e-6, 2.0)
    assert (u.shape, u.dtype, post.shape, comb.shape, mix.shape) == \
        ((100, C), torch.bfloat16, (100, N), (100, N, N), (100, 24))
    (a, b) = launches(mock)
    assert a["kernel"] == "pre_norm" and a["grid"] == (4, 1, 1) and a["block"] == (128, 1, 1)
    assert b["kernel"] == "pre_apply" and b["grid"] == (2, 2, 1) and b["block"] == (256, 1, 1)
    assert a["T"] == b["T"] == 100 and not a["bad"] and not b["bad"]
    assert a["params"] == 1 + 5 * 4 and b["params"] == 1 + 5 * 7
    ptr = lambda t: (t.data_ptr(), t.numel())   # noqa: E731
    assert a["buffers"][:3] == [ptr(x), ptr(fn), ptr(mix)]
    assert a["buffers"][3][1] == 100                      # scratch sqrsum [T] f32
    assert b["buffers"] == [ptr(mix), ptr(scale), ptr(base), ptr(x), ptr(post), ptr(comb), ptr(u)]


def test_executor_backward_zero_fill_scratch_and_fixed_grid(tmp_path, mock, launch_path):
    ks = open_set(tmp_path, mock, launch_path)
    T = 70
    x, fn, scale, base = inputs(T)
    mix = torch.randn(T, 24)
    du, dpost, dcomb = torch.randn(T, C).bfloat16(), torch.randn(T, N), torch.randn(T, N, N)
    dx_next = torch.randn(T, N, C).bfloat16()
    mock.mock_clear_log()
    dx, dfn, dscale, dbase = ks.run("hc_pre_backward", x, fn, scale, base, mix, du, dpost, dcomb,
                                    dx_next, 20, 1e-6, 1e-6, 2.0)
    assert torch.equal(dscale, torch.zeros(3)) and torch.equal(dbase, torch.zeros(24))  # zero-filled
    coef, dxk, red = launches(mock)
    assert coef["grid"] == (1, 1, 1) and dxk["grid"] == (3, 1, 1) and red["grid"] == (24, 8, 1)
    partial = dxk["buffers"][-1]
    assert partial[1] == 3 * 24 * N * C                   # blocks:32 x M x nC
    assert red["buffers"] == [partial, (dfn.data_ptr(), dfn.numel())]
    assert dxk["buffers"][8] == (dx.data_ptr(), dx.numel())
    assert coef["buffers"][7][1] == T * 24                 # dmix scratch [T, M]


def test_executor_zero_tokens_and_post(tmp_path, mock, launch_path):
    ks = open_set(tmp_path, mock, launch_path)
    x, fn, scale, base = inputs(T=0)
    mock.mock_clear_log()
    u, post, comb, mix = ks.run("hc_pre", x, fn, scale, base, 20, 1e-6, 1e-6, 2.0)
    assert u.shape == (0, C)
    assert [l["grid"][0] for l in launches(mock)] == [1, 1] and launches(mock)[0]["T"] == 0
    x, fn, scale, base = inputs(T=33)
    y = torch.randn(33, C).bfloat16()
    post, comb = torch.rand(33, N), torch.rand(33, N, N)
    mock.mock_clear_log()
    (x_next,) = ks.run("hc_post", y, x, post, comb)
    (p,) = launches(mock)
    assert p["smem"] == 65536 and p["grid"] == (2, 1, 1)
    assert p["buffers"][-1] == (x_next.data_ptr(), x_next.numel()) and x_next.shape == x.shape


def test_executor_few_tokens_variant(tmp_path, mock, launch_path):
    """An op's few_tokens variant runs for T <= max_T (T = 0 included), the op itself above."""
    m = hand_manifest()
    few = {"kernel": "post_few", "block": [256, 1, 1], "grid": {"tokens_per_block": 16},
           "buffers": ["y", "x", "post", "comb", "x_next"]}
    m["ops"]["hc_post"]["few_tokens"] = {"max_T": 64, "launches": [few]}
    ks = open_set(tmp_path, mock, launch_path, m)
    for T, kernel, grid in ((0, "post_few", 1), (33, "post_few", 3), (64, "post_few", 4),
                            (65, "post", 3)):
        x, fn, scale, base = inputs(T)
        y, post, comb = torch.randn(T, C).bfloat16(), torch.rand(T, N), torch.rand(T, N, N)
        mock.mock_clear_log()
        (x_next,) = ks.run("hc_post", y, x, post, comb)
        (p,) = launches(mock)
        assert (p["kernel"], p["grid"][0], p["T"]) == (kernel, grid, T)
        assert p["buffers"][-1] == (x_next.data_ptr(), x_next.numel()) and x_next.shape == x.shape


def test_op_missing_from_the_set(tmp_path, mock, launch_path):
    m = hand_manifest()
    del m["ops"]["hc_pre_backward"]
    ks = open_set(tmp_path, mock, launch_path, m)
    with pytest.raises(KernelsMissing, match="no kernels for hc_pre_backward"):
        ks.run("hc_pre_backward")


def test_launch_error_becomes_an_exception(tmp_path, mock, launch_path):
    ks = open_set(tmp_path, mock, launch_path)
    plan = ks.plans["hc_post"]
    good = plan.launches[0]
    plan.launches[0] = (12345,) + good[1:]                 # a function handle the runtime never gave
    x, fn, scale, base = inputs(T=8)
    y, post, comb = torch.randn(8, C).bfloat16(), torch.rand(8, N), torch.rand(8, N, N)
    with pytest.raises(RuntimeError, match="mhc::hc_post: kernel launch failed: .*unknown function"):
        ks.run("hc_post", y, x, post, comb)
    plan.launches[0] = good
    if launch_path == "native":
        ks._native = None                                 # registers the plans again
    ks.run("hc_post", y, x, post, comb)                   # the error was cleared: works again


def test_kernel_set_lookup_without_compiler(tmp_path, mock, monkeypatch):
    monkeypatch.setenv("MHC_CACHE", str(tmp_path))
    monkeypatch.setenv("MHC_RUNTIME_LIB", str(mock_library()))
    monkeypatch.setattr(kernels, "_compiler_function", lambda: None)     # like the GPU machine
    monkeypatch.setattr(compiler, "mhc_opt", lambda: (_ for _ in ()).throw(AssertionError("mhc-opt")))
    kernels._LOADED.clear(), kernels._BY_CALL.clear()
    with pytest.raises(KernelsMissing, match="python -m mhc.torch.build_cache --n 4 --C 64"):
        kernels.kernel_set(KEY)
    write_set(KEY.folder(tmp_path))
    ks = kernels.kernel_set(KEY)
    assert kernels.kernel_set(KEY) is ks and set(ks.plans) == set(hand_manifest()["ops"])
    kernels._LOADED.clear(), kernels._BY_CALL.clear()


def fake_compiler(manifest_edit=None):
    calls = []

    def compile_torch_kernels(key, out_dir):
        calls.append(key)
        m = hand_manifest(KernelKey.from_dict(key))
        if manifest_edit:
            manifest_edit(m)
        write_set(Path(out_dir), m)
    return compile_torch_kernels, calls


def test_build_and_carry(tmp_path, mock, monkeypatch):
    """build_cache on 'the MLIR machine' (a fake compiler hook), then load from a copy of the folder
    with no compiler at all."""
    fn, calls = fake_compiler()
    monkeypatch.setattr(compiler, "compile_torch_kernels", fn, raising=False)
    out = tmp_path / "built"
    assert build_cache.main(["--n", "4", "--C", "64", "--C", "32", "--dtype", "bf16", "--out",
                             str(out), "--runtime", str(mock_library())]) == 0
    assert [(c["n"], c["C"]) for c in calls] == [(4, 64), (4, 32)]
    assert (out / "libmhc_runtime.so").is_file()
    assert [k.C for k in build_cache.check(out)] == [32, 64]
    import shutil
    carried = tmp_path / "carried"
    shutil.copytree(out, carried)
    monkeypatch.delattr(compiler, "compile_torch_kernels")
    monkeypatch.setenv("MHC_CACHE", str(carried))
    monkeypatch.setenv("MHC_RUNTIME_LIB", str(mock_library()))   # the copied one is the mock too
    kernels._LOADED.clear(), kernels._BY_CALL.clear()
    assert kernels.kernel_set(KEY).folder == KEY.folder(carried)
    kernels._LOADED.clear(), kernels._BY_CALL.clear()


def test_build_refuses_a_bad_manifest(tmp_path, monkeypatch):
    fn, _ = fake_compiler(lambda m: m["ops"]["hc_post"]["launches"][0]["buffers"].remove("x_next"))
    monkeypatch.setattr(compiler, "compile_torch_kernels", fn, raising=False)
    with pytest.raises(ManifestError, match="not passed to any"):
        kernels.build(KEY, tmp_path)
    assert not KEY.folder(tmp_path).exists()
    assert list(KEY.folder(tmp_path).parent.iterdir()) == []            # no temporary left over


def test_build_without_the_compiler_side(tmp_path, monkeypatch):
    monkeypatch.delattr(compiler, "compile_torch_kernels", raising=False)
    with pytest.raises(KernelsMissing, match="compile_torch_kernels does not exist yet"):
        kernels.build(KEY, tmp_path)
    assert build_cache.main(["--n", "4", "--C", "64", "--out", str(tmp_path)]) == 1


def test_host_time_per_call(tmp_path, mock, capsys, launch_path):
    """Host time of each launch path (checks, allocation, launches), per op, on the mock runtime."""
    ks = open_set(tmp_path, mock, launch_path)
    x, fn, scale, base = inputs(T=64)
    y = torch.randn(64, C).bfloat16()
    u, post, comb, mix = ks.run("hc_pre", x, fn, scale, base, 20, 1e-6, 1e-6, 2.0)
    fn0 = ks.plans["hc_post"].launches[0][0]
    ptrs, numels = (ctypes.c_void_p * 5)(*[x.data_ptr()] * 5), (ctypes.c_int64 * 5)(*[1] * 5)
    calls = {
        "pre": lambda: ks.run("hc_pre", x, fn, scale, base, 20, 1e-6, 1e-6, 2.0),
        "post": lambda: ks.run("hc_post", y, x, post, comb),
        "mock": lambda: mock.lib.mhcLaunchFlat(fn0, 1, 1, 1, 128, 1, 1, 0, 0, 64, 5, ptrs, numels),
    }
    best = dict.fromkeys(calls, float("inf"))
    reps = 100
    for _ in range(7):          # interleaved rounds, best of each: robust on a busy machine
        for name, call in calls.items():
            t = time.perf_counter()
            for _ in range(reps):
                call()
            best[name] = min(best[name], (time.perf_counter() - t) / reps * 1e6)
    pre_us, post_us, mock_us = best["pre"], best["post"], best["mock"]
    with capsys.disabled():
        print(f"\nhost time on the mock ({launch_path} path): hc_pre {pre_us:.1f} us (2 launches), "
              f"hc_post {post_us:.1f} us (1 launch); the mock's own launch (logging) {mock_us:.1f} us; "
              f"without it: "
              f"hc_pre {pre_us - 2 * mock_us:.1f} us, hc_post {post_us - mock_us:.1f} us")
    assert pre_us + post_us < 1000      # generous: a loaded CI machine; the real figure is printed


def test_custom_op_entry_point_finds_the_set(tmp_path, mock, monkeypatch):
    """kernels.run, the CUDA implementation of the mhc:: ops, on CPU tensors: the key comes from
    the arguments (attributes included), hc_post reuses the loaded set of its shape."""
    monkeypatch.setenv("MHC_CACHE", str(tmp_path))
    monkeypatch.setenv("MHC_RUNTIME_LIB", str(mock_library()))
    monkeypatch.setattr(kernels, "device_chip", lambda device=None: "sm_90")
    monkeypatch.setattr(kernels, "_stream", lambda device: 0)
    monkeypatch.setattr(kernels, "_compiler_function", lambda: None)     # like the GPU machine
    kernels._LOADED.clear(), kernels._BY_CALL.clear()
    key10 = KernelKey(n=N, C=C, dtype="bf16", chip="sm_90", iterations=10)
    write_set(key10.folder(tmp_path), hand_manifest(key10))
    x, fn, scale, base = inputs(T=40)
    mock.mock_clear_log()
    u, post, comb, mix = kernels.run("hc_pre", x, fn, scale, base, 10, 1e-6, 1e-6, 2.0)
    y = torch.randn(40, C).bfloat16()
    (x_next,) = kernels.run("hc_post", y, x, post, comb)
    assert [l["kernel"] for l in launches(mock)] == ["pre_norm", "pre_apply", "post"]
    assert launches(mock)[2]["buffers"][-1] == (x_next.data_ptr(), x_next.numel())
    with pytest.raises(KernelsMissing, match="r20"):           # 20 iterations: another key
        kernels.run("hc_pre", x, fn, scale, base, 20, 1e-6, 1e-6, 2.0)
    kernels._LOADED.clear(), kernels._BY_CALL.clear()


@pytest.mark.parametrize("n,C,dtype,tokens_per_block,chunk", [(4, 64, "bf16", 32, 128),
                                                               (8, 40, "f32", 16, 32)])
def test_forward_only_set_from_the_real_pipeline(tmp_path, mock, monkeypatch, n, C, dtype,
                                                 tokens_per_block, chunk):
    """build_cache --forward-only compiles hc_pre + hc_post with mhc-opt (a real cubin), derives the
    manifest from the host IR, and the set loads and launches (on the mock) with no compiler."""
    assert Path(compiler.mhc_opt()).exists(), "mhc-opt is not built: run scripts/build.sh"
    out = tmp_path / "cache"
    assert build_cache.main(["--forward-only", "--n", str(n), "--C", str(C), "--dtype", dtype,
                             "--out", str(out), "--runtime", str(mock_library())]) == 0
    key = KernelKey(n=n, C=C, dtype=dtype)
    folder = key.folder(out)
    assert (folder / "kernels.cubin").read_bytes()[:4] == b"\x7fELF"
    manifest = kernels.load_manifest(folder, key)
    # hc_pre: fn prepared once per call (a scratch buffer of i32 words: the tensor cores'
    # fragments, bf16 head + remainder of fn padded to n8 tiles of mixes and whole chunks of
    # columns), then the kernel that reads it.
    M = n * n + 2 * n
    words = -(-M // 8) * 8 * n * -(-C // chunk) * chunk
    (prepared, scratch), = manifest["ops"]["hc_pre"]["scratch"].items()
    assert scratch == {"shape": [words], "dtype": "i32"}
    prepare, pre = manifest["ops"]["hc_pre"]["launches"]
    assert prepare["buffers"] == ["fn", prepared] and prepare["block"] == [256, 1, 1]
    assert prepare["grid"] == {"x": -(-words // 4 // 256), "y": 1, "z": 1}
    assert pre["buffers"] == ["x", "fn", "scale", "base", "mix", "post", "comb", "u", prepared]
    assert pre["grid"]["tokens_per_block"] == tokens_per_block and pre["block"] == [128, 1, 1]
    (post,) = manifest["ops"]["hc_post"]["launches"]
    assert post["buffers"] == ["y", "x", "post", "comb", "x_next"] and post["block"] == [256, 1, 1]
    # Each forward op again for few tokens (mhc.max_tokens): 16 tokens per block.
    few_pre, few_post = (manifest["ops"][op]["few_tokens"] for op in ("hc_pre", "hc_post"))
    assert few_pre["max_T"] == few_post["max_T"] == 4096
    assert [l["grid"].get("tokens_per_block") for l in few_pre["launches"] + few_post["launches"]] == [
        None, 16, 16]
    (few_prepared,) = few_pre["scratch"]
    assert few_pre["launches"][1]["buffers"] == pre["buffers"][:-1] + [few_prepared]
    monkeypatch.setattr(kernels, "_compiler_function", lambda: None)
    ks = KernelSet(folder, key, runtime=mock)
    torch_dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    for T, (p_spec, q_spec), (p_tpb, q_tpb) in (
            (100, (few_pre, few_post), (16, 16)),
            (5000, (manifest["ops"]["hc_pre"], manifest["ops"]["hc_post"]), (tokens_per_block, 64))):
        x = torch.randn(T, n, C).to(torch_dtype)
        mock.mock_clear_log()
        u, p_, comb, mix = ks.run("hc_pre", x, torch.randn(M, n * C), torch.rand(3),
                                  torch.randn(M), 20, 1e-6, 1e-6, 2.0)
        (x_next,) = ks.run("hc_post", torch.randn(T, C).to(torch_dtype), x, p_, comb)
        f, a, b = launches(mock)
        assert f["kernel"] == p_spec["launches"][0]["kernel"]
        assert f["buffers"][-1] == a["buffers"][-1]         # the prepared fn, written then read
        assert (a["kernel"], a["grid"][0]) == (p_spec["launches"][1]["kernel"], -(-T // p_tpb))
        assert (b["kernel"], b["grid"][0], b["buffers"][-1]) == (
            q_spec["launches"][0]["kernel"], -(-T // q_tpb), (x_next.data_ptr(), x_next.numel()))
    with pytest.raises(KernelsMissing, match="no kernels for hc_pre_backward"):
        ks.run("hc_pre_backward")


def cuda_backend_on_cpu(tmp_path, monkeypatch, manifest):
    """HyperConnection(backend='cuda') on CPU tensors: its ops take the kernel path (ops._on_gpu
    patched), with `manifest` as the kernel set in tmp_path and the mock runtime launching."""
    from mhc.torch import modules, ops
    monkeypatch.setenv("MHC_CACHE", str(tmp_path))
    monkeypatch.setenv("MHC_RUNTIME_LIB", str(mock_library()))
    monkeypatch.setattr(kernels, "device_chip", lambda device=None: "sm_90")
    monkeypatch.setattr(kernels, "_stream", lambda device: 0)
    monkeypatch.setattr(ops, "_on_gpu", lambda x: True)
    monkeypatch.setattr(modules, "resolve_backend", lambda *a: "cuda")
    kernels._LOADED.clear(), kernels._BY_CALL.clear()
    write_set(KEY.folder(tmp_path), manifest)


def test_eager_cuda_path_calls_the_kernels_directly(tmp_path, mock, monkeypatch):
    """HyperConnection(backend='cuda') in eager mode reaches the kernel set without the torch.ops
    dispatcher (ops.DirectOps; CPU tensors stand in for CUDA ones, the mock records the launches)."""
    cuda_backend_on_cpu(tmp_path, monkeypatch, hand_manifest())
    hc = mhc.torch.HyperConnection(N, C, torch.nn.Identity(), backend="cuda")
    x = torch.randn(10, N, C).bfloat16()
    mock.mock_clear_log()
    with torch.no_grad():
        out = hc(x)
    assert out.shape == x.shape
    # Through torch.ops.mhc, CPU tensors would have run the reference math and launched nothing.
    assert [l["kernel"] for l in launches(mock)] == ["pre_norm", "pre_apply", "post"]
    kernels._LOADED.clear(), kernels._BY_CALL.clear()


def test_auto_backend_picks_up_a_kernel_set_that_appears_later(monkeypatch):
    """HyperConnection(backend="auto") remembers found kernel sets, but looks again for a missing one
    (after _RECHECK_MISSING_S): a set built or carried in while the process runs gets used."""
    from mhc.torch import modules
    answers = [False, False, True, False]
    monkeypatch.setattr(kernels, "available", lambda n, C, dtype, norm_eps=None: answers.pop(0))
    monkeypatch.setattr(modules, "_KERNELS_FOUND", set())
    monkeypatch.setattr(modules, "_KERNELS_MISSING", {})
    monkeypatch.setattr(modules, "_RECHECK_MISSING_S", 3600.0)
    assert not modules._cuda_kernels_available(4, 64, "bfloat16")
    assert not modules._cuda_kernels_available(4, 64, "bfloat16")     # remembered: no second look
    assert answers == [False, True, False]
    monkeypatch.setattr(modules, "_RECHECK_MISSING_S", 0.0)
    assert not modules._cuda_kernels_available(4, 64, "bfloat16")     # looked again: still none
    assert modules._cuda_kernels_available(4, 64, "bfloat16")         # the set appeared
    assert modules._cuda_kernels_available(4, 64, "bfloat16")         # found is final: no look
    assert answers == [False]


@pytest.mark.parametrize("chain_ops", [True, False])
def test_python_path_recomputes_from_the_saved_mix(tmp_path, mock, monkeypatch, chain_ops):
    """HyperConnection's Python steps (no C++ path) with recompute=True: the post step's backward
    recomputes u/post/comb with hc_pre_mixed from the saved mix (no norm_project pass); where the
    kernel set has no hc_pre_mixed, with the reference math (no launch; the C++ path launches
    hc_pre there instead)."""
    from mhc.torch import modules, native
    from test_torch_native import chain_manifest
    cuda_backend_on_cpu(tmp_path, monkeypatch, chain_manifest() if chain_ops else hand_manifest())
    monkeypatch.setattr(modules, "_native_kernel_set", lambda x, attrs: None)   # Python steps
    monkeypatch.setattr(native, "fast_forward", None)
    monkeypatch.setattr(kernels.KernelSet, "native_handle", lambda self: None)
    hc = mhc.torch.HyperConnection(N, C, torch.nn.Identity(), backend="cuda", recompute=True)
    x = torch.randn(10, N, C).bfloat16().requires_grad_()
    out = hc(x)
    mock.mock_clear_log()
    out.backward(torch.randn_like(out))
    names = [l["kernel"] for l in launches(mock)]
    if chain_ops:
        assert names[:2] == ["pre_mixed", "post_bwd"] and "pre_norm" not in names
    else:
        assert names[0] == "post_bwd" and not {"pre_norm", "pre_apply", "pre_mixed"} & set(names)
    kernels._LOADED.clear(), kernels._BY_CALL.clear()


@pytest.mark.parametrize("C,walker", [(100, "tokens"), (4096, "rows")])
@pytest.mark.parametrize("n,lanes", [(2, True), (3, False), (8, True)])
def test_backward_sinkhorn_walk_by_lanes(n, lanes, C, walker):
    """The backward's token pass walks a token's Sinkhorn iterations with n lanes where n divides a
    warp (one divisor a step per lane in private memory, warp syncs between the steps) and with one
    thread otherwise (n divisors a step). It runs in a token kernel of its own where a row is at
    most 4 KB (C = 100 bf16: `_tokens`, after a rows kernel without it) and in the rows kernel
    otherwise (C = 4096: `_rows`)."""
    from mhc.torch import kernel_build
    key = KernelKey(n=n, C=C, dtype="bf16")
    gpu = compiler._run([compiler.mhc_opt(), "-", "--mhc-fuse", "--convert-mhc-to-gpu=chip=sm_90"],
                        input_text=kernel_build.module_text(key))
    walkers = re.findall(r"gpu\.func @(\w+_(?:rows|tokens))\(.*?private\(%\w+ : memref<(\d+)xf32", gpu)
    assert walkers, "no kernel with a token pass"
    steps = 2 * key.iterations - 1
    for name, size in walkers:
        assert name.endswith("_" + walker), name
        assert int(size) == steps * (1 if lanes else n), name
    assert ("nvvm.bar.warp.sync" in gpu) == lanes
    assert bool(re.search(r"gpu\.func @\w+_tokens\(", gpu)) == (walker == "tokens")


def test_norm_set_from_the_real_pipeline(tmp_path):
    """build_cache --norm-eps adds the *_norm ops (the sublayer's pre-norm fused in) to a set: each
    compiled by mhc-opt, its manifest entry reading the weight and writing dweight where the op
    has them, the forward ones again for few tokens. A key without norm_eps has none of them."""
    assert Path(compiler.mhc_opt()).exists(), "mhc-opt is not built: run scripts/build.sh"
    from mhc.torch import kernel_build
    assert "_norm(" not in kernel_build.module_text(KernelKey(n=2, C=64, dtype="bf16"))
    out = tmp_path / "cache"
    assert build_cache.main(["--n", "2", "--C", "64", "--dtype", "bf16", "--norm-eps", "1e-5",
                             "--out", str(out), "--runtime", str(mock_library())]) == 0
    key = KernelKey(n=2, C=64, dtype="bf16", norm_eps=1e-5)
    assert key.folder_name().endswith("-rms1e-05")
    ops = kernels.load_manifest(key.folder(out), key)["ops"]
    assert set(kernels.NORM_OPS) <= set(ops)
    for op in kernels.NORM_OPS:
        read = {b for launch in ops[op]["launches"] for b in launch["buffers"]}
        args, results = kernels.OP_BUFFERS[op]
        assert set(args + results) <= read, (op, set(args + results) - read)
        assert ("few_tokens" in ops[op]) == (op in ("hc_pre_norm", "hc_pre_mixed_norm"))
    with pytest.raises(ValueError, match="norm_eps must be finite and > 0"):
        KernelKey(n=2, C=64, dtype="bf16", norm_eps=0.0)


def test_auto_backend_looks_for_the_norm_set(tmp_path, monkeypatch):
    """With a fused pre-norm, "auto" needs the set of that norm eps with its training ops: a set
    without norm_eps does not do, nor one of another eps."""
    from mhc.torch import modules
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels, "device_chip", lambda device=None: "sm_90")
    monkeypatch.setattr(kernels, "_can_build", lambda: False)
    monkeypatch.setenv("MHC_CACHE", str(tmp_path))
    launch = {"kernel": "k", "block": [1, 1, 1], "grid": {"x": 1}}
    for norm_eps, ops in ((None, kernels.TRAINING_OPS), (1e-5, kernels.NORM_TRAINING_OPS)):
        key = KernelKey(n=4, C=64, dtype="bf16", norm_eps=norm_eps)
        folder = key.folder(tmp_path)
        folder.mkdir(parents=True)
        (folder / "kernels.cubin").write_bytes(b"not a cubin: never loaded")
        (folder / kernels.MANIFEST_NAME).write_text(json.dumps(
            {"schema": kernels.SCHEMA, "key": key.as_dict(), "cubin": "kernels.cubin",
             "ops": {op: {"launches": [dict(launch, buffers=[*kernels.OP_BUFFERS[op][0],
                                                             *kernels.OP_BUFFERS[op][1]])]}
                     for op in ops}}))
    assert kernels.available(4, 64, "bf16")
    assert kernels.available(4, 64, "bf16", norm_eps=1e-5)
    assert not kernels.available(4, 64, "bf16", norm_eps=1e-6)
    monkeypatch.setattr(modules, "_KERNELS_FOUND", set())
    monkeypatch.setattr(modules, "_KERNELS_MISSING", {})
    assert modules._cuda_kernels_available(4, 64, "bf16", 1e-5)
    assert not modules._cuda_kernels_available(4, 64, "bf16", 1e-6)
